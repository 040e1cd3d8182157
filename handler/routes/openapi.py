"""The service's OpenAPI 3.1 document, `GET /openapi.json` and the Swagger UI page `GET /docs`.

Each routes module declares the operations of its own routes beside them (`OPERATIONS`, and the
component schemas its answers use, `SCHEMAS`: routes/apidoc.py); `document` puts them together on
each request, so template changes show at once. Template parameters are already JSON Schema
2020-12 (`Templates.json_schema`), which OpenAPI 3.1 takes as is: each template becomes a
component `<id>.params`, and `/predict` accepts either a raw API-format workflow or one of the
templates (`oneOf`, told apart by `workflow_id`): that request body is added here.

The docs page is Swagger UI served from the `swagger-ui-py` package's own files, so it works
without reaching any CDN.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from handler import __version__
from handler.body import COMPONENTS, FIELDS, PRIORITIES, WORKFLOW
from handler.routes import dashboard, jobs, models, observe, predict, workflows
from handler.routes.apidoc import ERROR, JSON, PathItems, json_response, ref, with_access_answers
from handler.routes.common import services_of

if TYPE_CHECKING:
    from handler.templates.registry import Templates

# Every module's declarations, in the order the document lists them.
DECLARED = (predict, models, jobs, workflows, observe, dashboard)
_CONVERTER = re.compile(r"\{(\w+):\w+\}")
ASSETS = "/docs/static"

OPERATIONS: PathItems = {
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "tags": ["service"],
            "responses": {"200": json_response({"type": "object"}, "OpenAPI 3.1.")},
        }
    },
}

RAW_REQUEST: dict[str, Any] = {
    "type": "object",
    "title": "Raw workflow",
    "required": ["workflow"],
    "properties": {
        "workflow": WORKFLOW,
        **FIELDS,
    },
}


def _example_params(schema: dict[str, Any]) -> dict[str, Any]:
    example: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if name in schema.get("required", []):
            example[name] = (
                prop.get("examples")
                or [
                    "https://example.com/input.png" if "contentMediaType" in prop else "a lighthouse on a cliff at dusk"
                ]
            )[0]
    return example


def _priority_with_queue_limits() -> dict[str, Any]:
    """The `priority` field, described with the Cloud Tasks queue limits the service creates."""
    from handler.taskqueue.cloudtasks import QUEUE_LIMITS  # google-cloud-tasks: imported only when a document is built

    limits = "; ".join(
        f"{p}: up to {QUEUE_LIMITS[p][0]:g} dispatches/s, {QUEUE_LIMITS[p][1]} at once"
        for p in PRIORITIES
        if p in QUEUE_LIMITS
    )
    field = FIELDS["priority"]
    return {
        **field,
        "description": f"{field['description']} With Cloud Tasks each priority is a queue of its own ({limits}).",
    }


def document(
    templates: Templates | None = None,
    *,
    present: Iterable[str] | None = None,
    version: str = "0",
    server_url: str | None = None,
) -> dict[str, Any]:
    """The whole service; `present` limits the paths to the routes this app has mounted."""
    priority = _priority_with_queue_limits()
    schemas: dict[str, Any] = {
        "Error": ERROR,
        **COMPONENTS,
        "RawPredictRequest": {**RAW_REQUEST, "properties": {**RAW_REQUEST["properties"], "priority": priority}},
    }
    for module in DECLARED:
        schemas.update(getattr(module, "SCHEMAS", {}))
    choices = [ref("RawPredictRequest")]
    examples: dict[str, Any] = {
        "raw": {
            "summary": "A raw API-format workflow",
            "value": {
                "workflow": {
                    "1": {
                        "class_type": "EmptyImage",
                        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
                    },
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "example"}},
                }
            },
        },
    }
    listed = [(t, templates.json_schema(t["id"])) for t in templates.list()] if templates is not None else []
    for summary, params_schema in listed:
        workflow_id = summary["id"]
        schemas[f"{workflow_id}.params"] = params_schema
        request = {
            "type": "object",
            "title": summary["title"],
            "description": summary.get("description", ""),
            "required": ["workflow_id"],
            "properties": {
                "workflow_id": {"const": workflow_id},
                "params": ref(f"{workflow_id}.params"),
                **FIELDS,
                "priority": priority,
            },
        }
        if params_schema.get("required"):
            request["required"] = ["workflow_id", "params"]
        schemas[f"{workflow_id}.request"] = request
        choices.append(ref(f"{workflow_id}.request"))
        examples[workflow_id] = {
            "summary": summary["title"] + ("" if summary.get("available", True) else " (models not in this image)"),
            "value": {"workflow_id": workflow_id, "params": _example_params(params_schema)},
        }

    paths: PathItems = {}
    for declared in (*(module.OPERATIONS for module in DECLARED), OPERATIONS):
        paths.update(declared)
    predict_body = {"required": True, "content": {JSON: {"schema": {"oneOf": choices}, "examples": examples}}}
    paths["/predict"] = {"post": {**paths["/predict"]["post"], "requestBody": predict_body}}
    if present is not None:
        mounted = {_CONVERTER.sub(r"{\1}", path) for path in present}  # "{name:path}" → "{name}"
        paths = {path: item for path, item in paths.items() if path in mounted}
    paths = with_access_answers(paths)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "comfyrun",
            "version": version,
            "description": "ComfyUI as a serverless API: run raw workflows or named templates with typed parameters.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
        # Keys where the service has them; behind Cloud Run's IAM, a Google ID token as the bearer.
        "security": [{"apiKey": []}, {"bearer": []}, {}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


# API keys (docs/security.md, "Access"): `X-API-Key`, or the key as `Authorization: Bearer`.
SECURITY_SCHEMES = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "an API key (crk_…)"},
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key (crk_…), or a Google ID token where Cloud Run's IAM lets callers in",
    },
}


# --- the routes

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", deepLinking: true,
                                  defaultModelsExpandDepth: 0, tryItOutEnabled: true}});
  </script>
</body>
</html>
"""


def openapi_json(request: Request) -> JSONResponse:
    present = [route.path for route in request.app.routes if isinstance(route, Route)]
    root = request.scope.get("root_path") or ""
    doc = document(services_of(request).templates, present=present, version=__version__, server_url=root or None)
    return JSONResponse(doc)


def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path") or ""
    return HTMLResponse(
        _PAGE.format(title=html.escape("comfyrun API"), assets=root + ASSETS, spec=root + "/openapi.json")
    )


def routes() -> list[BaseRoute]:
    """GET /openapi.json, /docs (+ its static files)."""
    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount(ASSETS, app=StaticFiles(packages=[("swagger_ui", "static")]), name="docs-static"),
    ]
