"""Sync /predict as Server-Sent Events (`Accept: text/event-stream`).

Contract: the answer is `200 text/event-stream`, sent chunked (so no size limit applies), made of
the run's progress events (handler/comfyui/progress.py: `download` while its models named by URL
download, then `queued`, `started`, `progress`, `executed`, `preview` when the body says
`"previews": true`), then exactly one of

* `result`: data is exactly the JSON a plain call answers (inline base64 or `url` links);
* `error`: data is `{"status_code": …, "body": …}`, the status and error body a plain call
  would have answered (plus `retry_after_s` where a plain call sends Retry-After).

Each event is `event: <kind>` and one `data:` line of JSON; a comment line (`: keep-alive`)
goes out every HEARTBEAT_S while nothing else does, so idle proxies keep the connection. Errors
found before the run starts (a bad body, ComfyUI not ready) are plain HTTP errors instead.
A client that disconnects mid-stream gets its prompt interrupted and its files removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse

from handler.comfyui.progress import ProgressEvent
from handler.errors import ComfyUnavailable, ServiceError
from handler.pipeline import Pipeline
from handler.predict_request import PredictRequest
from handler.routes.delivery import DeliveryContext, document_bytes
from handler.runtime import Runtime, Trigger

log = logging.getLogger("handler.routes.sse")

HEARTBEAT_S = 15.0
_tasks: set[asyncio.Future[Any]] = set()  # runs whose stream went away still finish
_ACCEPTED = object()  # `prepare` passed: the stream starts


# These events, for the OpenAPI document of /predict.
EVENTS_DESCRIPTION = (
    "With `Accept: text/event-stream` the answer is a stream of events, sent chunked (no size limit): "
    "`download` {stage, file, folder, source, bytes_done, bytes_total, percent, model, models} while models named "
    "by URL download (at most one every 0.5 s), `queued` {prompt_id, position}, `started` {prompt_id}, `progress` {node, class_type, step, max, percent} as "
    "ComfyUI reports it, `executed` {node, class_type, output} per output node, `preview` {node, class_type, "
    'content_type, image} when the body says `"previews": true`, then `result` (exactly the JSON of a plain '
    "call) or `error` {status_code, body} (the status and error body of a plain call). A comment line is sent "
    "every 15 s while nothing else is. Errors before the run starts (a bad body, not ready) are plain HTTP "
    "errors. A client that disconnects has its prompt interrupted."
)


def frame(kind: str, data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_frame(exc: ServiceError) -> bytes:
    data: dict[str, Any] = {"status_code": exc.status_code, "body": exc.to_dict()}
    if isinstance(exc, ComfyUnavailable):
        data["retry_after_s"] = exc.retry_after_s
    return frame("error", data)


async def stream(
    prepare: Callable[[], PredictRequest],
    pipeline: Pipeline,
    runtime: Runtime,
    context: DeliveryContext,
    ended: Callable[[], None] | None = None,
) -> StreamingResponse:
    """`prepare` (parse the body, check readiness) runs in the same worker thread as the run, and
    what it raises is raised here, before the stream starts: a plain HTTP error. `ended` is
    called once the answer is over (sent or cut off), not when `prepare` raised."""
    loop = asyncio.get_running_loop()
    # Frames; None at the end; first, _ACCEPTED or what `prepare` raised.
    queue: asyncio.Queue[bytes | object | None] = asyncio.Queue()
    cancel = Trigger()

    def put(item: bytes | object | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening
            pass

    def sink(event: ProgressEvent) -> None:
        put(frame(event.kind.value, event.data))

    def work() -> None:
        try:
            request = prepare()
        except BaseException as exc:
            put(exc)
            return
        put(_ACCEPTED)
        try:
            result = pipeline.run(request, cancel=cancel, progress=sink)
            # Rendered here, off the event loop; the files are already removed by then.
            put(b"event: result\ndata: " + document_bytes(result, request.output, context) + b"\n\n")
        except ServiceError as exc:
            put(error_frame(exc))
        except Exception:
            log.exception("a streamed run failed unexpectedly")
            put(error_frame(ServiceError("internal error")))
        put(None)

    # One thread hop for everything (the run's own), as a plain call has.
    task = asyncio.ensure_future(runtime.run_long(work))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    first = await queue.get()
    if isinstance(first, BaseException):
        raise first

    finished = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(HEARTBEAT_S):
                    item = await queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                finished.set()
                return
            assert isinstance(item, bytes)
            yield item

    def closed() -> None:
        if not finished.is_set():
            cancel.set()  # the caller went away: interrupt the prompt (the pipeline removes its files)
        if ended is not None:
            ended()

    return _EventStream(events(), closed)


class _EventStream(StreamingResponse):
    """Calls `closed` however the answer ends: sent, or cut off by a disconnect at any point (even
    before the first event, where the events' own generator would never have started)."""

    def __init__(self, events: AsyncIterator[bytes], closed: Callable[[], None]):
        super().__init__(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.closed = closed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.closed()
