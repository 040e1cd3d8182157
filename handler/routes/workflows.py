"""Routes for named workflows: `GET /workflows` (every loaded template, and the ones refused) and
`GET /workflows/{workflow_id}` (one template with its parameters as JSON Schema).

A template's `available` is decided by the ComfyUI that would run it: its node catalogue has the
graph's node classes and lists every model file the graph names (`availability`), so a template is
available exactly when its files are installed, whatever MODEL_TYPE the image has; `missing` says
what is not there. `null` while no catalogue is known (before ComfyUI's first boot, or before a
worker published one for the api role).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from handler.comfyui import graph
from handler.routes.apidoc import PathItems, error_response, json_response, path_param, ref
from handler.routes.common import Services, query_flag, services_of
from handler.templates.params import Template


def catalogue_of(services: Services) -> dict[str, Any]:
    """The node catalogue that decides what a template can run (empty while none is known): this
    worker's last one loaded (not waiting for one on its way), or the one a worker published for
    the api role."""
    if services.comfy is not None:
        return services.comfy.catalogue.latest().object_info
    return services.published.object_info() if services.published is not None else {}


def availability(template: Template, object_info: dict[str, Any]) -> dict[str, Any]:
    """`available` (None while no catalogue is known) and, when not, `missing`: what is not there."""
    if not object_info:
        return {"available": None}
    report = graph.check(template.graph, object_info)
    # An input a required parameter fills holds only a placeholder (a LoRA the caller names,
    # maybe by URL): what ComfyUI has there says nothing about whether the template runs.
    supplied = {(t.node, t.input) for p in template.params.values() if p.required for t in p.targets}
    missing = [
        f"node {node_id} ({entry['class_type']}): {err['message']}: {err['details']}"
        for node_id, entry in report.node_errors.items()
        for err in entry["errors"]
        if (node_id, (err.get("extra_info") or {}).get("input_name")) not in supplied
    ]
    if report.error is not None and not report.node_errors:
        missing = report.messages()  # no node to blame: the graph itself (no outputs, bad format)
    return {"available": True} if not missing else {"available": False, "missing": missing}


def list_workflows(request: Request) -> JSONResponse:
    # A sync endpoint: starlette runs it on a worker thread (the api role reads the store).
    services = services_of(request)
    info, templates = catalogue_of(services), services.templates
    listed = [{**summary, **availability(templates.get(summary["id"]), info)} for summary in templates.list()]
    if query_flag(request, "available"):
        listed = [w for w in listed if w["available"]]  # only what this ComfyUI can run now
    body: dict[str, Any] = {"model_type": services.settings.model_type, "workflows": listed}
    errors = services.templates.errors()
    if errors:
        body["errors"] = errors
    return JSONResponse(body)


def get_workflow(request: Request) -> JSONResponse:
    services = services_of(request)
    workflow_id = request.path_params["workflow_id"]
    described = services.templates.describe(workflow_id)
    return JSONResponse({**described, **availability(services.templates.get(workflow_id), catalogue_of(services))})


def routes() -> list[BaseRoute]:
    """GET /workflows, /workflows/{workflow_id}."""
    return [
        Route("/workflows", list_workflows, methods=["GET"]),
        Route("/workflows/{workflow_id}", get_workflow, methods=["GET"]),
    ]


# --- the OpenAPI document (routes/apidoc.py)

WORKFLOW_SUMMARY = {
    "type": "object",
    "required": ["id", "title", "available"],
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "model_type": {"type": ["string", "null"], "description": "The MODEL_TYPE whose models it needs."},
        "available": {
            "type": ["boolean", "null"],
            "description": "The running ComfyUI has the graph's nodes and model files (null: not known yet).",
        },
        "missing": {
            "type": "array",
            "items": {"type": "string"},
            "description": "When not available: what ComfyUI lacks, one line each.",
        },
    },
}

WORKFLOW_DETAIL = {
    "allOf": [
        ref("WorkflowSummary"),
        {
            "type": "object",
            "properties": {"params": {"type": "object", "description": "The parameters as JSON Schema."}},
        },
    ]
}


SCHEMAS: dict[str, Any] = {"WorkflowSummary": WORKFLOW_SUMMARY, "WorkflowDetail": WORKFLOW_DETAIL}

OPERATIONS: PathItems = {
    "/workflows": {
        "get": {
            "summary": "Named workflows",
            "operationId": "listWorkflows",
            "tags": ["workflows"],
            "parameters": [
                {
                    "name": "available",
                    "in": "query",
                    "schema": {"type": "boolean"},
                    "description": "Only the templates the running ComfyUI can run now.",
                }
            ],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "model_type": {"type": "string"},
                            "workflows": {"type": "array", "items": ref("WorkflowSummary")},
                            "errors": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                                "description": "Templates refused at load time, and why.",
                            },
                        },
                    },
                    "Every loaded template.",
                )
            },
        }
    },
    "/workflows/{workflow_id}": {
        "get": {
            "summary": "One named workflow with its parameters as JSON Schema",
            "operationId": "getWorkflow",
            "tags": ["workflows"],
            "parameters": [path_param("workflow_id")],
            "responses": {
                "200": json_response(ref("WorkflowDetail"), "The template."),
                "404": error_response(
                    "No such template (the answer lists those there are), or its manifest was refused."
                ),
            },
        }
    },
}
