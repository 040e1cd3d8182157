"""What a routes module declares its part of the OpenAPI document with (routes/openapi.py puts
the parts together).

Each routes module that serves callers has, beside its handlers:

* `OPERATIONS`: path (OpenAPI spelling, `{name}`) → OpenAPI path item, one entry per route;
* `SCHEMAS` (when it has any): component name → JSON Schema, for what its answers carry.

The helpers below build the recurring pieces: a JSON answer, an error answer in the one error
shape (handler/errors.py), a path parameter.
"""

from __future__ import annotations

from typing import Any

from handler.body import ref

__all__ = ["ERROR", "JSON", "PathItems", "error_response", "json_response", "path_param", "ref"]

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
