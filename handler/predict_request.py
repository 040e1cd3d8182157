"""The body of `POST /predict`, checked and turned into a `PredictRequest`.

Sync requests, async jobs and Cloud Tasks deliveries all go through `parse_predict_body`, so a
body that is accepted for later is exactly one that would run now.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .errors import BadRequest
from .inputs import InputImage, parse_images
from .outputs import OutputOptions

UI_FORMAT_HINT = (
    "this looks like a workflow saved in ComfyUI's UI format (it has 'nodes' and 'links'); "
    "export it with 'Export (API)' in ComfyUI's workflow menu and send that instead"
)


@dataclass
class PredictRequest:
    workflow: dict[str, Any]
    images: list[InputImage] = field(default_factory=list)
    timeout_s: float = 600.0
    output: OutputOptions = field(default_factory=OutputOptions)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    workflow_id: str | None = None  # set when the graph came from a named template


def check_workflow(workflow: Any) -> dict[str, Any]:
    """The shape of an API-format graph: {node id: {class_type, inputs}}."""
    if not isinstance(workflow, dict) or not workflow:
        raise BadRequest("workflow must be a non-empty object of nodes in ComfyUI's API format")
    if "nodes" in workflow and "links" in workflow:
        raise BadRequest(UI_FORMAT_HINT)
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise BadRequest(f"workflow node {node_id!r} must be an object with a string class_type")
        if not isinstance(node.get("inputs", {}), dict):
            raise BadRequest(f"workflow node {node_id!r} has inputs that are not an object")
    return workflow


def parse_timeout(raw: Any, settings: Settings) -> float:
    if raw is None:
        return settings.request_timeout_s
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise BadRequest("timeout must be a positive number of seconds")
    if raw > settings.max_request_timeout_s:
        raise BadRequest(f"timeout may be at most {settings.max_request_timeout_s:g} seconds")
    return float(raw)


def parse_predict_body(body: Any, settings: Settings, templates: Any = None) -> PredictRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    # Accept the {"input": {...}} envelope other ComfyUI workers use.
    if "workflow" not in body and "workflow_id" not in body and isinstance(body.get("input"), dict):
        body = body["input"]
    images = parse_images(body.get("images"), settings)
    workflow_id = body.get("workflow_id")
    if workflow_id is not None:
        if "workflow" in body:
            raise BadRequest("send either workflow or workflow_id, not both")
        if templates is None:
            raise BadRequest("named workflows are not available on this service")
        if not isinstance(workflow_id, str):
            raise BadRequest("workflow_id must be a string")
        workflow, template_images = templates.render(workflow_id, body.get("params") or {})
        taken = {image.name for image in images}
        images += [image for image in template_images if image.name not in taken]
    elif "workflow" in body:
        workflow = check_workflow(body["workflow"])
    else:
        raise BadRequest("the body needs a workflow (API format) or a workflow_id with params")
    return PredictRequest(
        workflow=workflow,
        images=images,
        timeout_s=parse_timeout(body.get("timeout"), settings),
        output=OutputOptions.parse(body.get("output")),
        workflow_id=workflow_id,
    )
