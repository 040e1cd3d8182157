"""`GET /models` and `GET /models/{folder}`: the model files the running ComfyUI can load,
where ComfyUI runs (roles `all` and `worker`)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from handler.routes.apidoc import PathItems, error_response, json_response, path_param
from handler.routes.common import query_flag, services_of
from handler.routes.predict import comfy_of


async def models(request: Request) -> JSONResponse:
    services = services_of(request)
    refresh = bool(query_flag(request, "refresh"))
    catalogue = await run_in_threadpool(comfy_of(services).models, refresh)
    return JSONResponse({"model_type": services.settings.model_type, "models": catalogue})


async def model_folder(request: Request) -> JSONResponse:
    services = services_of(request)
    refresh = bool(query_flag(request, "refresh"))
    folder = request.path_params["folder"]
    files = await run_in_threadpool(comfy_of(services).model_folder, folder, refresh)
    return JSONResponse({"folder": folder, "models": files})


def routes() -> list[BaseRoute]:
    return [Route("/models", models), Route("/models/{folder}", model_folder)]


# --- the OpenAPI document (routes/apidoc.py)

OPERATIONS: PathItems = {
    "/models": {
        "get": {
            "summary": "Model files ComfyUI sees, per folder",
            "operationId": "models",
            "tags": ["service"],
            "parameters": [
                {
                    "name": "refresh",
                    "in": "query",
                    "schema": {"type": "boolean"},
                    "description": "Ask ComfyUI again instead of the cached list.",
                }
            ],
            "responses": {"200": json_response({"type": "object"}, "model_type and the files of every model folder.")},
        }
    },
    "/models/{folder}": {
        "get": {
            "summary": "Model files of one folder",
            "operationId": "modelFolder",
            "tags": ["service"],
            "parameters": [
                path_param("folder"),
                {"name": "refresh", "in": "query", "schema": {"type": "boolean"}},
            ],
            "responses": {
                "200": json_response({"type": "object"}, "The folder and its files."),
                "404": error_response("No such model folder."),
            },
        }
    },
}
