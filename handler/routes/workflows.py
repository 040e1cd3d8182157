"""Routes for named workflows and the API description: /workflows, /openapi.json, /docs.

The docs page is Swagger UI served from the `swagger-ui-py` package's own files, so it works
without reaching any CDN.
"""

from __future__ import annotations

import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from handler import __version__
from handler.routes import openapi
from handler.routes.common import query_flag, services_of

ASSETS = "/docs/static"

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


def openapi_json(request: Request) -> JSONResponse:
    present = [route.path for route in request.app.routes if isinstance(route, Route)]
    root = request.scope.get("root_path") or ""
    document = openapi.document(
        services_of(request).templates, present=present, version=__version__, server_url=root or None
    )
    return JSONResponse(document)


def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path") or ""
    return HTMLResponse(
        _PAGE.format(title=html.escape("comfyrun API"), assets=root + ASSETS, spec=root + "/openapi.json")
    )


def routes() -> list[BaseRoute]:
    """GET /workflows, /workflows/{workflow_id}, /openapi.json, /docs (+ its static files)."""
    return [
        Route("/workflows", list_workflows, methods=["GET"]),
        Route("/workflows/{workflow_id}", get_workflow, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount(ASSETS, app=StaticFiles(packages=[("swagger_ui", "static")]), name="docs-static"),
    ]
