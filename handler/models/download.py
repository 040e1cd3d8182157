"""Streaming one model file from its URL into a part file, under the input URL rules.

`download(ref, part, urls=..., jobs=..., cloud=..., models=..., ...)` writes the bytes of `ref.url` to `part` and
returns their
sha256 and size. Every HTTP hop is vetted by urlguard (SSRF rules, URL_ALLOWLIST) and dialled to
the vetted address; a redirect is vetted again; HF_TOKEN goes to huggingface.co only, never to
the storage hosts it redirects to. A Civitai model (`ref.civitai`, refused unless CIVITAI_MODELS)
is fetched from CIVITAI_URL, with CIVITAI_TOKEN sent to that origin (scheme, host and port) only,
not to the storage its download redirects to. A dropped connection is resumed with `Range` from what was
written, and `If-Range` with the first response's validator where it gave one (a server that
ignores the range, or whose file changed, sends everything again and the part starts over).

`resume` (handler/models/partials.py) picks up a part file an earlier download left (a killed
process, a timeout, a cancel): its bytes are hashed again and the rest is asked for with `Range`
and `If-Range`; a 200 or 416 answer starts it over from zero. `record` is told the validator
and total of every response that starts the file from zero (None: nothing to resume it by), before
its first byte is written. The sha256 covers the whole file either way. `progress(done, total)` is
called after the headers and after every chunk (it must be cheap: handler/models/progress.py). The whole download is bounded by
`deadline` (time.monotonic()): a stalled or trickling server is cut there. A set `cancel` stops it
between chunks (errors.Cancelled).

`reserve(wanted, needed)` is asked before a byte is written, with the size the server announced
(0 when it did not say), and again whenever the bytes written pass what was granted, wanting room
ahead and needing the next chunk's; it returns what it granted, or raises to stop the download
(the cache's budget). `gs://bucket/object` is read with the service's
credentials from allowlisted buckets only, its size taken from the object's metadata first.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.config.models import ModelSettings
from handler.config.urls import UrlSettings
from handler.errors import BadRequest, Cancelled, ServiceError, StorageUnavailable, Timeout
from handler.models.partials import Resumable, validator_of
from handler.models.refs import HF_HOST, ModelRef, check_civitai
from handler.net import connpool, gcsinput, urlguard, watchdog

CHUNK = 1 << 20
RESUMES = 3  # dropped connections resumed per download
REDIRECTS = {301, 302, 303, 307, 308}

Reserve = Callable[[int, int], int]  # (bytes wanted, bytes needed at least) -> bytes granted


class ModelNotFound(BadRequest):
    """The model's URL answered that it has no such file."""

    code = "model_not_found"


class ModelFetchFailed(BadRequest):
    """The model's URL could not be read to the end (refused, broken, or not a file)."""

    code = "model_fetch_failed"


@dataclass(frozen=True, kw_only=True)
class Downloaded:
    sha256: str
    size: int
    resumed: int  # how many times a dropped connection was picked up again
    resumed_from: int = 0  # bytes an earlier download had left and this one kept


class _Dropped(Exception):
    """The connection ended before the announced length: worth resuming."""


class _Restart(Exception):
    """The server will not resume this part (416, or another validator): start over."""


Progress = Callable[[int, int | None], None]
Record = Callable[[Resumable | None], None]


class _Sink:
    """The part file and the digest of what it holds."""

    def __init__(self, out: BinaryIO, validator: str | None = None):
        self.out = out
        self.digest = hashlib.sha256()
        self.validator = validator  # of the response the bytes so far came from (If-Range)
        self.total: int | None = None
        self.kept = 0  # bytes an earlier download left, kept
        self.progress: Progress | None = None
        self.record: Record | None = None

    def rehash(self) -> int:
        """Digest what the file holds already and stand at its end; returns its size."""
        self.out.seek(0)
        while block := self.out.read(CHUNK):
            self.digest.update(block)
        self.kept = self.out.tell()
        return self.kept

    @property
    def size(self) -> int:
        return self.out.tell()

    def tell(self) -> int:  # what a client library's download may ask of the file it writes
        return self.out.tell()

    def write(self, chunk: bytes) -> None:
        try:
            self.out.write(chunk)
        except OSError as exc:  # a full disk is ours, not the caller's (and no network error)
            raise ServiceError(f"a model could not be stored: {exc.strerror}") from None
        self.digest.update(chunk)
        if self.progress is not None:
            self.progress(self.out.tell(), self.total)

    def restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.digest = hashlib.sha256()
        self.validator = None
        self.kept = 0


def download(
    ref: ModelRef,
    part: Path,
    *,
    urls: UrlSettings,
    jobs: JobSettings,
    cloud: CloudSettings,
    models: ModelSettings,
    reserve: Reserve,
    deadline: float,
    hf_token: str | None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
    resume: Resumable | None = None,
    record: Record | None = None,
) -> Downloaded:
    if ref.url.startswith("gs://"):
        return _download_gcs(
            ref, part, urls=urls, jobs=jobs, cloud=cloud, reserve=reserve, deadline=deadline, progress=progress
        )
    shown = urlguard.redact_url(ref.url)
    check_civitai(ref, models, f"model {shown}")
    resumed = 0
    with open(part, "r+b" if resume is not None and part.exists() else "w+b") as out:
        sink = _Sink(out, resume.validator if resume is not None else None)
        sink.progress, sink.record = progress, record
        kept = sink.rehash() if resume is not None else 0
        if resume is not None and resume.total is not None and kept >= resume.total:
            sink.restart()  # a part as long as the whole is not worth a range request
        while True:
            try:
                _stream(ref, sink, urls, cloud, models, reserve, deadline, hf_token, cancel)
                out.flush()
                return Downloaded(
                    sha256=sink.digest.hexdigest(), size=sink.size, resumed=resumed, resumed_from=sink.kept
                )
            except _Restart:
                sink.restart()
                if resumed >= RESUMES:
                    raise ModelFetchFailed(f"model {shown}: the server would not resume it") from None
                resumed += 1
            except _Dropped:
                if resumed >= RESUMES:
                    raise ModelFetchFailed(f"model {shown}: the connection dropped {resumed + 1} times") from None
                resumed += 1
            except (OSError, http.client.HTTPException) as exc:
                if time.monotonic() >= deadline:
                    raise Timeout(f"model {shown}: the download did not finish in time") from None
                raise ModelFetchFailed(f"model {shown}: {urlguard.describe_error(exc)}") from None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(scheme)


def _headers(
    url: str,
    offset: int,
    hf_token: str | None,
    validator: str | None = None,
    civitai: tuple[str, str | None] | None = None,
) -> dict[str, str]:
    """A request's headers; `civitai` is (CIVITAI_URL, CIVITAI_TOKEN) for a Civitai model."""
    headers = {"User-Agent": "comfyrun-models", "Accept-Encoding": "identity", "Accept": "*/*"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    if hf_token and (urlsplit(url).hostname or "").lower() == HF_HOST:
        headers["Authorization"] = f"Bearer {hf_token}"
    if civitai is not None and civitai[1] and _origin(url) == _origin(civitai[0]):
        headers["Authorization"] = f"Bearer {civitai[1]}"
    return headers


def _stream(
    ref: ModelRef,
    sink: _Sink,
    urls: UrlSettings,
    cloud: CloudSettings,
    models: ModelSettings,
    reserve: Reserve,
    deadline: float,
    hf_token: str | None,
    cancel: threading.Event | None,
) -> None:
    """One connection: append to the sink's end, or raise _Dropped when it ends early."""
    offset = sink.size
    shown = urlguard.redact_url(ref.url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Timeout(f"model {shown}: the download did not finish in time")
    opened: list[connpool.Connection] = []
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        for conn in list(opened):
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    alarm = watchdog.arm(remaining, cut)
    civitai = (models.civitai_url, models.civitai_token) if ref.civitai is not None else None
    try:
        url = ref.url if ref.civitai is None else models.civitai_url.rstrip("/") + ref.civitai
        for _hop in range(urlguard.MAX_REDIRECTS + 1):
            target = urlguard.vet(url, urls=urls, cloud=cloud, purpose="model URL")
            request = ("GET", target.path, None, _headers(url, offset, hf_token, sink.validator, civitai))
            conn, resp = connpool.send(
                target.scheme, target.host, target.port, target.addresses, request, remaining, opened
            )
            try:
                location = resp.getheader("Location")
                if resp.status in REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                _body(resp, ref, sink, offset, reserve, expired, cancel)
                return
            finally:
                conn.close()
        raise ModelFetchFailed(f"model {shown}: more than {urlguard.MAX_REDIRECTS} redirects")
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise Timeout(f"model {shown}: the download did not finish in time") from None
        raise
    finally:
        alarm.disarm()


def _body(
    resp: http.client.HTTPResponse,
    ref: ModelRef,
    sink: _Sink,
    offset: int,
    reserve: Reserve,
    expired: threading.Event,
    cancel: threading.Event | None,
) -> None:
    shown = urlguard.redact_url(ref.url)
    if resp.status in (404, 410):
        raise ModelNotFound(f"model {shown}: no such file (HTTP {resp.status})")
    if resp.status in (401, 403):
        hint = " (a Civitai model may need the operator's CIVITAI_TOKEN)" if ref.civitai is not None else ""
        raise ModelFetchFailed(f"model {shown}: access refused (HTTP {resp.status}){hint}")
    validator = validator_of(resp.getheader("ETag"), resp.getheader("Last-Modified"))
    if offset and resp.status == 416:  # the part is not a prefix of what it serves now
        raise _Restart
    if offset and resp.status == 200:  # the range was ignored, or the file changed (If-Range): start again
        sink.restart()
        offset = 0
    elif offset and resp.status == 206:
        match = re.match(r"bytes (\d+)-", resp.getheader("Content-Range") or "")
        if not match or int(match.group(1)) != offset:
            raise ModelFetchFailed(f"model {shown}: the server resumed at the wrong place")
        if sink.validator and validator and validator != sink.validator:
            raise _Restart  # a server that ignored If-Range but says the file changed
    elif resp.status != 200:
        raise ModelFetchFailed(f"model {shown}: HTTP {resp.status}")
    length = resp.getheader("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    total = offset + expected if expected is not None else None
    if not offset:  # a response from the first byte: what a later fetch may resume it by
        sink.validator = validator
        if sink.record is not None:
            sink.record(Resumable(validator=validator, total=total) if validator else None)
    granted = reserve(total or 0, total or 0)
    sink.total = total
    if sink.progress is not None:
        sink.progress(sink.size, total)
    while True:
        try:
            chunk = resp.read1(CHUNK) if not resp.isclosed() else b""
        except (OSError, http.client.HTTPException):
            if total is not None and not expired.is_set():
                raise _Dropped from None
            raise
        if expired.is_set():
            raise TimeoutError
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"model {shown}: the download was cancelled")
        if not chunk:
            break
        if sink.size + len(chunk) > granted:
            if total is not None:
                raise ModelFetchFailed(f"model {shown}: the server sent more than it announced")
            granted = reserve(sink.size + CHUNK * 64, sink.size + len(chunk))
        sink.write(chunk)
    if expired.is_set():
        raise TimeoutError
    if total is not None and sink.size < total:
        raise _Dropped


def _download_gcs(
    ref: ModelRef,
    part: Path,
    *,
    urls: UrlSettings,
    jobs: JobSettings,
    cloud: CloudSettings,
    reserve: Reserve,
    deadline: float,
    progress: Progress | None = None,
) -> Downloaded:
    obj = gcsinput.check_gcs_uri(ref.url, urls=urls, purpose="model URL")
    from google.api_core import exceptions as gexc

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Timeout(f"model {obj.uri[:200]}: the download did not finish in time")
    try:
        blob = gcsinput.client(jobs=jobs, cloud=cloud).bucket(obj.bucket).get_blob(obj.name, timeout=remaining)
        if blob is None:
            raise ModelNotFound(f"model {obj.uri[:200]}: no such object")
        size = int(blob.size or 0)
        reserve(size, size)
        with open(part, "w+b") as out:
            sink = _Sink(out)  # hashed and metered as it streams, like an https download
            sink.total, sink.progress = size, progress
            if size:
                blob.download_to_file(sink, start=0, end=size - 1, raw_download=True, timeout=remaining)
            read = sink.size
    except (gexc.NotFound, gexc.Forbidden, gexc.Unauthorized):
        raise ModelNotFound(f"model {obj.uri[:200]}: no such object, or the service may not read it") from None
    except ServiceError:
        raise
    except Exception as exc:
        if time.monotonic() >= deadline:
            raise Timeout(f"model {obj.uri[:200]}: the download did not finish in time") from None
        raise StorageUnavailable(
            f"model {obj.uri[:200]}: Cloud Storage did not answer ({type(exc).__name__})"
        ) from None
    if read != size:
        raise ModelFetchFailed(f"model {obj.uri[:200]}: read {read} of {size} bytes")
    return Downloaded(sha256=sink.digest.hexdigest(), size=size, resumed=0)
