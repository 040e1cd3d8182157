"""Routes for named workflows and the API description: /workflows, /openapi.json, /docs.

The docs page is Swagger UI served from the `swagger-ui-py` package's own files, so it works
without reaching any CDN.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from . import openapi
from .errors import NotFound

if TYPE_CHECKING:
    from .templates import Templates

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


def routes(services: Any) -> list[BaseRoute]:
    """GET /workflows, /workflows/{workflow_id}, /openapi.json, /docs (+ its static files)."""

    def templates() -> Templates | None:
        registry: Templates | None = getattr(services, "templates", None)
        return registry

    def list_workflows(request: Request) -> JSONResponse:
        registry = templates()
        listed = registry.list() if registry is not None else []
        if request.query_params.get("available", "").lower() in {"1", "true", "yes"}:
            listed = [w for w in listed if w["available"]]  # only what this image's models can run
        body: dict[str, Any] = {"model_type": services.settings.model_type, "workflows": listed}
        errors = registry.errors() if registry is not None else {}
        if errors:
            body["errors"] = errors
        return JSONResponse(body)

    def get_workflow(request: Request) -> JSONResponse:
        registry = templates()
        workflow_id = request.path_params["workflow_id"]
        if registry is None:
            raise NotFound(f"no workflow named {workflow_id!r}", workflow_id=workflow_id)
        return JSONResponse(registry.describe(workflow_id))

    def openapi_json(request: Request) -> JSONResponse:
        from . import __version__

        present = [route.path for route in request.app.routes if isinstance(route, Route)]
        root = request.scope.get("root_path") or ""
        return JSONResponse(
            openapi.document(templates(), present=present, version=__version__, server_url=root or None)
        )

    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path") or ""
        return HTMLResponse(
            _PAGE.format(title=html.escape("comfyrun API"), assets=root + ASSETS, spec=root + "/openapi.json")
        )

    mounted: list[BaseRoute] = [
        Route("/workflows", list_workflows, methods=["GET"]),
        Route("/workflows/{workflow_id}", get_workflow, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
    mounted.append(Mount(ASSETS, app=StaticFiles(packages=[("swagger_ui", "static")]), name="docs-static"))
    return mounted
