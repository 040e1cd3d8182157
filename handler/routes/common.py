"""What every route module shares: its collaborators (`services_of`), the caller the access gate
checked (`caller_of`), the JSON body read with limits, the service's public URL and boolean
query parameters."""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.requests import Request

from handler.access import Caller
from handler.config.cloud import CloudSettings
from handler.errors import BadRequest, PayloadTooLarge, RequestTimeout, Unauthorized
from handler.services import Services, services_of

__all__ = ["Caller", "Services", "base_url", "caller_of", "query_flag", "read_json", "services_of"]

TRUE_WORDS = {"1", "true", "yes"}


def caller_of(request: Request) -> Caller:
    """Who the request speaks for (handler/access/gate.py put it there); on a route the gate
    leaves open, nobody: 401."""
    caller = request.scope.get("state", {}).get("caller")
    if not isinstance(caller, Caller):
        raise Unauthorized("an API key is required: send X-API-Key or Authorization: Bearer")
    return caller


def query_flag(request: Request, name: str) -> bool | None:
    """A boolean query parameter: None when absent."""
    value = request.query_params.get(name)
    return None if value is None else value.lower() in TRUE_WORDS


def base_url(request: Request, *, cloud: CloudSettings) -> str:
    """Our public URL: SERVICE_URL when set (Cloud Run terminates TLS in front of us)."""
    return (cloud.service_url or str(request.base_url)).rstrip("/")


async def read_json(request: Request, limit: int, timeout_s: float | None = None) -> Any:
    """The body as JSON. The whole body must arrive within `timeout_s` (a client trickling
    bytes, or declaring more than it sends, gets 408 instead of holding the connection)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    with anyio.move_on_after(timeout_s) as scope:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s")
    try:
        return json.loads(b"".join(chunks), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> float:
    # Python's json accepts NaN and Infinity, which are not JSON and slip past every `<=` check.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400
        raise ValueError(f"{text[:40]} is out of range")
    return value
