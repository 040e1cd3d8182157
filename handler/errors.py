"""Errors a client may see: each carries its HTTP status and a JSON body without internals."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"status": "error", "error": {"code": self.code, "message": self.message, **self.details}}

    @property
    def headers(self) -> dict[str, str]:
        return {}


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


class InvalidParameter(ServiceError):
    """A named-workflow parameter is wrong: says which one and why."""

    status_code = 422
    code = "invalid_parameter"


class UnsafeURL(BadRequest):
    code = "unsafe_url"


class WorkflowInvalid(BadRequest):
    """ComfyUI (or our pre-flight check) refused the graph; carries its `error` and `node_errors`."""

    code = "workflow_invalid"


class ExecutionFailed(ServiceError):
    status_code = 500
    code = "execution_error"


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
