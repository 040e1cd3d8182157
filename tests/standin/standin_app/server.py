"""HTTP + WebSocket on one port, with ComfyUI's routes, status codes and message shapes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import mimetypes
import os
import re
import shutil
import struct
import sys
import threading
import time
import uuid
from io import BytesIO

import aiohttp
from aiohttp import web
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from . import COMFYUI_VERSION
from .catalog import Catalog
from .engine import PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, UNENCODED_PREVIEW_IMAGE, Executor, PromptQueue
from .validation import Validator

log = logging.getLogger("standin")

SERVER_FEATURES = {
    "supports_preview_metadata": True,
    "supports_model_type_tags": True,
    "max_upload_size": 104857600,
    "extension": {"manager": {"supports_v4": True}},
    "node_replacements": True,
    "assets": False,
}

MODEL_FOLDERS = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "datasets",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "background_removal",
    "frame_interpolation",
    "geometry_estimation",
    "optical_flow",
    "detection",
]

JOB_STATUSES = ["pending", "in_progress", "completed", "failed", "cancelled"]


def canonical_uuid(value) -> str:
    if not isinstance(value, str):
        raise ValueError("job id must be a string")
    if str(uuid.UUID(value)) != value:
        raise ValueError("job id must be a UUID in canonical lowercase hyphenated form")
    return value


def within(base: str, path: str) -> bool:
    base = os.path.abspath(base)
    path = os.path.abspath(path)
    try:
        return os.path.commonpath((base, path)) == base
    except ValueError:
        return False


ISOLATION_KEY = "comfyrun_folder"
ISOLATION_FOLDER = re.compile(r"^r[0-9a-f]{32}$")


class Paths:
    """ComfyUI's folders. With `isolation` (comfyrun's isolation extension is installed, see
    `isolation_installed`), a prompt whose extra_data names a request folder validates and runs
    in that folder's input/output/temp subfolders, as the extension makes ComfyUI do."""

    def __init__(self, input_dir: str, output_dir: str, temp_dir: str, models_dir: str, isolation: bool = False):
        self.input = input_dir
        self.output = output_dir
        self.temp = temp_dir
        self.models = models_dir
        self.isolation = isolation

    def by_type(self, kind: str | None) -> str | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind)

    def scoped(self, extra_data: dict | None) -> Paths:
        folder = (extra_data or {}).get(ISOLATION_KEY) if self.isolation else None
        if not isinstance(folder, str) or not ISOLATION_FOLDER.fullmatch(folder):
            return self
        inside = [os.path.join(root, folder) for root in (self.input, self.output, self.temp)]
        for path in inside:
            os.makedirs(path, exist_ok=True)
        return Paths(*inside, self.models)


def isolation_installed(extra_paths_configs: list[str]) -> bool:
    """Whether an extra paths file adds a custom_nodes folder holding `comfyrun_isolation`."""
    import yaml

    for config_path in extra_paths_configs:
        with open(config_path, encoding="utf-8") as stream:
            config = yaml.safe_load(stream) or {}
        for entry in config.values():
            folders = str((entry or {}).get("custom_nodes") or "").split("\n")
            if any(folder and os.path.isdir(os.path.join(folder, "comfyrun_isolation")) for folder in folders):
                return True
    return False


class StandinServer:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, catalog: Catalog, registry: dict, paths: Paths, executor_factory
    ):
        self.loop = loop
        self.catalog = catalog
        self.registry = registry
        self.paths = paths
        self._validating: dict = {}  # the extra_data of the prompt being validated (its folder)
        self.messages: asyncio.Queue = asyncio.Queue()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.number = 0
        self.prompt_queue = PromptQueue(self)
        self.executor: Executor = executor_factory(self)
        self.validator = Validator(catalog, registry, self._validation_context)
        self.app = web.Application(client_max_size=100 * 1024 * 1024)
        self._add_routes()

    def _validation_context(self, node_id: str):
        from .engine import NodeContext

        return NodeContext(self.executor, node_id, extra_data=self._validating)

    # --- messaging ------------------------------------------------------------------------------
    def supports_preview_metadata(self, sid: str | None) -> bool:
        if sid is None:
            return False
        return self.sockets_metadata.get(sid, {}).get("feature_flags", {}).get("supports_preview_metadata") is True

    def send_sync(self, event, data, sid=None) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.prompt_queue.remaining()}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()})

    async def publish_loop(self) -> None:
        while True:
            event, data, sid = await self.messages.get()
            try:
                await self.send(event, data, sid)
            except Exception:
                log.exception("could not send %s", event)

    async def send(self, event, data, sid=None) -> None:
        if event == UNENCODED_PREVIEW_IMAGE:
            await self._send_bytes(PREVIEW_IMAGE, self._encode_preview(data), sid)
        elif event == PREVIEW_IMAGE_WITH_METADATA:
            image, metadata = data
            await self._send_bytes(
                PREVIEW_IMAGE_WITH_METADATA, self._encode_preview_with_metadata(image, metadata), sid
            )
        elif isinstance(data, (bytes, bytearray)):
            await self._send_bytes(event, data, sid)
        else:
            await self._send_to(sid, lambda ws: ws.send_json({"type": event, "data": data}))

    @staticmethod
    def _image_bytes(preview) -> tuple[str, bytes]:
        fmt, image, max_size = preview
        if max_size is not None:
            image = ImageOps.contain(image, (max_size, max_size), Image.Resampling.BILINEAR)
        buffer = BytesIO()
        image.save(buffer, format=fmt, quality=95, compress_level=1)
        return fmt, buffer.getvalue()

    def _encode_preview(self, preview) -> bytes:
        fmt, image = self._image_bytes(preview)
        return struct.pack(">I", 2 if fmt == "PNG" else 1) + image

    def _encode_preview_with_metadata(self, preview, metadata) -> bytes:
        fmt, image = self._image_bytes(preview)
        metadata = dict(metadata or {})
        metadata["image_type"] = "image/png" if fmt == "PNG" else "image/jpeg"
        blob = json.dumps(metadata).encode("utf-8")
        return struct.pack(">I", len(blob)) + blob + image

    async def _send_bytes(self, event: int, data: bytes, sid) -> None:
        message = struct.pack(">I", event) + bytes(data)
        await self._send_to(sid, lambda ws: ws.send_bytes(message))

    async def _send_to(self, sid, send) -> None:
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            try:
                await send(ws)
            except (aiohttp.ClientError, ConnectionResetError, BrokenPipeError, ConnectionError, RuntimeError) as err:
                log.warning("send error: %s", err)

    # --- routes ---------------------------------------------------------------------------------
    def _add_routes(self) -> None:
        routes = [
            ("GET", "/ws", self.websocket_handler),
            ("GET", "/embeddings", self.get_embeddings),
            ("GET", "/models", self.get_model_folders),
            ("GET", "/models/{folder}", self.get_models),
            ("GET", "/extensions", self.get_extensions),
            ("POST", "/upload/image", self.upload_image),
            ("POST", "/upload/mask", self.upload_mask),
            ("GET", "/view", self.view),
            ("GET", "/view_metadata/{folder_name}", self.view_metadata),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/features", self.features),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_node),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.post_interrupt),
            ("POST", "/free", self.post_free),
            ("GET", "/internal/folder_paths", self.folder_paths),
            ("GET", "/settings", self.empty_object),
            ("GET", "/i18n", self.empty_object),
            ("GET", "/node_replacements", self.empty_object),
            ("GET", "/global_subgraphs", self.empty_object),
            ("GET", "/users", self.users),
            ("GET", "/userdata", self.userdata),
        ]
        if self.paths.isolation:  # the routes comfyrun's isolation extension adds
            routes += [
                ("GET", "/comfyrun/isolation", self.isolation_version),
                ("DELETE", "/comfyrun/folders/{folder}", self.remove_folder),
            ]
        table = []
        for method, path, handler in routes:
            table.append(web.route(method, "/api" + path, handler))
        for method, path, handler in routes:
            table.append(web.route(method, path, handler))
        table += [
            web.get("/api/jobs", self.get_jobs),
            web.get("/api/jobs/{job_id}", self.get_job),
            web.post("/api/jobs/{job_id}/cancel", self.cancel_job),
            web.get("/", self.root),
        ]
        self.app.add_routes(table)

    async def root(self, request):
        return web.Response(text="<html><body>ComfyUI stand-in</body></html>", content_type="text/html")

    async def websocket_handler(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.sockets_metadata[sid] = {"feature_flags": {}}
        try:
            await self.send("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    log.warning("ws connection closed with exception %s", ws.exception())
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first and data.get("type") == "feature_flags":
                            self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                            await self.send("feature_flags", dict(SERVER_FEATURES), sid)
                        first = False
                    except json.JSONDecodeError:
                        log.warning("Invalid JSON received from client %s: %s", sid, msg.data)
                    except Exception as ex:
                        log.error("Error processing WebSocket message: %s", ex)
        finally:
            # As in ComfyUI, the id is dropped whichever socket holds it: an old connection that closes
            # after a reconnect with the same clientId takes the new one's registration with it.
            self.sockets.pop(sid, None)
            self.sockets_metadata.pop(sid, None)
        return ws

    async def empty_object(self, request):
        return web.json_response({})

    async def users(self, request):
        return web.json_response({"storage": "server", "migrated": True})

    async def userdata(self, request):
        return web.Response(status=404, text="Directory not found")

    async def get_embeddings(self, request):
        return web.json_response([])

    async def get_model_folders(self, request):
        return web.json_response(MODEL_FOLDERS)

    def _model_files(self, folder: str) -> list[str]:
        base = os.path.join(self.paths.models, folder)
        out = []
        for root, _, files in os.walk(base):
            for name in files:
                out.append(os.path.relpath(os.path.join(root, name), base).replace(os.sep, "/"))
        return sorted(out)

    async def get_models(self, request):
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(self._model_files(folder))

    async def get_extensions(self, request):
        return web.json_response([])

    async def isolation_version(self, request):
        return web.json_response({"version": 1})

    async def remove_folder(self, request):
        folder = request.match_info["folder"]
        if not ISOLATION_FOLDER.fullmatch(folder):
            return web.json_response({"error": "not a request folder"}, status=400)
        for root in (self.paths.input, self.paths.output, self.paths.temp):
            shutil.rmtree(os.path.join(root, folder), ignore_errors=True)
        return web.Response(status=204)

    async def folder_paths(self, request):
        return web.json_response({name: [os.path.join(self.paths.models, name)] for name in MODEL_FOLDERS})

    # uploads
    def _image_upload(self, post, save=None):
        image = post.get("image")
        overwrite = post.get("overwrite")
        upload_type = post.get("type") or "input"
        upload_dir = self.paths.by_type(upload_type)
        if upload_dir is None:
            raise RuntimeError(f"unknown upload type {upload_type!r}")
        if not (image is not None and hasattr(image, "file") and image.file):
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = post.get("subfolder", "")
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((os.path.abspath(upload_dir), filepath)) != os.path.abspath(upload_dir):
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        stem, ext = os.path.splitext(filename)
        duplicate = False
        if overwrite not in ("true", "1"):
            index = 1
            while os.path.exists(filepath):
                image.file.seek(0)
                new = image.file.read()
                image.file.seek(0)
                with open(filepath, "rb") as f:
                    if hashlib.sha256(f.read()).digest() == hashlib.sha256(new).digest():
                        duplicate = True
                        break
                filename = f"{stem} ({index}){ext}"
                filepath = os.path.join(folder, filename)
                index += 1
        if not duplicate:
            if save is not None:
                save(image, post, filepath)
            else:
                with open(filepath, "wb") as f:
                    f.write(image.file.read())
        return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})

    async def upload_image(self, request):
        post = await request.post()
        return self._image_upload(post)

    async def upload_mask(self, request):
        post = await request.post()

        def save(image, post, filepath):
            ref = json.loads(post.get("original_ref"))
            name = ref["filename"]
            if not name or name[0] == "/" or ".." in name:
                return
            base = self.paths.by_type(ref.get("type", "output"))
            if base is None:
                return
            if ref.get("subfolder", ""):
                candidate = os.path.join(base, ref["subfolder"])
                if not within(base, candidate):
                    return
                base = candidate
            original = os.path.join(base, name)
            if os.path.isfile(original):
                with Image.open(original) as source:
                    info = PngInfo()
                    for key, value in getattr(source, "text", {}).items():
                        info.add_text(key, value)
                    rgba = source.convert("RGBA")
                    mask = Image.open(image.file).convert("RGBA")
                    rgba.putalpha(mask.getchannel("A"))
                    rgba.save(filepath, compress_level=4, pnginfo=info)

        return self._image_upload(post, save)

    async def view(self, request):
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        base = None
        for suffix, kind in (("[output]", "output"), ("[input]", "input"), ("[temp]", "temp")):
            if filename.endswith(suffix):
                filename, base = filename[: -len(suffix) - 1], self.paths.by_type(kind)
                break
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if base is None:
            base = self.paths.by_type(query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        if "subfolder" in query:
            candidate = os.path.join(base, query["subfolder"])
            if not within(base, candidate):
                return web.Response(status=403)
            base = candidate
        filename = os.path.basename(filename)
        path = os.path.join(base, filename)
        if not os.path.isfile(path):
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        channel = query.get("channel", "rgba")
        if "preview" in query:
            with Image.open(path) as img:
                parts = query["preview"].split(";")
                fmt = parts[0]
                if fmt not in ("webp", "jpeg") or "a" in query.get("channel", ""):
                    fmt = "webp"
                quality = int(parts[-1]) if parts[-1].isdigit() else 90
                if fmt == "jpeg" or query.get("channel", "") == "rgb":
                    img = img.convert("RGB")
                buffer = BytesIO()
                img.save(buffer, format=fmt, quality=quality)
            return web.Response(body=buffer.getvalue(), content_type=f"image/{fmt}", headers=disposition)
        if channel == "rgb":
            with Image.open(path) as img:
                out = Image.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img.convert("RGB")
                buffer = BytesIO()
                out.save(buffer, format="PNG")
            return web.Response(body=buffer.getvalue(), content_type="image/png", headers=disposition)
        if channel == "a":
            with Image.open(path) as img:
                alpha = img.split()[3] if img.mode == "RGBA" else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size)
                out.putalpha(alpha)
                buffer = BytesIO()
                out.save(buffer, format="PNG")
            return web.Response(body=buffer.getvalue(), content_type="image/png", headers=disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        headers = {"X-Content-Type-Options": "nosniff", **disposition, "Content-Type": content_type}
        return web.FileResponse(path, headers=headers)

    async def view_metadata(self, request):
        return web.Response(status=404)

    async def system_stats(self, request):
        total, free = _memory()
        return web.json_response(
            {
                "system": {
                    "os": sys.platform,
                    "ram_total": total,
                    "ram_free": free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.48.7",
                    "installed_templates_version": "0.11.41",
                    "required_templates_version": "0.11.41",
                    "comfy_package_versions": [],
                    "python_version": sys.version,
                    "pytorch_version": "none (stand-in)",
                    "embedded_python": False,
                    "deploy_environment": "local-git",
                    "argv": sys.argv,
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": total,
                        "vram_free": free,
                        "torch_vram_total": total,
                        "torch_vram_free": free,
                    }
                ],
            }
        )

    async def features(self, request):
        return web.json_response(dict(SERVER_FEATURES))

    async def get_prompt(self, request):
        return web.json_response(self.queue_info())

    async def object_info(self, request):
        self.catalog.input_dir = self.paths.input
        return web.json_response(self.catalog.all_info())

    async def object_info_node(self, request):
        node_class = request.match_info["node_class"]
        self.catalog.input_dir = self.paths.input
        if node_class in self.catalog:
            return web.json_response({node_class: self.catalog.info(node_class)})
        return web.json_response({})

    async def get_history(self, request):
        max_items = request.rel_url.query.get("max_items")
        offset = request.rel_url.query.get("offset")
        return web.json_response(
            self.prompt_queue.get_history(
                max_items=int(max_items) if max_items is not None else None,
                offset=int(offset) if offset is not None else -1,
            )
        )

    async def get_history_item(self, request):
        return web.json_response(self.prompt_queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def post_history(self, request):
        data = await request.json()
        if data.get("clear"):
            self.prompt_queue.wipe_history()
        for prompt_id in data.get("delete", []):
            self.prompt_queue.delete_history(prompt_id)
        return web.Response(status=200)

    async def get_queue(self, request):
        running, pending = self.prompt_queue.snapshot()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request):
        data = await request.json()
        if data.get("clear"):
            self.prompt_queue.wipe()
        for prompt_id in data.get("delete", []):
            self.prompt_queue.delete(prompt_id)
        return web.Response(status=200)

    async def post_interrupt(self, request):
        try:
            data = await request.json()
        except json.JSONDecodeError:
            data = {}
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if prompt_id:
            if self.prompt_queue.is_running(prompt_id):
                log.info("Interrupting prompt %s", prompt_id)
                self.executor.interrupt.set()
            else:
                log.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
        else:
            log.info("Global interrupt (no prompt_id specified)")
            self.executor.interrupt.set()
        return web.Response(status=200)

    async def post_free(self, request):
        data = await request.json()
        unload = data.get("unload_models", False)
        free = data.get("free_memory", False)
        if unload:
            self.prompt_queue.set_flag("unload_models", unload)
        if free:
            self.prompt_queue.set_flag("free_memory", free)
        return web.Response(status=200)

    async def post_prompt(self, request):
        log.info("got prompt")
        data = await request.json()
        if "number" in data:
            number = float(data["number"])
        else:
            number = self.number
            if "front" in data and data["front"]:
                number = -number
            self.number += 1

        if "prompt" not in data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)

        prompt = data["prompt"]
        client_prompt_id = data.get("prompt_id")
        if client_prompt_id is None:
            prompt_id = str(uuid.uuid4())
        else:
            try:
                prompt_id = canonical_uuid(client_prompt_id)
            except (ValueError, AttributeError, TypeError):
                error = {
                    "type": "invalid_prompt_id",
                    "message": "prompt_id must be a valid UUID",
                    "details": "prompt_id must be a UUID string in canonical lowercase hyphenated form; "
                    "omit it to let the server generate one",
                    "extra_info": {},
                }
                return web.json_response({"error": error, "node_errors": {}}, status=400)

        extra_data = data.get("extra_data", {})
        self._validating = {ISOLATION_KEY: extra_data.get(ISOLATION_KEY)} if isinstance(extra_data, dict) else {}
        self.catalog.input_dir = self.paths.scoped(self._validating).input
        try:
            valid = self.validator.validate_prompt(prompt, data.get("partial_execution_targets"))
        finally:
            self._validating = {}
            self.catalog.input_dir = self.paths.input
        if "client_id" in data:
            extra_data["client_id"] = data["client_id"]
        if not valid[0]:
            log.warning("invalid prompt: %s", valid[1])
            return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
        sensitive = {}
        for key in ("auth_token_comfy_org", "api_key_comfy_org"):
            if key in extra_data:
                sensitive[key] = extra_data.pop(key)
        extra_data["create_time"] = int(time.time() * 1000)
        self.prompt_queue.put((number, prompt_id, prompt, extra_data, valid[2], sensitive))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid[3]})

    # jobs
    def _jobs(self) -> list[dict]:
        running, pending = self.prompt_queue.snapshot()
        history = self.prompt_queue.get_history()
        jobs = [_queue_job(item, "in_progress") for item in running]
        jobs += [_queue_job(item, "pending") for item in pending]
        jobs += [_history_job(pid, entry) for pid, entry in history.items()]
        return jobs

    async def get_jobs(self, request):
        query = request.rel_url.query
        statuses = None
        if query.get("status"):
            statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
            bad = [s for s in statuses if s not in JOB_STATUSES]
            if bad:
                return web.json_response(
                    {"error": f"Invalid status value(s): {', '.join(bad)}. Valid values: {', '.join(JOB_STATUSES)}"},
                    status=400,
                )
        sort_order = query.get("sort_order", "desc").lower()
        limit = None
        if "limit" in query:
            try:
                limit = int(query["limit"])
            except ValueError:
                return web.json_response({"error": "limit must be an integer"}, status=400)
            if limit <= 0:
                return web.json_response({"error": "limit must be a positive integer"}, status=400)
        try:
            offset = max(0, int(query.get("offset", 0)))
        except ValueError:
            return web.json_response({"error": "offset must be an integer"}, status=400)
        jobs = [j for j in self._jobs() if statuses is None or j["status"] in statuses]
        jobs.sort(key=lambda j: j.get("create_time") or 0, reverse=(sort_order == "desc"))
        total = len(jobs)
        page = jobs[offset:]
        if limit is not None:
            page = page[:limit]
        return web.json_response(
            {
                "jobs": page,
                "pagination": {
                    "offset": offset,
                    "limit": limit,
                    "total": total,
                    "has_more": offset + len(page) < total,
                },
            }
        )

    async def get_job(self, request):
        job_id = request.match_info["job_id"]
        history = self.prompt_queue.get_history(prompt_id=job_id)
        if job_id in history:
            return web.json_response(_history_job(job_id, history[job_id], full=True))
        running, pending = self.prompt_queue.snapshot()
        for items, status in ((running, "in_progress"), (pending, "pending")):
            for item in items:
                if item[1] == job_id:
                    return web.json_response(_queue_job(item, status))
        return web.json_response({"error": "Job not found"}, status=404)

    async def cancel_job(self, request):
        job_id = request.match_info["job_id"]
        if self.prompt_queue.interrupt_if_running(job_id, self.executor.interrupt):
            log.info("Cancelling running prompt %s", job_id)
            return web.json_response({"cancelled": True})
        if self.prompt_queue.delete(job_id):
            log.info("Cancelling pending prompt %s", job_id)
            return web.json_response({"cancelled": True})
        return web.json_response({"cancelled": False})


def _queue_job(item, status: str) -> dict:
    return {
        "id": item[1],
        "status": status,
        "priority": item[0],
        "create_time": item[3].get("create_time"),
        "outputs_count": 0,
        "previewable_outputs_count": 0,
    }


def _history_job(prompt_id: str, entry: dict, full: bool = False) -> dict:
    number, _, prompt, extra_data, _ = entry["prompt"]
    status = entry.get("status") or {}
    start = end = error = None
    interrupted = False
    for event, data in status.get("messages", []):
        if event == "execution_start":
            start = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if event == "execution_error":
                error = data
            interrupted = interrupted or event == "execution_interrupted"
    if status.get("status_str") == "error":
        state = "cancelled" if interrupted else "failed"
    else:
        state = "completed"
    outputs = entry.get("outputs", {})
    count, previewable, preview = 0, 0, None
    for node_id, node_out in outputs.items():
        for media, items in node_out.items():
            if media == "animated" or not isinstance(items, list):
                continue
            for item in items:
                count += 1
                if media in ("images", "video", "audio", "text") and (media == "text" or isinstance(item, dict)):
                    previewable += 1
                    if preview is None and isinstance(item, dict):
                        preview = {**item, "nodeId": node_id, "mediaType": media}
    job = {
        "id": prompt_id,
        "status": state,
        "priority": number,
        "create_time": extra_data.get("create_time"),
        "execution_start_time": start,
        "execution_end_time": end,
        "execution_error": error,
        "outputs_count": count,
        "previewable_outputs_count": previewable,
        "preview_output": preview,
    }
    job = {k: v for k, v in job.items() if v is not None}
    if full:
        job["outputs"] = outputs
        job["execution_status"] = status
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def _memory() -> tuple[int, int]:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemTotal", 0), info.get("MemAvailable", 0)
    except OSError:
        return 0, 0


def start_worker(server: StandinServer, stop: threading.Event) -> threading.Thread:
    from .engine import prompt_worker

    thread = threading.Thread(
        target=prompt_worker,
        args=(server.prompt_queue, server.executor, server, stop),
        name="prompt-worker",
        daemon=True,
    )
    thread.start()
    return thread
