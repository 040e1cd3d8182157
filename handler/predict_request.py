"""The body of `POST /predict`, checked and turned into a `PredictRequest`.

Sync requests, async jobs and Cloud Tasks deliveries all go through `parse_predict_body`, so a
body that is accepted for later is exactly one that would run now.

Every problem is a 400, never a 500: bodies nested deeper than `MAX_BODY_DEPTH`, non-finite
numbers anywhere, graphs whose chains of links are longer than `graphshape.MAX_CHAIN` (ComfyUI's own
validation recurses along them), and references into ComfyUI's shared output and temp folders
(`"name [output]"`, `"name [temp]"`), which would let one request read another's files.

Each request gets a private folder name (`request_id`): a secret of its own, never a job id, that
no answer shows (`errors.scrub` replaces it).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from handler.body import check_fields
from handler.comfyui import graphshape
from handler.comfyui.inputs import InputImage, parse_images
from handler.comfyui.outputs import OutputOptions
from handler.config.cloud import CloudSettings
from handler.config.http import HttpSettings
from handler.config.models import ModelSettings
from handler.config.urls import UrlSettings
from handler.errors import REQUEST_FOLDER, BadRequest
from handler.models.refs import check_model_urls
from handler.templates.registry import Templates

MAX_BODY_DEPTH = 64
# ComfyUI reads `name [output]` / `name [temp]` from its shared folders, which hold other
# requests' files; `[input]` is the default folder, where each request has its own subfolder.
SHARED_FOLDER_ANNOTATIONS = ("[output]", "[temp]")


def new_folder_name() -> str:
    """A per-request folder name: unguessable, and shaped so that `errors.scrub` finds it."""
    return "r" + secrets.token_hex(16)


def is_folder_name(name: Any) -> bool:
    return isinstance(name, str) and REQUEST_FOLDER.fullmatch(name) is not None


@dataclass
class PredictRequest:
    workflow: dict[str, Any]
    images: list[InputImage] = field(default_factory=list)
    timeout_s: float = 600.0
    output: OutputOptions = field(default_factory=OutputOptions)
    # The request's private folder under ComfyUI's input/output/temp folders: a secret.
    request_id: str = field(default_factory=new_folder_name)
    workflow_id: str | None = None  # set when the graph came from a named template
    # Where the prompt stands in ComfyUI's queue: one of taskqueue.PRIORITIES (docs/async.md).
    priority: str = "normal"
    # Sampler previews as `preview` events of a streamed (text/event-stream) answer.
    previews: bool = False
    # Runs only where ComfyUI keeps each prompt in its own folders (the isolation extension):
    # a raw graph from a caller who is not an admin (`Caller.confine`).
    confined: bool = False


def check_workflow(workflow: Any) -> dict[str, Any]:
    """The shape of an API-format graph: {node id: {class_type, inputs}}."""
    problem = graphshape.shape_problem(workflow)
    if problem is not None:
        raise BadRequest(problem)
    assert isinstance(workflow, dict)
    for node_id, node in workflow.items():
        for name, value in (node.get("inputs") or {}).items():
            if graphshape.is_link(value):
                continue
            shared = _shared_folder_reference(value)
            if shared is not None:
                raise BadRequest(
                    f"workflow node {node_id!r} input {name!r} refers to ComfyUI's shared output or temp folder "
                    f"({shared!r}); only files sent with this request can be loaded"
                )
    depth = graphshape.longest_chain(workflow)
    if depth > graphshape.MAX_CHAIN:
        raise BadRequest(f"workflow has a chain of {depth} linked nodes; at most {graphshape.MAX_CHAIN} are allowed")
    return workflow


def _shared_folder_reference(value: Any) -> str | None:
    """The first string in a literal, nested ones included, that names a file in a shared folder:
    a widget whose value is an object (Load3D's `image`: `{"image", "mask", ...}`) opens the names
    inside it as annotated paths too. Bounded by check_body's depth limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item.rstrip().lower().endswith(SHARED_FOLDER_ANNOTATIONS):
                return item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def check_body(body: Any) -> None:
    """No nesting deeper than MAX_BODY_DEPTH, no NaN or infinity: checked without recursion."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest("numbers must be finite: NaN and Infinity are not accepted")
        if isinstance(value, (dict, list)):
            if depth > MAX_BODY_DEPTH:
                raise BadRequest(f"the request body is nested more than {MAX_BODY_DEPTH} levels deep")
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))


def parse_timeout(raw: Any, *, http: HttpSettings) -> float:
    if raw is None:
        return http.request_timeout_s
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0 or raw != raw or raw == math.inf:
        raise BadRequest("timeout must be a positive, finite number of seconds")
    if raw > http.max_request_timeout_s:
        raise BadRequest(f"timeout may be at most {http.max_request_timeout_s:g} seconds")
    return float(raw)


def parse_predict_body(
    body: Any,
    *,
    http: HttpSettings,
    urls: UrlSettings,
    cloud: CloudSettings,
    models: ModelSettings,
    templates: Templates | None = None,
) -> PredictRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    check_body(body)
    # Accept the {"input": {...}} envelope other ComfyUI workers use.
    if "workflow" not in body and "workflow_id" not in body and isinstance(body.get("input"), dict):
        body = body["input"]
    check_fields(body)  # the declared shape of each field (handler/body.py), then their meaning
    images = parse_images(body.get("images"), urls=urls, cloud=cloud)
    workflow_id = body.get("workflow_id")
    if workflow_id is not None:
        if "workflow" in body:
            raise BadRequest("send either workflow or workflow_id, not both")
        if templates is None:
            raise BadRequest("named workflows are not available on this service")
        if not isinstance(workflow_id, str):
            raise BadRequest("workflow_id must be a string")
        workflow, template_images = templates.render(workflow_id, body.get("params") or {})
        workflow = check_workflow(workflow)  # parameters may carry references too
        taken = {image.name for image in images}
        images += [image for image in template_images if image.name not in taken]
    elif "workflow" in body:
        workflow = check_workflow(body["workflow"])
    else:
        raise BadRequest("the body needs a workflow (API format) or a workflow_id with params")
    check_model_urls(
        workflow, models=models, urls=urls, cloud=cloud
    )  # the api role checks them; the worker fetches them
    return PredictRequest(
        workflow=workflow,
        images=images,
        timeout_s=parse_timeout(body.get("timeout"), http=http),
        output=OutputOptions.parse(body.get("output")),
        workflow_id=workflow_id,
        previews=parse_previews(body.get("previews")),
    )


def parse_previews(raw: Any) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise BadRequest("previews must be true or false")
    return raw
