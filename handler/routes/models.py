"""`GET /models` and `GET /models/{folder}`: the model files the running ComfyUI can load,
where ComfyUI runs (roles `all` and `worker`)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

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
