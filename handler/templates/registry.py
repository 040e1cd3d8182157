"""Named workflows: an API-format graph plus a manifest of typed parameters, hot reloaded.

Layout of the workflows folder (`WORKFLOWS_DIR`, see docs/templates.md):

    <id>.json            the graph, exactly as ComfyUI's "Export (API)" saves it
    <id>.manifest.json   title, description, model_type and the parameters
    _params.json         parameter definitions shared by every manifest

A template exists because its manifest does; a graph without a manifest is ignored. Every access
compares the folder's file stamps with the last load and reloads when anything changed, so adding
or editing a template needs no restart. A manifest that is broken (bad JSON, a parameter that
points at a node or input the graph does not have, …) is refused with a logged message and listed
under `errors`; the other templates keep working.

Contract with `/predict` (`predict_request.parse_predict_body`):

    workflow, images = templates.render(workflow_id, params)

`workflow` is a fresh copy of the graph with the parameters filled in. `images` are
`inputs.InputImage`s for the `image` parameters, to stage like the request's own `images`: an
image parameter takes base64, a data URI or an http(s) URL, becomes an image named
`param-<name>.png`, and that name is written into the graph's input (LoadImage's `image`), which the
pipeline then rewrites to the staged file like any other. A value that is a plain image file name
(`photo.png`) is written as is: it names an entry of the request's `images` list.
Unknown template → `NotFound` (404) listing the ids there are; a bad parameter → `InvalidParameter` (422) naming it.
"""

from __future__ import annotations

import builtins
import copy
import logging
import threading
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from handler.config.cloud import CloudSettings
from handler.config.models import ModelSettings
from handler.config.urls import UrlSettings
from handler.errors import BadRequest, InvalidParameter, NotFound
from handler.templates.loading import Stamp, load_folder, stamp
from handler.templates.params import IMAGE_NAME, Template, resolve

log = logging.getLogger("handler.templates.registry")


class Rendered(NamedTuple):
    workflow: dict[str, Any]
    images: list[Any]  # inputs.InputImage


@dataclass
class Templates:
    """The registry of named workflows in one folder, reloaded when its files change."""

    directory: Path
    _: KW_ONLY
    model_type: str | None = None  # the image's MODEL_TYPE; what runs is decided by ComfyUI's catalogue
    # For image parameters (URL checks, size limits), as for /predict images.
    urls: UrlSettings = field(default_factory=UrlSettings)
    cloud: CloudSettings = field(default_factory=CloudSettings)
    _stamp: Stamp = field(default=(), init=False, repr=False)
    _templates: dict[str, Template] = field(default_factory=dict, init=False, repr=False)
    _errors: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_settings(cls, *, models: ModelSettings, urls: UrlSettings, cloud: CloudSettings) -> Templates:
        return cls(Path(models.workflows_dir), model_type=models.model_type, urls=urls, cloud=cloud)

    # --- reading ------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        return [t.summary() for t in self._current().values()]

    def errors(self) -> dict[str, str]:
        """Templates refused at load time: id → why."""
        self._current()
        return dict(self._errors)

    def get(self, workflow_id: str) -> Template:
        template = self._current().get(workflow_id)
        if template is None:
            if workflow_id in self._errors:
                raise NotFound(
                    f"workflow {workflow_id!r} is not available: its manifest was refused", workflow_id=workflow_id
                )
            known = sorted(self._templates)
            raise NotFound(
                f"no workflow named {workflow_id!r}; the workflows here: {', '.join(known) or 'none'}",
                workflow_id=workflow_id,
                workflows=known,
            )
        return template

    def json_schema(self, workflow_id: str) -> dict[str, Any]:
        return self.get(workflow_id).json_schema()

    def describe(self, workflow_id: str) -> dict[str, Any]:
        template = self.get(workflow_id)
        return {**template.summary(), "params": template.json_schema()}

    # --- rendering ----------------------------------------------------------------------------

    def render(self, workflow_id: str, params: Any) -> Rendered:
        template = self.get(workflow_id)
        values = resolve(template, params)
        graph = copy.deepcopy(template.graph)
        raw_images: builtins.list[tuple[str, dict[str, str]]] = []
        for name, value in values.items():
            param = template.params[name]
            if param.type == "image" and not IMAGE_NAME.match(value):
                entry = {"name": f"param-{name}.png", "image": value}
                raw_images.append((name, entry))
                value = entry["name"]
            for target in param.targets:
                graph[target.node]["inputs"][target.input] = value
        return Rendered(graph, self._images(raw_images))

    # `builtins.list`: inside this class body, `list` names the method above.
    def _images(self, raw: builtins.list[tuple[str, dict[str, str]]]) -> builtins.list[Any]:
        if not raw:
            return []
        from handler.comfyui.inputs import parse_images

        images: builtins.list[Any] = []
        for name, entry in raw:
            try:
                images += parse_images([entry], urls=self.urls, cloud=self.cloud)
            except BadRequest as exc:  # name the parameter, not an images[] index
                message = exc.message.replace("images[0].image", "the value")
                raise InvalidParameter(f"parameter {name!r}: {message}", param=name) from None
        return images

    # --- loading ------------------------------------------------------------------------------

    def _current(self) -> dict[str, Template]:
        current = stamp(self.directory)
        with self._lock:
            if current != self._stamp:
                self._templates, self._errors = load_folder(self.directory)
                self._stamp = current
                for workflow_id, message in self._errors.items():
                    log.error("workflow template %s refused: %s", workflow_id, message)
                log.info("workflow templates loaded from %s: %s", self.directory, ", ".join(self._templates) or "none")
            return self._templates
