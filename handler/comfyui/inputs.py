"""Input images: decoded, fetched or checked, then put where ComfyUI's loaders find them.

Each request gets its own subfolder of ComfyUI's input folder, so two requests that both send
`in.png` never see each other's file. With the isolation extension that subfolder is the prompt's
whole input folder and names stay as sent; without it, the workflow's references to an image
name are rewritten to `<request folder>/<name>`. The folder name is a secret
(`predict_request.new_folder_name`).
Names are checked before anything is written: a name that could leave the folder, is too long
for a file system, or is both a file and another name's folder is a 400, not an OSError.
An image whose header declares more than MAX_INPUT_PIXELS (width × height of one frame) is a
413 before anything decodes it: inline ones when the request is parsed, fetched ones when they
arrive. Files Pillow does not take for an image (audio, video) are not judged by it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import logging
import re
import shutil
import struct
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.config.urls import UrlSettings

if TYPE_CHECKING:
    from handler.comfyui.client import ComfyClient
from handler.errors import BadRequest, PayloadTooLarge, ServiceError, Timeout

log = logging.getLogger("handler.comfyui.inputs")

_DATA_URI = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_FORBIDDEN = set('\\:*?"<>|\0')
# Writing a name fails this way only because of the names the caller chose.
_CALLERS_FAULT = {errno.ENAMETOOLONG, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.EILSEQ}


@dataclass(frozen=True)
class InputImage:
    name: str
    data: bytes | None = None  # decoded bytes, or
    url: str | None = None  # a URL (https://, or gs:// read with our credentials) fetched when the job runs


def check_name(name: Any, where: str) -> str:
    """A relative file name such as `in.png` or `masks/in.png`; nothing that could leave the folder."""
    if not isinstance(name, str) or not name.strip():
        raise BadRequest(f"{where}.name must be a non-empty string")
    parts = name.split("/")
    for part in parts:
        if not part or part.startswith(".") or any(ch in _FORBIDDEN for ch in part):
            raise BadRequest(
                f"{where}.name {name!r} is not allowed: use a relative name like 'in.png' or 'masks/in.png', "
                "without '..', hidden names or backslashes"
            )
    try:
        encoded = [part.encode("utf-8") for part in parts]
    except UnicodeEncodeError:  # a lone surrogate, which JSON allows and no file system takes
        raise BadRequest(f"{where}.name is not valid UTF-8") from None
    # File systems take 255 bytes per name; the request's folder comes in front of the whole.
    if len(name) > 200 or len(parts) > 4 or any(len(part) > 200 for part in encoded):
        raise BadRequest(f"{where}.name {name!r} is too long: at most 4 folders and 200 bytes per name")
    return name


def decode_base64(value: str, where: str, max_bytes: int) -> bytes:
    text = _DATA_URI.sub("", value.strip(), count=1)
    if len(text) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"{where} is larger than {max_bytes} bytes")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is neither valid base64, a data URI, nor an http(s) URL") from None


def check_pixels(data: bytes, where: str, max_pixels: int) -> None:
    """413 when `data`'s image header declares more than `max_pixels`; only the header is read."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: judged below
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Image.DecompressionBombError:
            width = height = max_pixels + 1  # Pillow refused to even open it: over any sane limit
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
            return  # not an image Pillow knows: ComfyUI's loaders say what they make of it
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{where} declares {width} × {height} = {width * height} pixels; "
            f"at most {max_pixels} are accepted (MAX_INPUT_PIXELS)"
        )


def parse_images(raw: Any, *, urls: UrlSettings, cloud: CloudSettings) -> list[InputImage]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("images must be a list of {name, image} objects")
    images: list[InputImage] = []
    seen: set[str] = set()
    folders: set[str] = set()  # every folder the names imply
    for index, item in enumerate(raw):
        where = f"images[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object with name and image")
        name = check_name(item.get("name"), where)
        if name in seen:
            raise BadRequest(f"{where}.name {name!r} is used twice")
        seen.add(name)
        folders.update("/".join(name.split("/")[:end]) for end in range(1, name.count("/") + 1))
        value = item.get("image", item.get("url"))
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{where}.image must be a base64 string, a data URI, an http(s) URL or a gs:// URI")
        if value.startswith(("http://", "https://")):
            from handler.net.urlguard import check_url

            check_url(value, urls=urls, cloud=cloud, purpose="input image")
            images.append(InputImage(name, url=value))
        elif value.startswith("gs://"):
            from handler.net.gcsinput import check_gcs_uri

            check_gcs_uri(value, urls=urls, purpose=f"{where}.image")  # allowlisted buckets only
            images.append(InputImage(name, url=value))
        else:
            data = decode_base64(value, f"{where}.image", urls.max_input_bytes)
            check_pixels(data, f"{where}.image", urls.max_input_pixels)
            images.append(InputImage(name, data=data))
    clash = sorted(seen & folders)
    if clash:
        raise BadRequest(f"image name {clash[0]!r} is both a file and a folder of another image's name")
    return images


def rewrite_references(graph: dict[str, Any], renames: dict[str, str]) -> None:
    """Point every input that names an uploaded image at its per-request path."""
    if not renames:
        return
    for node in graph.values():
        inputs = node.get("inputs") or {}
        for key, value in inputs.items():
            if isinstance(value, str) and value in renames:
                inputs[key] = renames[value]


class InputSink(Protocol):
    def stage(self, request_id: str, images: list[InputImage], deadline: float | None = None) -> dict[str, str]: ...

    def discard(self, request_id: str) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Sources:
    """The sections an input image is fetched with: URL rules and limits, the GCS client's."""

    urls: UrlSettings
    jobs: JobSettings
    cloud: CloudSettings


def _materialise(image: InputImage, sources: Sources, deadline: float | None) -> bytes:
    """The image's bytes; a URL is fetched within the request's deadline (time.monotonic())."""
    urls, jobs, cloud = sources.urls, sources.jobs, sources.cloud
    if image.data is not None:
        return image.data
    from handler.net.urlguard import FetchFailed, fetch_bytes

    assert image.url is not None

    timeout_s = urls.url_fetch_timeout_s
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"the request's timeout ran out before the input image {image.name!r} was fetched")
        timeout_s = min(timeout_s, remaining)
    try:
        if image.url.startswith("gs://"):
            from handler.net.gcsinput import read_gcs

            data = read_gcs(
                image.url,
                urls=urls,
                jobs=jobs,
                cloud=cloud,
                max_bytes=urls.max_input_bytes,
                timeout_s=timeout_s,
            )
        else:
            data = fetch_bytes(
                image.url,
                urls=urls,
                cloud=cloud,
                max_bytes=urls.max_input_bytes,
                timeout_s=timeout_s,
            )
        check_pixels(data, f"the input image {image.name!r}", urls.max_input_pixels)
        return data
    except FetchFailed:
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(f"the request's timeout ran out while fetching the input image {image.name!r}") from None
        raise


class FolderInputs:
    """ComfyUI's input folder is on this machine: write files straight into it."""

    def __init__(self, folder: Path, *, sources: Sources):
        self.folder = folder
        self.sources = sources

    def stage(self, request_id: str, images: list[InputImage], deadline: float | None = None) -> dict[str, str]:
        if not images:
            return {}
        target = self.folder / request_id
        target.mkdir(parents=True, exist_ok=True)
        renames = {}
        for image in images:
            data = _materialise(image, self.sources, deadline)
            path = target / image.name
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except OSError as exc:  # the message names no path of ours
                if exc.errno in _CALLERS_FAULT:
                    raise BadRequest(f"the input image {image.name!r} cannot be stored: {exc.strerror}") from None
                raise ServiceError(f"could not store the input image {image.name!r}: {exc.strerror}") from None
            renames[image.name] = f"{request_id}/{image.name}"
        return renames

    def discard(self, request_id: str) -> None:
        shutil.rmtree(self.folder / request_id, ignore_errors=True)


class UploadedInputs:
    """ComfyUI runs elsewhere: upload through its API. ComfyUI's API deletes nothing: where it
    runs the isolation extension (`isolated()`), that removes the request's folders; elsewhere
    each uploaded file is emptied in place (its name stays, its bytes go)."""

    def __init__(self, client: ComfyClient, *, sources: Sources, isolated: Callable[[], bool]):
        self.client = client
        self.sources = sources
        self.isolated = isolated
        self._uploaded: dict[str, list[tuple[str, str]]] = {}  # by request folder: (subfolder, name)
        self._lock = threading.Lock()

    def stage(self, request_id: str, images: list[InputImage], deadline: float | None = None) -> dict[str, str]:
        renames = {}
        for image in images:
            folder, _, filename = image.name.rpartition("/")
            subfolder = f"{request_id}/{folder}" if folder else request_id
            response = self.client.http.post(
                f"{self.client.base_url}/upload/image",
                files={"image": (filename, _materialise(image, self.sources, deadline))},
                data={"subfolder": subfolder, "type": "input", "overwrite": "true"},
                timeout=60,
            )
            if response.status_code != 200:
                raise ServiceError(f"ComfyUI refused the input image {image.name!r} ({response.status_code})")
            stored = response.json()
            place = (str(stored.get("subfolder") or subfolder), str(stored.get("name") or filename))
            with self._lock:
                self._uploaded.setdefault(request_id, []).append(place)
            renames[image.name] = "/".join(place)
        return renames

    def discard(self, request_id: str) -> None:
        """With the extension: the request's folders under ComfyUI's input, output and temp,
        outputs included. Without: its uploaded files, emptied (outputs: `ViewOutputs`)."""
        with self._lock:
            uploaded = self._uploaded.pop(request_id, [])
        try:
            if self.isolated():
                self.client.remove_folder(request_id)
                return
            for subfolder, name in uploaded:
                if not self.client.empty_file("input", subfolder, name):
                    log.warning("ComfyUI did not empty an uploaded input of a finished request")
        except ServiceError as exc:
            log.warning("could not remove a request's files from ComfyUI: %s", exc.message)
