"""Routes for named workflows: `GET /workflows` (every loaded template, and the ones refused) and
`GET /workflows/{workflow_id}` (one template with its parameters as JSON Schema)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from handler.routes.apidoc import PathItems, error_response, json_response, path_param, ref
from handler.routes.common import query_flag, services_of


def list_workflows(request: Request) -> JSONResponse:
    services = services_of(request)
    listed = services.templates.list()
    if query_flag(request, "available"):
        listed = [w for w in listed if w["available"]]  # only what this image's models can run
    body: dict[str, Any] = {"model_type": services.settings.model_type, "workflows": listed}
    errors = services.templates.errors()
    if errors:
        body["errors"] = errors
    return JSONResponse(body)


def get_workflow(request: Request) -> JSONResponse:
    return JSONResponse(services_of(request).templates.describe(request.path_params["workflow_id"]))


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
        "available": {"type": "boolean", "description": "This service's image has those models."},
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
                    "description": "Only the templates whose models this image has.",
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
                "404": error_response("No such template, or its manifest was refused."),
            },
        }
    },
}
