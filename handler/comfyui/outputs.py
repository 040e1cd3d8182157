"""Outputs: every kind ComfyUI reports, read from its folders, optionally re-encoded.

ComfyUI reports outputs per node in `executed` events: lists of file references under keys such
as `images`, `gifs`, `audio`, `video`, `latents`, text under `text`, and images pushed over the
websocket by SaveImageWebsocket. Files are read from disk (the HTTP round trip through `/view`
only when ComfyUI runs elsewhere).
"""

from __future__ import annotations

import io
import logging
import mimetypes
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from handler.comfyui.client import BinaryImage, ComfyClient
from handler.errors import BadRequest, OutputMissing, ServiceError

log = logging.getLogger("handler.comfyui.outputs")

EXTRA_TYPES = {
    ".latent": "application/octet-stream",
    ".webp": "image/webp",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".glb": "model/gltf-binary",
    ".safetensors": "application/octet-stream",
}
FORMATS = {
    "png": ("PNG", "image/png", ".png"),
    "jpeg": ("JPEG", "image/jpeg", ".jpg"),
    "webp": ("WEBP", "image/webp", ".webp"),
}
STILL_IMAGES = {"image/png", "image/jpeg", "image/webp"}
# The most pixels a side each encoder takes (libwebp: 16383; libjpeg: 65500); PNG has no limit here.
MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}
# How a sync answer carries the files: base64 in the JSON, or stored with links (handler/routes/delivery.py).
DELIVERIES = ("inline", "url")


@dataclass(frozen=True)
class OutputOptions:
    format: str | None = None  # None keeps what ComfyUI wrote
    quality: int = 90
    delivery: str = "inline"  # one of DELIVERIES; async jobs always store their outputs

    @classmethod
    def parse(cls, raw: Any) -> OutputOptions:
        if raw is None:
            return cls()
        if isinstance(raw, str):
            raw = {"format": raw}
        if not isinstance(raw, dict):
            raise BadRequest('output must be an object like {"format": "webp", "quality": 90}')
        fmt = raw.get("format")
        if fmt is not None:
            fmt = str(fmt).lower().replace("jpg", "jpeg")
            if fmt not in FORMATS:
                raise BadRequest(f"output.format must be one of png, jpeg, webp; got {raw.get('format')!r}")
        quality = raw.get("quality", 90)
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise BadRequest("output.quality must be an integer from 1 to 100")
        delivery = raw.get("delivery", "inline")
        if delivery not in DELIVERIES:
            raise BadRequest(
                f"output.delivery must be one of {', '.join(DELIVERIES)}; got {delivery!r} "
                "(for the file itself, send an Accept header such as image/png)"
            )
        return cls(fmt, quality, delivery)


@dataclass
class OutputFile:
    node_id: str
    filename: str
    subfolder: str
    type: str  # output | temp | input | websocket
    output_key: str  # the key ComfyUI reported it under: images, gifs, audio, latents, …
    content_type: str
    data: bytes
    animated: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "subfolder": self.subfolder,
            "type": self.type,
            "node_id": self.node_id,
            "output_key": self.output_key,
            "content_type": self.content_type,
            "size": len(self.data),
        }


def store_keys(prefix: str, files: list[OutputFile]) -> list[str]:
    """A store key under `prefix` for each file: its subfolder and name, unless two nodes wrote
    the same name (then node id and a number tell them apart)."""
    keys: list[str] = []
    for file in files:
        key, n = prefix + (f"{file.subfolder}/{file.filename}" if file.subfolder else file.filename), 1
        while key in keys:
            n += 1
            key = f"{prefix}{file.node_id}-{n}-{file.filename}"
        keys.append(key)
    return keys


def content_type_of(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return EXTRA_TYPES.get(suffix) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def file_refs(outputs: dict[str, dict[str, Any]]) -> Iterable[tuple[str, str, dict[str, Any], bool]]:
    """(node_id, key, ref, animated) for every file reference in ComfyUI's outputs."""
    for node_id, output in outputs.items():
        animated = any(bool(flag) for flag in output.get("animated") or [] if isinstance(flag, bool))
        for key, items in output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    yield node_id, key, item, animated


def in_request_folder(outputs: dict[str, dict[str, Any]], request_id: str) -> None:
    """With the isolation extension, ComfyUI names files relative to the request's folders:
    make each reference relative to ComfyUI's own folders again, as without it."""
    for _, _, ref, _ in file_refs(outputs):
        subfolder = ref.get("subfolder") or ""
        if isinstance(subfolder, str):  # anything else names no file (`is_own_file`)
            ref["subfolder"] = f"{request_id}/{subfolder}" if subfolder else request_id


FILE_TYPES = frozenset({"output", "temp", "input"})


def is_own_file(ref: dict[str, Any], request_id: str) -> bool:
    """Whether a file reference in ComfyUI's outputs names a file of this run: inside the
    request's folder (`<type>/<request folder>/...`, as `in_request_folder` made it relative),
    nothing that leaves it. A node may echo a caller's value into its ui (Preview3D's
    `camera_info`): a dict there with a `filename` is no file of the run unless it lies there.
    Without the isolation extension some previews (MaskPreview) land at the temp folder's root
    under a guessable name that cannot be told from another request's: they are no file of the
    run either."""
    filename, subfolder = ref.get("filename"), ref.get("subfolder") or ""
    if not isinstance(filename, str) or not isinstance(subfolder, str) or ref.get("type", "output") not in FILE_TYPES:
        return False
    if not filename or "\\" in filename + subfolder or "\x00" in filename + subfolder or subfolder.startswith("/"):
        return False
    parts = [part for part in f"{subfolder}/{filename}".split("/") if part not in ("", ".")]
    if ".." in parts or not parts:
        return False
    return parts[0] == request_id and len(parts) > 1


def drop_foreign_files(outputs: dict[str, dict[str, Any]], request_id: str) -> int:
    """Take out of `outputs`, in place, the file references that name no file of this run (see
    `is_own_file`): they are neither read nor removed. Returns how many."""
    dropped = 0
    for output in outputs.values():
        for key, items in output.items():
            if isinstance(items, list):
                kept = [
                    item
                    for item in items
                    if not (isinstance(item, dict) and isinstance(item.get("filename"), str))
                    or is_own_file(item, request_id)
                ]
                dropped += len(items) - len(kept)
                output[key] = kept
    return dropped


class OutputSource(Protocol):
    def read(self, ref: dict[str, Any]) -> bytes: ...

    def discard(self, request_id: str, refs: list[dict[str, Any]]) -> None: ...


class FolderOutputs:
    def __init__(self, folders: dict[str, Path]):
        self.folders = {kind: path.resolve() for kind, path in folders.items()}

    def path_of(self, ref: dict[str, Any]) -> Path:
        base: Path | None = self.folders.get(ref.get("type") or "output")
        if base is None:
            raise ServiceError(f"ComfyUI reported an output of unknown type {ref.get('type')!r}")
        # Lexically: ComfyUI names files inside folders this service owns, so `..` is the only way
        # out (resolving symlinks cost a stat per path component, twice per file).
        path = Path(os.path.normpath(os.path.join(base, str(ref.get("subfolder") or ""), str(ref["filename"]))))
        if not path.is_relative_to(base) or path == base:
            raise ServiceError("ComfyUI reported an output outside its folders")
        return path

    def read(self, ref: dict[str, Any]) -> bytes:
        path = self.path_of(ref)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise OutputMissing(f"ComfyUI reported {ref['filename']!r} but the file is missing") from None

    def discard(self, request_id: str, refs: list[dict[str, Any]]) -> None:
        for ref in refs:
            try:
                self.path_of(ref).unlink(missing_ok=True)
            except (ServiceError, OSError):
                pass
        for kind in ("output", "temp"):
            if kind in self.folders:
                folder = self.folders[kind] / request_id
                try:
                    folder.rmdir()  # empty once its files are gone: one call, not a tree walk
                except FileNotFoundError:
                    pass
                except OSError:
                    shutil.rmtree(folder, ignore_errors=True)


class ViewOutputs:
    """ComfyUI runs elsewhere: fetch outputs through /view. Where it runs the isolation
    extension (`isolated()`), the inputs' discard removes the request's folders, outputs
    included; elsewhere each of the run's files is emptied in place (ComfyUI's API deletes
    nothing: the name stays, its bytes go)."""

    def __init__(self, client: ComfyClient, *, isolated: Callable[[], bool]):
        self.client = client
        self.isolated = isolated

    def read(self, ref: dict[str, Any]) -> bytes:
        params = {
            "filename": ref["filename"],
            "subfolder": ref.get("subfolder") or "",
            "type": ref.get("type") or "output",
        }
        response = self.client.http.get(f"{self.client.base_url}/view", params=params, timeout=120)
        if response.status_code == 404:
            raise OutputMissing(f"ComfyUI reported {ref['filename']!r} but /view has no such file")
        if response.status_code != 200:
            raise ServiceError(f"ComfyUI reported {ref['filename']!r} but /view answered {response.status_code}")
        content: bytes = response.content
        return content

    def discard(self, request_id: str, refs: list[dict[str, Any]]) -> None:
        """`refs`: the run's own files (`is_own_file`), never another's."""
        if self.isolated():
            return
        try:
            for ref in refs:
                kind, subfolder = str(ref.get("type") or "output"), str(ref.get("subfolder") or "")
                if not self.client.empty_file(kind, subfolder, str(ref["filename"])):
                    log.warning("ComfyUI did not empty an output of a finished request")
        except ServiceError as exc:
            log.warning("could not empty a request's outputs on ComfyUI: %s", exc.message)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"iTXt"})


def without_folder_name(file: OutputFile, folder: str) -> bytes:
    """The file's bytes without the request folder's name (ComfyUI writes the graph it ran, the
    prefixes this service rewrote included, into each output's metadata). PNG: `folder/` taken out
    of its text chunks. Any other format (WebP EXIF, a latent's safetensors header, audio and video
    tags): the name overwritten in place, keeping every length and offset, `folder/` by `./` pairs
    (the same path) and a bare name by underscores."""
    data = file.data
    secret = folder.encode("ascii")
    if secret not in data:
        return data
    if not data.startswith(PNG_SIGNATURE):
        return data.replace(secret + b"/", (b"./" * len(secret))[: len(secret) + 1]).replace(secret, b"_" * len(secret))
    parts, offset = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            return data  # not a PNG this function understands: left as ComfyUI wrote it
        body = data[offset + 8 : offset + 8 + length]
        if kind in PNG_TEXT_CHUNKS and secret in body:
            body = body.replace(secret + b"/", b"").replace(secret, b"")
            parts.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        else:
            parts.append(data[offset:end])
        offset = end
    parts.append(data[offset:])
    return b"".join(parts)


def reencode(file: OutputFile, options: OutputOptions) -> OutputFile:
    if options.format is None or file.animated or file.content_type not in STILL_IMAGES:
        return file
    pil_format, content_type, suffix = FORMATS[options.format]
    if content_type == file.content_type and options.format == "png":
        return file
    from PIL import Image

    with Image.open(io.BytesIO(file.data)) as opened:
        image: Image.Image = opened
        limit = MAX_SIDE.get(pil_format)
        if limit is not None and max(image.size) > limit:
            raise BadRequest(
                f"output.format {options.format} takes at most {limit} pixels a side; "
                f"{file.filename} is {image.size[0]} × {image.size[1]}: ask for png, or leave output.format out"
            )
        if pil_format == "JPEG" and image.mode not in {"RGB", "L"}:
            image = image.convert("RGB")
        buffer = io.BytesIO()
        extra = {"quality": options.quality} if pil_format in {"JPEG", "WEBP"} else {}
        try:
            image.save(buffer, pil_format, **extra)
        except (OSError, ValueError) as exc:  # what else the encoder refuses about this image
            raise BadRequest(f"output.format {options.format} cannot encode {file.filename}: {exc}") from None
    file.data = buffer.getvalue()
    file.content_type = content_type
    file.filename = str(Path(file.filename).with_suffix(suffix))
    return file


def collect(
    outputs: dict[str, dict[str, Any]],
    binary_images: list[BinaryImage],
    source: OutputSource,
    options: OutputOptions,
) -> list[OutputFile]:
    files: list[OutputFile] = []
    for node_id, key, ref, animated in file_refs(outputs):
        data = source.read(ref)
        files.append(
            OutputFile(
                node_id=node_id,
                filename=ref["filename"],
                subfolder=ref.get("subfolder") or "",
                type=ref.get("type") or "output",
                output_key=key,
                content_type=content_type_of(ref["filename"]),
                data=data,
                animated=animated,
            )
        )
    counters: dict[str, int] = {}
    for image in binary_images:
        node_id = image.node_id or "?"
        counters[node_id] = counters.get(node_id, 0) + 1
        suffix = mimetypes.guess_extension(image.content_type) or ".bin"
        files.append(
            OutputFile(
                node_id=node_id,
                filename=f"ws_{node_id}_{counters[node_id]:05d}{suffix}",
                subfolder="",
                type="websocket",
                output_key="images",
                content_type=image.content_type,
                data=image.data,
            )
        )
    return [reencode(file, options) for file in files]
