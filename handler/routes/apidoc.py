"""What a routes module declares its part of the OpenAPI document with (routes/openapi.py puts
the parts together).

Each routes module that serves callers has, beside its handlers:

* `OPERATIONS`: path (OpenAPI spelling, `{name}`) → OpenAPI path item, one entry per route;
* `SCHEMAS` (when it has any): component name → JSON Schema, for what its answers carry.

The helpers below build the recurring pieces: a JSON answer, an error answer in the one error
shape (handler/errors.py), a path parameter; `with_access_answers` adds the access layer's answers
(401, 403, 429, 431) to each operation they apply to.
"""

from __future__ import annotations

from typing import Any

from handler.body import ref

__all__ = [
    "ERROR",
    "JSON",
    "PathItems",
    "error_response",
    "json_response",
    "path_param",
    "ref",
    "with_access_answers",
]

JSON = "application/json"
PathItems = dict[str, dict[str, Any]]


def json_response(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema, **extra}}}


def error_response(description: str) -> dict[str, Any]:
    return json_response(ref("Error"), description)


def path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


# The one error shape (handler/errors.py, ServiceError.to_dict).
ERROR = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {
        "status": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "examples": ["bad_request", "not_found", "invalid_parameter", "workflow_invalid", "timeout"],
                },
                "message": {"type": "string"},
                "param": {"type": "string", "description": "The named-workflow parameter at fault (422)."},
                "errors": {
                    "type": "array",
                    "description": "Every parameter problem, when there is more than one (422).",
                    "items": {
                        "type": "object",
                        "properties": {"param": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
                "comfyui_error": {
                    "type": "object",
                    "description": "ComfyUI's own error object (workflow_invalid).",
                    "properties": {
                        "type": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "string"},
                        "extra_info": {"type": "object"},
                    },
                },
                "node_errors": {
                    "type": "object",
                    "description": "ComfyUI's node_errors: per node id, its errors and the outputs they block.",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "errors": {"type": "array", "items": {"type": "object"}},
                            "dependent_outputs": {"type": "array", "items": {"type": "string"}},
                            "class_type": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}


# --- the access layer's answers (docs/security.md, "Access"), declared on every operation they
# apply to: the gate's 401, the roles' 403, a key's limits' 429, the server's header cap's 431.

METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})
# Operations no caller needs to be identified for (Cloud Run's probes).
OPEN = frozenset({("/healthz", "get")})
# Operations where a role decides: admin-only routes, and /predict (raw workflows need a key
# allowed to send them, and, but for admins, a ComfyUI that runs the isolation extension).
ROLE_CHECKED = frozenset(
    {
        ("/dashboard", "get"),
        ("/dashboard/data", "get"),
        ("/system", "get"),
        ("/models/fetch", "post"),
        ("/models/cache/{key}", "delete"),
        ("/predict", "post"),
    }
)
# Operations a key's limits count (rate per minute, runs at once).
LIMITED = frozenset({("/predict", "post")})

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}


def access_answers(path: str, method: str) -> dict[str, Any]:
    answers: dict[str, Any] = {
        "431": error_response("The request line and headers are larger than the service takes (MAX_HEADER_BYTES).")
    }
    if (path, method) not in OPEN:
        answers["401"] = error_response("No caller: an API key (X-API-Key or Authorization: Bearer) is needed.")
    if (path, method) in ROLE_CHECKED:
        answers["403"] = error_response(
            "The caller's role does not allow this: an admin route, or a raw workflow from a key not allowed to send "
            "them, or from any caller but an admin where ComfyUI runs without the isolation extension."
        )
    if (path, method) in LIMITED:
        answers["429"] = {
            **error_response("The key's rate or its runs at once are used up."),
            "headers": _RETRY_AFTER,
        }
    return answers


def with_access_answers(paths: PathItems) -> PathItems:
    """`paths` with the access layer's answers added to each operation (what an operation declares
    itself is kept), and `security: []` on the operations open to anyone."""
    out: PathItems = {}
    for path, item in paths.items():
        out[path] = {}
        for method, operation in item.items():
            if method not in METHODS or not isinstance(operation, dict):
                out[path][method] = operation
                continue
            added = {**operation, "responses": {**access_answers(path, method), **operation.get("responses", {})}}
            if (path, method) in OPEN:
                added["security"] = []
            out[path][method] = added
    return out
