"""The model files the running ComfyUI can load, and the cache of models fetched by URL, where
ComfyUI runs (roles `all` and `worker`):

* `GET /models`, `GET /models/{folder}`: ComfyUI's lists; `/models` also shows admins the cache
  (its budget, and each file's source, size, sha256 and last use: what every caller fetched);
* `POST /models/fetch` `{"url", "folder", "sha256"?, "filename"?}`: fetch into the cache ahead of
  the requests that will use it (the same URL rules and answers as a model URL in a workflow);
* `DELETE /models/cache/{key}`: evict one file, and its copy in the model cache's store
  (MODEL_CACHE_STORE) when there is one (409 while a queued or running prompt uses it).

Fetching into the cache and evicting from it are for admins (handler/access/): they change what
every caller's runs find.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from handler.errors import BadRequest, NotFound
from handler.models.cache import ModelCache
from handler.models.refs import LOADERS, check_model_urls, parse_ref
from handler.routes.apidoc import PathItems, error_response, json_response, path_param
from handler.routes.common import caller_of, query_flag, read_json, services_of
from handler.routes.predict import comfy_of
from handler.services import Services


async def models(request: Request) -> JSONResponse:
    services = services_of(request)
    refresh = bool(query_flag(request, "refresh"))
    catalogue = await run_in_threadpool(comfy_of(services).models, refresh)
    body: dict[str, Any] = {"model_type": services.settings.model_type, "models": catalogue}
    if services.models is not None and caller_of(request).admin:  # what other callers fetched
        body["cache"] = {**services.models.usage(), "files": [e.describe() for e in services.models.entries()]}
    return JSONResponse(body)


def cache_of(services: Services) -> ModelCache:
    if services.models is None:
        raise NotFound("this service fetches no models by URL (MODEL_URLS is off, or ComfyUI is attached by URL)")
    return services.models


async def fetch_model(request: Request) -> JSONResponse:
    caller_of(request).require_admin()
    services = services_of(request)
    cache = cache_of(services)
    body = await read_json(request, 64 * 1024, timeout_s=30)
    if not isinstance(body, dict):
        raise BadRequest('the body must be {"url", "folder", "sha256", "filename"}')
    body = dict(body)
    folder = body.pop("folder", None)
    if not isinstance(folder, str) or folder not in set(LOADERS.values()):
        raise BadRequest(f"folder must be one of {sorted(set(LOADERS.values()))}")
    ref = parse_ref(body, folder, "the body")
    # The same checks as a model URL in a workflow (CheckpointLoaderSimple stands for any loader).
    probe = {"fetch": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": body}}}
    settings = services.settings
    await run_in_threadpool(check_model_urls, probe, models=settings.models, urls=settings.urls, cloud=settings.cloud)
    deadline = time.monotonic() + services.settings.model_fetch_timeout_s
    got = await run_in_threadpool(lambda: cache.acquire(ref, deadline=deadline))
    cache.release(got.entry.key)  # kept, not pinned: no prompt uses it yet
    return JSONResponse({**got.describe(), "key": got.entry.key})


async def evict_model(request: Request) -> JSONResponse:
    caller_of(request).require_admin()
    entry = cache_of(services_of(request)).evict(request.path_params["key"])
    return JSONResponse({"evicted": entry.describe()})


async def model_folder(request: Request) -> JSONResponse:
    services = services_of(request)
    refresh = bool(query_flag(request, "refresh"))
    folder = request.path_params["folder"]
    files = await run_in_threadpool(comfy_of(services).model_folder, folder, refresh)
    return JSONResponse({"folder": folder, "models": files})


def routes() -> list[BaseRoute]:
    return [
        Route("/models", models),
        Route("/models/fetch", fetch_model, methods=["POST"]),
        Route("/models/cache/{key}", evict_model, methods=["DELETE"]),
        Route("/models/{folder}", model_folder),
    ]


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
    "/models/fetch": {
        "post": {
            "summary": "Fetch a model by URL into the cache ahead of time",
            "operationId": "fetchModel",
            "tags": ["service"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["url", "folder"],
                            "properties": {
                                "url": {
                                    "type": "string",
                                    "description": "https://, gs://bucket/object, hf:// or civitai:// (where CIVITAI_MODELS allows it)",
                                },
                                "folder": {"type": "string", "description": "the model folder, e.g. loras"},
                                "sha256": {"type": "string"},
                                "filename": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": json_response({"type": "object"}, "The cached file: source, size, sha256, key."),
                "400": error_response("A bad or refused URL, no such file, or a checksum mismatch."),
                "413": error_response("Larger than the model cache."),
                "503": error_response("The cache is held by files in use; retry."),
            },
        }
    },
    "/models/cache/{key}": {
        "delete": {
            "summary": "Evict one cached model",
            "description": "Removes the instance's copy and, where MODEL_CACHE_STORE is set, the store's copy "
            "shared by every instance (eviction to make room keeps the store's copy).",
            "operationId": "evictModel",
            "tags": ["service"],
            "parameters": [path_param("key")],
            "responses": {
                "200": json_response({"type": "object"}, "The evicted file."),
                "404": error_response("No such cached model, here or in the store."),
                "409": error_response("A queued or running prompt uses it."),
            },
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
