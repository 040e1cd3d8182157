"""Errors a client may see: each carries its HTTP status and a JSON body without internals.

Every error body goes through `to_dict`, which scrubs it (`scrub`): no request's private folder
name, no absolute path of the service's folders, and a bounded size, whatever ComfyUI or the
caller put into the message.
"""

from __future__ import annotations

import re
from typing import Any

# Per-request folder names: "r" + 32 hex digits (see predict_request.new_folder_name).
REQUEST_FOLDER = re.compile(r"(?<![0-9A-Za-z])r[0-9a-f]{32}(?![0-9A-Za-z])")
REQUEST_PLACEHOLDER = "<request>"
MAX_STRING = 1000  # characters of one string in an error body
MAX_ITEMS = 50  # entries of one list or object
MAX_DEPTH = 12
MAX_TOTAL = 64 * 1024  # characters of strings in one error body, all together

# (absolute folder, placeholder), longest first: registered once the folders are known.
_private_paths: list[tuple[str, str]] = []
_private_pattern: re.Pattern[str] | None = None


def register_private_path(path: Any, placeholder: str = "<server>") -> None:
    """Name a folder of this machine that answers must not show (its absolute and real forms)."""
    global _private_pattern
    import os

    for form in {os.path.abspath(str(path)), os.path.realpath(str(path))}:
        if len(form) > 1 and (form, placeholder) not in _private_paths:
            _private_paths.append((form, placeholder))
    _private_paths.sort(key=lambda entry: -len(entry[0]))
    alternatives = "|".join(re.escape(form) for form, _ in _private_paths)
    # The folder and the rest of the path below it: "<input>/x.png" keeps only what the caller named.
    _private_pattern = re.compile(f"({alternatives})(?![\\w.-])")


def scrub_text(text: str) -> str:
    """`text` without private folder names or server paths."""
    if _private_pattern is not None:
        lookup = dict(_private_paths)
        text = _private_pattern.sub(lambda match: lookup[match.group(1)], text)
    return REQUEST_FOLDER.sub(REQUEST_PLACEHOLDER, text)


def scrub(value: Any, budget: list[int] | None = None, depth: int = 0) -> Any:
    """A copy of a JSON-like value, scrubbed and bounded (strings, items, depth and total size)."""
    budget = [MAX_TOTAL] if budget is None else budget
    if isinstance(value, str):
        text = value if len(value) <= 4 * MAX_STRING else value[: 4 * MAX_STRING]
        text = scrub_text(text)
        limit = min(MAX_STRING, max(budget[0], 0))
        if len(value) > limit or len(text) > limit:
            text = text[:limit] + f"… ({len(value)} characters)"
        budget[0] -= len(text)
        return text
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if depth >= MAX_DEPTH or budget[0] <= 0:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        mapping = {scrub(str(k), budget, depth + 1): scrub(v, budget, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            mapping["…"] = f"{len(items) - MAX_ITEMS} more"
        return mapping
    if isinstance(value, (list, tuple)):
        sequence = [scrub(v, budget, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            sequence.append(f"… {len(value) - MAX_ITEMS} more")
        return sequence
    return scrub(str(value), budget, depth)


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        # Scrubbed here, the one place every error body passes (sync answers and stored jobs).
        return {"status": "error", "error": scrub({"code": self.code, "message": self.message, **self.details})}

    @property
    def headers(self) -> dict[str, str]:
        return {}


class HTTPStatusError(ServiceError):
    """An error starlette raised itself (no such route, method not allowed): its status, our shape."""

    code = "http_error"

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


class BadRequest(ServiceError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class NotAcceptable(ServiceError):
    """The answer cannot take a form the request's Accept header allows."""

    status_code = 406
    code = "not_acceptable"


class StorageUnavailable(ServiceError):
    """Cloud Storage (or the local store) could not be read or written: try again."""

    status_code = 503
    code = "storage_unavailable"

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class InvalidParameter(ServiceError):
    """A named-workflow parameter is wrong: says which one and why."""

    status_code = 422
    code = "invalid_parameter"


class UnsafeURL(BadRequest):
    code = "unsafe_url"


class WorkflowInvalid(BadRequest):
    """ComfyUI (or our pre-flight check) refused the graph; carries its `error` and `node_errors`.

    A file the graph names that ComfyUI does not have (a `value_not_in_list` whose `extra_info`
    has `installed`, see `comfyui.graph`) is listed under `missing_files` with the files there
    are, and the first one is said in the message: a checkpoint named otherwise here is one
    rename away, not a hunt through `/models`."""

    code = "workflow_invalid"

    def __init__(self, message: str, **details: Any):
        missing = _missing_files(details.get("node_errors"))
        if missing:
            first = missing[0]
            names = [str(name) for name in first["installed"]]
            there = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            message += (
                f"; {first['input']} {first['value']!r} is not installed, the files there are: {there or 'none'}"
                " (GET /models lists every folder)"
            )
        super().__init__(message, **details, missing_files=missing or None)


def _missing_files(node_errors: Any) -> list[dict[str, Any]]:
    found = []
    for node_id, entry in (node_errors or {}).items() if isinstance(node_errors, dict) else ():
        for err in entry.get("errors", []) if isinstance(entry, dict) else ():
            extra = err.get("extra_info") if isinstance(err, dict) else None
            if isinstance(extra, dict) and err.get("type") == "value_not_in_list" and "installed" in extra:
                found.append(
                    {
                        "node": node_id,
                        "class_type": entry.get("class_type"),
                        "input": extra.get("input_name"),
                        "value": extra.get("received_value"),
                        "installed": extra["installed"],
                    }
                )
    return found


class ExecutionFailed(ServiceError):
    status_code = 500
    code = "execution_error"


class OutputMissing(ServiceError):
    """ComfyUI named a file of the run that is not there: its report was wrong (a node echoed a
    name it was given, or the file went), not the service."""

    status_code = 502
    code = "output_missing"


class Cancelled(ServiceError):
    status_code = 409
    code = "cancelled"


class ComfyUnavailable(ServiceError):
    """ComfyUI is booting, restarting or went away: try again shortly."""

    status_code = 503
    code = "comfyui_unavailable"

    def __init__(self, message: str, retry_after_s: int = 5, **details: Any):
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Timeout(ServiceError):
    status_code = 504
    code = "timeout"


class QueueTimeout(ComfyUnavailable):
    """The job waited in ComfyUI's queue past QUEUE_WAIT_TIMEOUT_S without starting: busy."""

    code = "queue_timeout"


class RequestTimeout(ServiceError):
    """The client took too long to send its request (headers or body)."""

    status_code = 408
    code = "request_timeout"

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the rest of the body may still be on its way


class TooManyRequests(ServiceError):
    """A caller past its rate limit or its cap of jobs at once (API keys: handler/access/)."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after_s: int = 1, **details: Any):
        super().__init__(message, **details)
        self.retry_after_s = max(1, retry_after_s)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}
