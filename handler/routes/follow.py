"""An async job followed live: `GET /status/{job_id}` with `Accept: text/event-stream`.

Contract: `200 text/event-stream`, a `status` event whose data is exactly the JSON a plain
`GET /status/{job_id}` answers, first at once, then each time that document changes (state,
progress, webhook delivery), and the stream ends after the event that shows the job final. A
comment line goes out every `sse.HEARTBEAT_S` while nothing changes. What a plain call refuses
(no such job, another caller's: 404) is refused the same way, before the stream starts.

The job is read from the store every POLL_S, as a plain poll would read it, so any instance can
serve the stream whichever instance runs the job; a client that goes away ends the reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from handler.jobs import JobState
from handler.routes.delivery import EVENT_STREAM
from handler.routes.sse import HEARTBEAT_S

log = logging.getLogger("handler.routes.follow")

POLL_S = 0.5
STATUS = b"event: status\ndata: "  # then the document's JSON: `sse.frame`'s shape, serialised once
FINAL_STATES = frozenset(state.value for state in JobState if state.final)

EVENTS_DESCRIPTION = (
    "With `Accept: text/event-stream`: a stream of `status` events, each exactly the JSON of a plain call, "
    f"the first at once and then one each time it changes (read every {POLL_S:g} s), ending after the one "
    f"that shows the job final; a comment line every {HEARTBEAT_S:g} s while nothing changes. No such job "
    "(or another caller's) is a plain 404 before any stream."
)


async def stream(read: Callable[[], dict[str, Any]]) -> StreamingResponse:
    """`read`: the job's status document, as a plain call answers it (blocking: the store).
    Its errors before the first event are the route's own; a later one ends the stream quietly
    (a client polls or follows again: the job is in the store either way)."""
    first = await run_in_threadpool(read)

    async def events() -> AsyncIterator[bytes]:
        view, sent = first, orjson.dumps(first)
        yield STATUS + sent + b"\n\n"
        quiet_since = time.monotonic()
        while view.get("state") not in FINAL_STATES:
            await asyncio.sleep(POLL_S)
            try:
                view = await run_in_threadpool(read)
            except Exception as exc:  # the store failed once, or the job's retention ended
                log.warning("stopped following a job: %s", getattr(exc, "message", type(exc).__name__))
                return
            latest = orjson.dumps(view)
            if latest != sent:
                sent = latest
                yield STATUS + sent + b"\n\n"
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= HEARTBEAT_S:
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()

    return StreamingResponse(
        events(), media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
