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
Unknown template → `NotFound` (404); a bad parameter → `InvalidParameter` (422) naming it.
"""

from __future__ import annotations

import builtins
import copy
import json
import logging
import random
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jsonschema

from handler.comfyui.graphshape import shape_problem
from handler.errors import BadRequest, InvalidParameter, NotFound

if TYPE_CHECKING:
    from handler.config import Settings

log = logging.getLogger("handler.templates.registry")

MANIFEST_SUFFIX = ".manifest.json"
SHARED_FILE = "_params.json"
TYPES = ("string", "integer", "number", "boolean", "enum", "image")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_IMAGE_NAME = re.compile(r"^[\w][\w .()-]*\.(png|jpe?g|webp|gif|bmp|tiff?)$", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")

_TARGET = {
    "oneOf": [
        {"type": "string", "pattern": r"^[^.]+\..+$"},
        {
            "type": "object",
            "properties": {"node": {"type": "string", "minLength": 1}, "input": {"type": "string", "minLength": 1}},
            "required": ["node", "input"],
            "additionalProperties": False,
        },
    ]
}
_PARAM_FIELDS = {
    "type": {"enum": list(TYPES)},
    "use": {"type": "string"},
    "title": {"type": "string"},
    "description": {"type": "string"},
    "default": {},
    "required": {"type": "boolean"},
    "min": {"type": "number"},
    "max": {"type": "number"},
    "multiple_of": {"type": "number", "exclusiveMinimum": 0},
    "max_length": {"type": "integer", "minimum": 1},
    "values": {"type": "array", "minItems": 1},
    "random": {"type": "boolean"},
    "examples": {"type": "array"},
}
MANIFEST_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "description": {"type": "string"},
        "model_type": {"type": ["string", "null"]},
        "workflow": {"type": "string", "pattern": r"^[^/\\]+\.json$"},
        "params": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    **_PARAM_FIELDS,
                    "to": {"oneOf": [_TARGET, {"type": "array", "items": _TARGET, "minItems": 1}]},
                },
                "required": ["to"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["params"],
    "additionalProperties": False,
}
SHARED_SCHEMA = {
    "type": "object",
    "properties": {
        "params": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": _PARAM_FIELDS,
                "required": ["type"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["params"],
    "additionalProperties": False,
}


# A folder's file stamps: (name, mtime_ns, size) per JSON file, or ("missing",).
Stamp = tuple[str | tuple[str, int, int], ...]


class ManifestError(ValueError):
    """A template the service refuses to load; the message says which file and what is wrong."""


class Rendered(NamedTuple):
    workflow: dict[str, Any]
    images: list[Any]  # inputs.InputImage


@dataclass(frozen=True)
class Target:
    node: str
    input: str

    def __str__(self) -> str:
        return f"{self.node}.{self.input}"


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    targets: tuple[Target, ...]
    description: str = ""
    title: str | None = None
    default: Any = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    multiple_of: float | None = None
    max_length: int | None = None
    values: tuple[Any, ...] | None = None
    random: bool = False
    examples: tuple[Any, ...] = ()

    def schema(self) -> dict[str, Any]:
        """This parameter as JSON Schema (2020-12, also valid in OpenAPI 3.1)."""
        if self.type == "enum":
            base: dict[str, Any] = {"enum": list(self.values or ())}
            if all(isinstance(v, str) for v in base["enum"]):
                base = {"type": "string", **base}
        elif self.type == "image":
            base = {
                "type": "string",
                "minLength": 1,
                "contentMediaType": "image/*",
            }
        else:
            base = {"type": self.type}
            if self.type in ("integer", "number"):
                for key, word in (("min", "minimum"), ("max", "maximum"), ("multiple_of", "multipleOf")):
                    if getattr(self, key) is not None:
                        base[word] = getattr(self, key)
            if self.type == "string":
                if self.values:
                    base["enum"] = list(self.values)
                if self.max_length:
                    base["maxLength"] = self.max_length
        schema: dict[str, Any] = {"anyOf": [base, {"const": "random"}]} if self.random else base
        if self.title:
            schema["title"] = self.title
        description = self.description
        if self.type == "image":
            description = (description + " " if description else "") + (
                "Base64, a data URI, an http(s) URL, or the name of an entry of `images`."
            )
        if self.random:
            description = (description + " " if description else "") + '"random" picks a fresh value.'
        if description:
            schema["description"] = description
        if self.default is not None:
            schema["default"] = self.default
        if self.examples:
            schema["examples"] = list(self.examples)
        return schema


@dataclass(frozen=True)
class Template:
    id: str
    graph: dict[str, Any]
    params: dict[str, Param]
    title: str
    description: str = ""
    model_type: str | None = None

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "title": f"{self.id} parameters",
            "type": "object",
            "properties": {name: p.schema() for name, p in self.params.items()},
            "additionalProperties": False,
        }
        required = [name for name, p in self.params.items() if p.required]
        if required:
            schema["required"] = required
        return schema

    def summary(self, model_type: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "model_type": self.model_type,
            "available": self.model_type is None or self.model_type == model_type,
        }


@dataclass
class Templates:
    """The registry of named workflows in one folder, reloaded when its files change."""

    directory: Path
    model_type: str | None = None  # this image's MODEL_TYPE: templates for others are "unavailable"
    settings: Settings | None = None  # for image parameters (URL checks, size limits), as for /predict images
    _stamp: Stamp = field(default=(), init=False, repr=False)
    _templates: dict[str, Template] = field(default_factory=dict, init=False, repr=False)
    _errors: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Templates:
        return cls(Path(settings.workflows_dir), model_type=settings.model_type, settings=settings)

    # --- reading ------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        return [t.summary(self.model_type) for t in self._current().values()]

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
            raise NotFound(f"no workflow named {workflow_id!r}", workflow_id=workflow_id)
        return template

    def json_schema(self, workflow_id: str) -> dict[str, Any]:
        return self.get(workflow_id).json_schema()

    def describe(self, workflow_id: str) -> dict[str, Any]:
        template = self.get(workflow_id)
        return {**template.summary(self.model_type), "params": template.json_schema()}

    # --- rendering ----------------------------------------------------------------------------

    def render(self, workflow_id: str, params: Any) -> Rendered:
        template = self.get(workflow_id)
        values = resolve(template, params)
        graph = copy.deepcopy(template.graph)
        raw_images: builtins.list[tuple[str, dict[str, str]]] = []
        for name, value in values.items():
            param = template.params[name]
            if param.type == "image" and not _IMAGE_NAME.match(value):
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
        from handler.config import Settings

        settings = self.settings or Settings()
        images: builtins.list[Any] = []
        for name, entry in raw:
            try:
                images += parse_images([entry], settings)
            except BadRequest as exc:  # name the parameter, not an images[] index
                message = exc.message.replace("images[0].image", "the value")
                raise InvalidParameter(f"parameter {name!r}: {message}", param=name) from None
        return images

    # --- loading ------------------------------------------------------------------------------

    def _current(self) -> dict[str, Template]:
        stamp = _stamp(self.directory)
        with self._lock:
            if stamp != self._stamp:
                self._templates, self._errors = load_folder(self.directory)
                self._stamp = stamp
                for workflow_id, message in self._errors.items():
                    log.error("workflow template %s refused: %s", workflow_id, message)
                log.info("workflow templates loaded from %s: %s", self.directory, ", ".join(self._templates) or "none")
            return self._templates


def _stamp(directory: Path) -> Stamp:
    """Name, mtime and size of every JSON file: cheap enough to take on each request."""
    try:
        entries = sorted(directory.glob("*.json"))
    except OSError:
        return ("missing",)
    stamp: list[tuple[str, int, int]] = []
    for path in entries:
        try:
            st = path.stat()
        except OSError:
            continue
        stamp.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(stamp)


def load_folder(directory: Path) -> tuple[dict[str, Template], dict[str, str]]:
    templates: dict[str, Template] = {}
    errors: dict[str, str] = {}
    if not directory.is_dir():
        return templates, errors
    shared: dict[str, dict[str, Any]] = {}
    shared_error = None
    if (directory / SHARED_FILE).exists():
        try:
            shared = load_shared(directory / SHARED_FILE)
        except ManifestError as exc:
            shared_error = str(exc)
            errors[SHARED_FILE] = shared_error
    for manifest in sorted(directory.glob(f"*{MANIFEST_SUFFIX}")):
        workflow_id = manifest.name[: -len(MANIFEST_SUFFIX)]
        try:
            templates[workflow_id] = load_template(manifest, shared, shared_error)
        except ManifestError as exc:
            errors[workflow_id] = str(exc)
    return templates, errors


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path.name} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path.name} is not valid JSON: {exc}") from None


def _schema_error(path: Path, data: Any, schema: dict[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ManifestError(f"{path.name}: at {where}: {error.message}")


def load_shared(path: Path) -> dict[str, dict[str, Any]]:
    data = _read_json(path)
    _schema_error(path, data, SHARED_SCHEMA)
    for name, definition in data["params"].items():
        _build_param(name, definition, (), path.name)  # checks the definition on its own
    params: dict[str, dict[str, Any]] = data["params"]
    return params


def load_template(
    manifest_path: Path, shared: Mapping[str, dict[str, Any]] | None = None, shared_error: str | None = None
) -> Template:
    workflow_id = manifest_path.name[: -len(MANIFEST_SUFFIX)]
    if not _ID.match(workflow_id):
        raise ManifestError(f"{manifest_path.name}: the id {workflow_id!r} may hold only letters, digits, - and _")
    manifest = _read_json(manifest_path)
    _schema_error(manifest_path, manifest, MANIFEST_SCHEMA)
    graph_path = manifest_path.parent / manifest.get("workflow", f"{workflow_id}.json")
    graph = _read_json(graph_path)
    _check_graph(graph_path.name, graph)

    params: dict[str, Param] = {}
    claimed: dict[tuple[str, str], str] = {}
    where = manifest_path.name
    for name, local in manifest["params"].items():
        definition = dict(local)
        base_name = definition.pop("use", None)
        if base_name is None and "type" not in definition:
            base_name = name
        if base_name is not None:
            base = (shared or {}).get(base_name)
            if base is None:
                hint = f" ({SHARED_FILE} was refused: {shared_error})" if shared_error else ""
                raise ManifestError(
                    f"{where}: parameter {name!r} has no type and {SHARED_FILE} defines no {base_name!r}{hint}"
                )
            definition = {**base, **definition}
        targets = tuple(_target(t) for t in _as_list(definition.pop("to")))
        for target in targets:
            _check_target(where, graph_path.name, graph, name, target)
            owner = claimed.setdefault((target.node, target.input), name)
            if owner != name:
                raise ManifestError(f"{where}: parameters {owner!r} and {name!r} both set {target}")
        params[name] = _build_param(name, definition, targets, where, graph)
    return Template(
        id=workflow_id,
        graph=graph,
        params=params,
        title=manifest.get("title") or workflow_id,
        description=manifest.get("description", ""),
        model_type=manifest.get("model_type"),
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _target(raw: Any) -> Target:
    if isinstance(raw, str):
        node, _, input_name = raw.partition(".")
        return Target(node, input_name)
    return Target(raw["node"], raw["input"])


def _check_graph(name: str, graph: Any) -> None:
    problem = shape_problem(graph)
    if problem is not None:
        raise ManifestError(f"{name}: {problem}")


def _check_target(where: str, graph_name: str, graph: dict[str, Any], param: str, target: Target) -> None:
    node = graph.get(target.node)
    if node is None:
        raise ManifestError(
            f"{where}: parameter {param!r} points at node {target.node!r}, which {graph_name} does not have"
        )
    inputs = node.get("inputs") or {}
    if target.input not in inputs:
        known = ", ".join(sorted(inputs)) or "none"
        raise ManifestError(
            f"{where}: parameter {param!r} points at input {target.input!r} of node {target.node} "
            f"({node['class_type']}), which has no such input (it has: {known})"
        )
    value = inputs[target.input]
    if isinstance(value, list):
        raise ManifestError(
            f"{where}: parameter {param!r} points at {target}, which is a link to node {value[0]!r}, not a value"
        )


def _build_param(
    name: str,
    definition: Mapping[str, Any],
    targets: tuple[Target, ...],
    where: str,
    graph: dict[str, Any] | None = None,
) -> Param:
    prefix = f"{where}: parameter {name!r}"
    kind = definition.get("type")
    if kind not in TYPES:
        raise ManifestError(f"{prefix}: type must be one of {', '.join(TYPES)}")
    if kind == "enum" and not definition.get("values"):
        raise ManifestError(f"{prefix}: an enum needs a non-empty list of values")
    if definition.get("random") and kind != "integer":
        raise ManifestError(f"{prefix}: only integer parameters can be random")
    low, high = definition.get("min"), definition.get("max")
    if low is not None and high is not None and low > high:
        raise ManifestError(f"{prefix}: min {low} is larger than max {high}")
    for key in ("min", "max", "multiple_of"):
        if key in definition and kind not in ("integer", "number"):
            raise ManifestError(f"{prefix}: {key} applies to integer and number parameters only")
    required = bool(definition.get("required", False))
    default = definition.get("default")
    if required and default is not None:
        raise ManifestError(f"{prefix}: a required parameter cannot have a default")
    if default is None and not required and graph is not None and targets and kind != "image":
        # No default given: the graph's own value is the default.
        default = graph[targets[0].node]["inputs"][targets[0].input]
    values = definition.get("values")
    param = Param(
        name=name,
        type=kind,
        targets=targets,
        description=definition.get("description", ""),
        title=definition.get("title"),
        default=default,
        required=required,
        min=low,
        max=high,
        multiple_of=definition.get("multiple_of"),
        max_length=definition.get("max_length"),
        values=tuple(values) if values else None,
        random=bool(definition.get("random", False)),
        examples=tuple(definition.get("examples", ())),
    )
    if default is not None and not (param.random and default == "random"):
        problem = _problem(param, default)
        if problem:
            raise ManifestError(f"{prefix}: the default {default!r} is not valid: {problem}")
    return param


# --- parameters ---------------------------------------------------------------------------------


def _problem(param: Param, value: Any) -> str | None:
    """Why `value` does not fit `param`, or None."""
    errors = jsonschema.Draft202012Validator(param.schema()).iter_errors(value)
    # The stubs leave best_match's return unannotated.
    error: jsonschema.exceptions.ValidationError | None = jsonschema.exceptions.best_match(errors)
    if error is None:
        if param.type == "image" and not _image_value_ok(value):
            return "expected base64, a data URI, an http(s) URL or an image file name"
        return None
    if error.validator in ("anyOf", "oneOf") and param.random:
        return f'{value!r} is neither an integer within the limits nor "random"'
    return error.message


def _image_value_ok(value: str) -> bool:
    text = value.strip()
    if text.startswith(("http://", "https://", "data:")) or _IMAGE_NAME.match(text):
        return True
    return bool(_BASE64.match(text[:4096])) and len(text) >= 8


def resolve(template: Template, params: Any) -> dict[str, Any]:
    """The value of every parameter to fill: given, default or random; InvalidParameter if wrong."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParameter("params must be an object of parameter names to values")
    unknown = sorted(set(params) - set(template.params))
    if unknown:
        raise InvalidParameter(
            f"unknown parameter {unknown[0]!r}: {template.id} takes {', '.join(template.params) or 'no parameters'}",
            param=unknown[0],
        )
    values: dict[str, Any] = {}
    problems: list[dict[str, str]] = []
    for name, param in template.params.items():
        if name not in params or params[name] is None:
            if param.required:
                problems.append({"param": name, "message": f"parameter {name!r} is required"})
                continue
            if param.default is None:
                continue  # the graph keeps its own value
            value = param.default
        else:
            value = params[name]
            problem = _problem(param, value)
            if problem:
                problems.append({"param": name, "message": f"parameter {name!r}: {problem}"})
                continue
        values[name] = _final(param, value)
    if problems:
        first = problems[0]
        raise InvalidParameter(first["message"], param=first["param"], errors=problems if len(problems) > 1 else None)
    return values


def _final(param: Param, value: Any) -> Any:
    if param.random and value == "random":
        low = int(param.min) if param.min is not None else 0
        high = int(param.max) if param.max is not None else 2**53 - 1
        return random.randint(low, high)
    if param.type == "integer":
        return int(value)
    if param.type == "number":
        return float(value) if not isinstance(value, int) else value
    if param.type == "image":
        return value.strip()
    return value
