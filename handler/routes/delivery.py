"""How a sync /predict answer leaves the service: its form, and how its bytes go out.

Contract:

* `negotiate(accept)` decides the form from the Accept header before anything runs:
  - JSON (no Accept, `*/*`, `application/json`): the files base64 in the body (`output.delivery:
    "inline"`, the default) or stored with links (`"url"`);
  - events (`text/event-stream`): progress, then the JSON answer as the last event (handler/routes/sse.py);
  - the raw file (Accept names a file type: `image/png`, `image/*`, `video/mp4`,
    `application/octet-stream`, …): the body is the one output file.
  An Accept that allows none of these is a 406 before any work is done.
* `respond` renders a finished run. A raw answer needs exactly one file output whose type the
  Accept allows (a still image is re-encoded when the Accept names another still format); with
  none or several, the answer is 406, or the JSON answer when the Accept also allows JSON.
  Whatever the outcome, the run's files are removed once the answer is on its way.
* Size: an answer over `HttpSettings.chunked_above_bytes` goes out without a Content-Length, i.e.
  chunked. Cloud Run refuses an HTTP/1 answer over 32 MiB that declares its length, and lets a
  chunked one through whatever its size.
* `url` delivery stores every file under `outputs/sync-<random>/` in the job store (Cloud Storage,
  or the local store that `/outputs/…` serves) and lists `uri` (gs://… or local://…) and `url`
  (signed HTTPS, or the service's own link for a local store) for each, as async results do.
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from handler.comfyui.outputs import FORMATS, STILL_IMAGES, OutputFile, OutputOptions, reencode, store_keys
from handler.config.http import HttpSettings
from handler.config.jobs import JobSettings
from handler.errors import BadRequest, NotAcceptable, StorageUnavailable
from handler.pipeline import PredictResult
from handler.storage import Store, link

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
# Below this size an answer goes out in one piece; above it, streamed (the client reads one file
# while the next is encoded), with its length up to `chunked_above_bytes`, chunked beyond.
STREAM_ABOVE_BYTES = 1024 * 1024
RAW_SLICE_BYTES = 4 * 1024 * 1024
# Raw answers carry ComfyUI's `outputs` in a header when it is this small (text outputs, refs).
MAX_OUTPUTS_HEADER = 8 * 1024
_JSON_RANGES = {JSON, "*/*", "application/*"}
_FILE_PREFIXES = ("image/", "video/", "audio/", "model/")
_STILL_FORMATS = {content_type: name for name, (_, content_type, _) in FORMATS.items()}


# The raw answer, for the OpenAPI document of /predict.
RAW_DESCRIPTION = (
    "With `Accept` naming a file type (image/png, image/webp, image/*, video/mp4, audio/*, "
    "application/octet-stream, …) and a workflow with exactly one file output, the body is that file (a still "
    "image is re-encoded to the still format asked for). Headers: Content-Disposition (its name), X-Prompt-Id, "
    "X-Output-Node, X-Output-Key, X-Output-Type, X-Output-Filename (URL-encoded, with its subfolder), "
    "Server-Timing (the timings), X-Outputs (ComfyUI's outputs as JSON, when under 8 KiB). With none or several "
    "files: 406, or the JSON answer when the Accept allows JSON too."
)


class AnswerForm(str, enum.Enum):
    """The form of a sync answer: the JSON document, the one output file, or Server-Sent Events."""

    JSON = "json"
    RAW = "raw"
    EVENTS = "events"


@dataclass(frozen=True)
class AcceptedAnswer:
    """What the caller accepts, from its Accept header."""

    form: AnswerForm
    file_types: tuple[str, ...] = ()  # RAW: the accepted file media ranges, in the caller's order
    json_ok: bool = True  # RAW: JSON is acceptable too, when the outputs do not fit one file

    def check(self, output: OutputOptions) -> None:
        """Refuse contradictions before the run."""
        if self.form is AnswerForm.RAW and output.delivery == "url":
            raise BadRequest(
                'output.delivery "url" and an Accept for the file itself contradict each other; '
                "send Accept: application/json for links"
            )


@dataclass(frozen=True, kw_only=True)
class DeliveryContext:
    """What sending an answer needs besides the run: the size limits (http), where `url`
    delivery stores files and for how long its links hold (jobs), and the service's base URL
    for links to a local store."""

    http: HttpSettings
    jobs: JobSettings
    store: Store
    base_url: str


def _media_ranges(accept: str) -> list[str]:
    ranges = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        refused = any(p.replace(" ", "").lower() in {"q=0", "q=0.0", "q=0.00", "q=0.000"} for p in params)
        if not refused:
            ranges.append(media.lower())
    return ranges


def _is_file_type(media: str) -> bool:
    return media.startswith(_FILE_PREFIXES) or media == "application/octet-stream"


def negotiate(accept: str | None) -> AcceptedAnswer:
    if not accept or not accept.strip():
        return AcceptedAnswer(AnswerForm.JSON)
    ranges = _media_ranges(accept)
    if EVENT_STREAM in ranges:
        return AcceptedAnswer(AnswerForm.EVENTS)
    json_ok = any(media in _JSON_RANGES for media in ranges)
    files = tuple(media for media in ranges if _is_file_type(media))
    if files:
        return AcceptedAnswer(AnswerForm.RAW, files, json_ok)
    if json_ok:
        return AcceptedAnswer(AnswerForm.JSON)
    raise NotAcceptable(
        "the answer can be application/json, text/event-stream, or the one output file "
        f"(image/png, image/*, video/mp4, application/octet-stream, …); Accept allows none of these: {accept[:200]!r}"
    )


def _accepts(media_range: str, content_type: str) -> bool:
    if media_range in ("application/octet-stream", content_type):
        return True
    return media_range.endswith("/*") and content_type.startswith(media_range[:-1])


def pick_file(files: list[OutputFile], accepted: AcceptedAnswer) -> OutputFile | None:
    """The one file of a raw answer, re-encoded if the Accept asks for another still format;
    None when the JSON answer should go instead; NotAcceptable when neither may."""
    if len(files) == 1:
        file = files[0]
        if any(_accepts(media, file.content_type) for media in accepted.file_types):
            return file
        target = next((media for media in accepted.file_types if media in _STILL_FORMATS), None)
        if target is not None and file.content_type in STILL_IMAGES and not file.animated:
            return reencode(file, OutputOptions(format=_STILL_FORMATS[target]))
        reason = f"its one file output is {file.content_type}, which the Accept header does not allow"
    else:
        shown = ", ".join(f"{f.filename} ({f.content_type}, node {f.node_id})" for f in files[:10])
        reason = (
            f"it produced {len(files)} files ({shown}); a raw answer carries exactly one"
            if files
            else "it produced no file output"
        )
    if accepted.json_ok:
        return None
    raise NotAcceptable(
        f"the workflow's answer cannot be sent as {', '.join(accepted.file_types)}: {reason}. "
        'Send Accept: application/json (base64), or output.delivery "url" for links'
    )


# --- rendering -------------------------------------------------------------------------------


def respond(
    result: PredictResult, output: OutputOptions, accepted: AcceptedAnswer, context: DeliveryContext
) -> Response:
    """The answer to a finished sync run; its files are removed once the answer is sent."""
    cleanup = BackgroundTask(result.cleanup) if result.cleanup else None
    try:
        file = pick_file(result.files, accepted) if accepted.form is AnswerForm.RAW else None
        if file is not None:
            return raw_response(result, file, context.http, cleanup)
        if output.delivery == "url":
            return JSONResponse(stored_document(result, context), background=cleanup)
    except BaseException:
        if result.cleanup:
            result.cleanup()
        raise
    length, parts = result.json_parts()
    return _sized(length, parts, JSON, {}, context.http, cleanup)


def document_bytes(result: PredictResult, output: OutputOptions, context: DeliveryContext) -> bytes:
    """The JSON answer as bytes (what an events stream ends with)."""
    if output.delivery == "url":
        return orjson.dumps(stored_document(result, context))
    return b"".join(result.json_parts()[1])


def _sized(
    length: int,
    parts: Iterator[bytes],
    media_type: str,
    headers: dict[str, str],
    http: HttpSettings,
    background: BackgroundTask | None,
) -> Response:
    if length <= STREAM_ABOVE_BYTES:
        return Response(b"".join(parts), media_type=media_type, headers=headers, background=background)
    if length <= http.chunked_above_bytes:
        return StreamingResponse(
            parts, media_type=media_type, background=background, headers={**headers, "Content-Length": str(length)}
        )
    # No Content-Length: uvicorn sends it chunked, which Cloud Run lets through at any size.
    return StreamingResponse(parts, media_type=media_type, headers=headers, background=background)


def _slices(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), RAW_SLICE_BYTES):
        yield bytes(view[start : start + RAW_SLICE_BYTES])


def _disposition(filename: str) -> str:
    if filename.isascii() and filename.isprintable() and not any(ch in filename for ch in '"\\'):
        return f'inline; filename="{filename}"'
    return f"inline; filename*=UTF-8''{quote(filename, safe='')}"


def raw_headers(result: PredictResult, file: OutputFile) -> dict[str, str]:
    """The answer's metadata, for a body that is the file itself."""
    headers = {
        "Content-Disposition": _disposition(file.filename),
        "X-Prompt-Id": result.prompt_id,
        "X-Output-Node": quote(file.node_id),  # graph keys may be any text; headers are latin-1
        "X-Output-Key": quote(file.output_key),
        "X-Output-Type": quote(file.type),
        "X-Output-Filename": quote(f"{file.subfolder}/{file.filename}" if file.subfolder else file.filename),
        "Server-Timing": ", ".join(f"{name.removesuffix('_ms')};dur={value}" for name, value in result.timings.items()),
    }
    outputs = json.dumps(result.outputs, separators=(",", ":"), ensure_ascii=True)
    if len(outputs) <= MAX_OUTPUTS_HEADER:
        headers["X-Outputs"] = outputs
    return headers


def raw_response(
    result: PredictResult, file: OutputFile, http: HttpSettings, background: BackgroundTask | None
) -> Response:
    return _sized(len(file.data), _slices(file.data), file.content_type, raw_headers(result, file), http, background)


def stored_document(result: PredictResult, context: DeliveryContext) -> dict[str, Any]:
    """Store every file and answer with links, like an async job's result."""
    started = time.monotonic()
    keys = store_keys(f"outputs/sync-{secrets.token_hex(16)}/", result.files)

    def put(pair: tuple[OutputFile, str]) -> None:
        context.store.put_bytes(pair[1], pair[0].data, pair[0].content_type)

    try:
        if len(keys) > 1:  # Cloud Storage uploads overlap; a local store barely notices
            with ThreadPoolExecutor(max_workers=min(8, len(keys)), thread_name_prefix="deliver") as pool:
                list(pool.map(put, zip(result.files, keys)))
        elif keys:
            put((result.files[0], keys[0]))
    except Exception as exc:
        raise StorageUnavailable(
            f"storing the outputs failed ({type(exc).__name__}); the run's files are gone, retry the request"
        ) from None
    images, unsigned = [], False
    ttl = context.jobs.signed_url_ttl_s
    for file, key in zip(result.files, keys):
        url = link(context.store, key, ttl, context.base_url)
        unsigned = unsigned or url is None
        images.append({**file.describe(), "uri": context.store.uri(key), "url": url})
    document: dict[str, Any] = {
        "status": "success",
        "prompt_id": result.prompt_id,
        "images": images,
        "outputs": result.outputs,
        "timings": {**result.timings, "store_ms": round((time.monotonic() - started) * 1000, 2)},
    }
    if unsigned:
        document["url_note"] = "these storage credentials cannot sign URLs; use the gs:// URIs"
    return document
