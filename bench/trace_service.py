"""Run the service (`python -m handler`) with timestamps along the sync /predict path.

Used by `bench/run.py --trace`. Nothing in handler/ changes: this wraps a few of its functions
before the app is built and writes one JSON line per traced request to $TRACE_OUT. Only requests
that carry an `x-bench-trace` header are traced; the timestamps are `time.perf_counter()`, which
on Linux is CLOCK_MONOTONIC and so comparable with the client's own.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.responses import Response  # noqa: E402

import handler.app as app  # noqa: E402
import handler.pipeline as pipeline  # noqa: E402

now = time.perf_counter
record: contextvars.ContextVar[dict | None] = contextvars.ContextVar("bench_trace", default=None)
out = open(os.environ["TRACE_OUT"], "a", buffering=1)  # noqa: SIM115

_predict = app.predict
_read_json = app.read_json
_run_sync = app.run_sync
_run = pipeline.Pipeline._run
_wait = pipeline.Pipeline._wait
_respond = Response.__call__


async def predict(request):
    trace_id = request.headers.get("x-bench-trace")
    if trace_id:
        record.set({"id": trace_id, "predict": now()})
    response = await _predict(request)
    if (rec := record.get()) is not None:
        rec["response_built"] = now()
    return response


async def read_json(request, limit, *args):
    body = await _read_json(request, limit, *args)
    if (rec := record.get()) is not None:
        rec["body_read"] = now()
    return body


def run_sync(services, body, *args):  # in the worker thread; anyio carries the context over
    rec = record.get()
    if rec is not None:
        rec["in_thread"] = now()
    result = _run_sync(services, body, *args)
    if rec is not None:
        rec["response_dict"] = now()
    return result


def run(self, request, cancel, *args):
    rec = record.get()
    if rec is not None:
        rec["pipeline"] = now()
    result = _run(self, request, cancel, *args)
    if rec is not None:
        rec["pipeline_end"] = now()  # after the cleanup in its `finally`
        rec["timings"] = result.timings
    return result


def wait(self, watch, deadline, cancel, request):
    _wait(self, watch, deadline, cancel, request)
    if (rec := record.get()) is not None:
        rec["done_seen"] = watch.finished_at  # the websocket thread saw the end
        rec["waited"] = now()


async def respond(self, scope, receive, send):
    rec = record.get()
    if rec is not None:
        rec["send"] = now()
    await _respond(self, scope, receive, send)
    if rec is not None:
        rec["sent"] = now()
        out.write(json.dumps(rec) + "\n")
        record.set(None)


app.predict = predict
app.read_json = read_json
app.run_sync = run_sync
pipeline.Pipeline._run = run
pipeline.Pipeline._wait = wait
Response.__call__ = respond

if __name__ == "__main__":
    from handler.__main__ import main

    sys.exit(main())
