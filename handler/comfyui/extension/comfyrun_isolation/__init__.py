"""comfyrun's isolation extension, loaded by ComfyUI as a custom node package (no nodes).

While ComfyUI validates or runs a prompt whose `extra_data` names a request folder
(`comfyrun_folder`, shaped `r` + 32 hex digits), ComfyUI's input, output and temp folders are
that request's own subfolders: `folder_paths.get_input_directory()` and its siblings answer
`<root>/<folder>` instead of `<root>`. Every node that reads, lists or writes through
`folder_paths` (loaders, `[output]`/`[temp]` annotations, savers, previews, folder nodes) then
sees only the request's files, whatever value a link computed. ComfyUI runs one prompt at a time;
validation runs on the server's event loop while another prompt executes, so the folder is held
in a context variable (per task and per thread), never in `folder_paths`' globals. A prompt
without a folder sees the roots, as without this extension.

Routes (ComfyUI listens on loopback for the service only):
* `GET /comfyrun/isolation`: {"version": VERSION}; the service checks it at boot.
* `DELETE /comfyrun/folders/{folder}`: removes that folder under input, output and temp (for a
  ComfyUI on another machine, whose files the service cannot remove itself).

Node instances, which ComfyUI caches across prompts and some of which keep the folder they were
made in (SaveImage's `output_dir`), are made anew for each prompt; cached outputs stay.

Written for ComfyUI 0.33.0's `folder_paths`, `execution.PromptExecutor.execute_async`,
`comfy_execution.caching` and `server.PromptServer`; it imports nothing from the service.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import execution
import folder_paths
import server
from aiohttp import web
from comfy_execution.caching import CacheKeySetID, HierarchicalCache

VERSION = 1
EXTRA_DATA_KEY = "comfyrun_folder"
FOLDER = re.compile(r"^r[0-9a-f]{32}$")
PROMPT_PATHS = frozenset({"/prompt", "/api/prompt"})
NODE_CLASS_MAPPINGS: dict[str, Any] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

log = logging.getLogger("comfyrun_isolation")
_folder: contextvars.ContextVar[str | None] = contextvars.ContextVar("comfyrun_folder", default=None)


def folder_of(extra_data: Any) -> str | None:
    value = extra_data.get(EXTRA_DATA_KEY) if isinstance(extra_data, dict) else None
    return value if isinstance(value, str) and FOLDER.fullmatch(value) else None


def _scoped(root_of: Callable[[], str]) -> Callable[[], str]:
    def directory() -> str:
        root = root_of()
        folder = _folder.get()
        if folder is None:
            return root
        path = os.path.join(root, folder)
        os.makedirs(path, exist_ok=True)
        return path

    return directory


_roots = {
    "input": folder_paths.get_input_directory,
    "output": folder_paths.get_output_directory,
    "temp": folder_paths.get_temp_directory,
}
folder_paths.get_input_directory = _scoped(_roots["input"])
folder_paths.get_output_directory = _scoped(_roots["output"])
folder_paths.get_temp_directory = _scoped(_roots["temp"])

_execute_async = execution.PromptExecutor.execute_async


def _fresh_node_objects(executor: Any) -> None:
    """Node instances are cached across prompts, and some keep the folder they were made in
    (SaveImage's `self.output_dir`, set in `__init__`): each prompt makes its own."""
    caches = getattr(executor, "caches", None)
    if caches is None or not isinstance(getattr(caches, "objects", None), HierarchicalCache):
        return  # --cache-none keeps no node instances
    caches.objects = HierarchicalCache(CacheKeySetID)
    caches.all = [caches.outputs, caches.objects]


async def _execute_in_folder(
    self: Any, prompt: Any, prompt_id: Any, extra_data: Any = None, *args: Any, **kwargs: Any
) -> Any:
    _fresh_node_objects(self)
    token = _folder.set(folder_of(extra_data))
    try:
        return await _execute_async(
            self, prompt, prompt_id, extra_data if extra_data is not None else {}, *args, **kwargs
        )
    finally:
        _folder.reset(token)


execution.PromptExecutor.execute_async = _execute_in_folder


@web.middleware
async def _validate_in_folder(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """`POST /prompt` validates the prompt (files included) in the folder it will run in."""
    if request.method != "POST" or request.path not in PROMPT_PATHS:
        return await handler(request)
    try:
        body = await request.json()  # aiohttp keeps the body: the handler reads it again
    except Exception:
        return await handler(request)
    token = _folder.set(folder_of(body.get("extra_data")) if isinstance(body, dict) else None)
    try:
        return await handler(request)
    finally:
        _folder.reset(token)


_server = server.PromptServer.instance
_server.app.middlewares.append(_validate_in_folder)
routes: web.RouteTableDef = _server.routes


@routes.get("/comfyrun/isolation")
async def _isolation(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


@routes.delete("/comfyrun/folders/{folder}")
async def _remove_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if not FOLDER.fullmatch(folder):
        return web.json_response({"error": "not a request folder"}, status=400)
    for root_of in _roots.values():
        shutil.rmtree(os.path.join(root_of(), folder), ignore_errors=True)
    return web.Response(status=204)


log.info("comfyrun isolation: each request's prompt sees only its own input, output and temp folders")
