"""The `/predict` body, declared once: each field's JSON Schema, which the OpenAPI document
publishes (handler/routes/openapi.py) and every parser checks first (`check_fields`), before the meaning
of the values is checked in code (handler/predict_request.py, the async options in
handler/jobs/service.py). Unknown fields are ignored, as before.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from handler.comfyui.outputs import FORMATS
from handler.errors import BadRequest
from handler.taskqueue.base import PRIORITIES as _PRIORITIES

PRIORITIES = list(_PRIORITIES)  # in the order they are served
OUTPUT_FORMATS = [*FORMATS, *(["jpg"] if "jpeg" in FORMATS else [])]


def ref(name: str) -> dict[str, str]:
    """A reference to one of the OpenAPI document's component schemas."""
    return {"$ref": f"#/components/schemas/{name}"}


INPUT_IMAGE = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {
            "type": "string",
            "description": "The file name the workflow's loaders refer to.",
            "examples": ["input.png"],
        },
        "image": {
            "type": "string",
            "description": (
                "Base64, a data URI, an http(s) URL fetched by the service, or a gs://bucket/object URI read with the "
                "service's credentials (only buckets URL_ALLOWLIST names as gs://bucket[/prefix]). Bodies over 32 MiB "
                "never reach a Cloud Run service: send large inputs by URL."
            ),
        },
    },
}

OUTPUT_OPTIONS = {
    "description": (
        'Re-encode the images returned, e.g. {"format": "webp", "quality": 90}, or just "webp"; '
        '`delivery`: "inline" (base64 in the answer) or "url" (stored; the answer lists `uri` and `url`).'
    ),
    "anyOf": [
        {"type": "string", "enum": OUTPUT_FORMATS},
        {
            "type": "object",
            "properties": {
                "format": {"type": "string", "enum": OUTPUT_FORMATS},
                "quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 90},
                "delivery": {
                    "type": "string",
                    "enum": ["inline", "url"],
                    "default": "inline",
                    "description": "Sync answers: files as base64, or stored (Cloud Storage, or the local "
                    "store) with gs:// URIs and signed URLs, as async results.",
                },
            },
        },
    ],
}

FIELDS: dict[str, Any] = {
    "images": {"type": "array", "items": ref("InputImage"), "description": "Input images the workflow loads by name."},
    "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds to wait for the result."},
    "output": ref("OutputOptions"),
    "previews": {
        "type": "boolean",
        "default": False,
        "description": "With Accept: text/event-stream: sampler previews as `preview` events (base64).",
    },
    "async": {
        "type": "boolean",
        "default": False,
        "description": "Accept the request as a job (202) instead of waiting for the result.",
    },
    "webhook": {
        "description": "Call this URL (Standard Webhooks signed) when the job ends; implies async.",
        "anyOf": [
            {"type": "string", "format": "uri"},
            {"type": "object", "required": ["url"], "properties": {"url": {"type": "string", "format": "uri"}}},
        ],
    },
    "priority": {"type": "string", "enum": PRIORITIES, "default": "normal", "description": "Queue of an async job."},
    "inline": {
        "type": "boolean",
        "default": False,
        "description": "Embed an async job's outputs as base64 in its status (up to INLINE_MAX_BYTES).",
    },
}

WORKFLOW: dict[str, Any] = {
    "type": "object",
    "description": "An API-format ComfyUI graph (ComfyUI's 'Export (API)'): node id → {class_type, inputs}.",
    "additionalProperties": {
        "type": "object",
        "required": ["class_type"],
        "properties": {"class_type": {"type": "string"}, "inputs": {"type": "object"}},
    },
}

# Shared shapes the fields refer to, published as OpenAPI components.
COMPONENTS: dict[str, Any] = {"InputImage": INPUT_IMAGE, "OutputOptions": OUTPUT_OPTIONS}


def _inlined(schema: Any) -> Any:
    """The schema with its component references replaced by the components themselves."""
    if isinstance(schema, dict):
        target = schema.get("$ref")
        if isinstance(target, str) and target.startswith("#/components/schemas/"):
            return _inlined(COMPONENTS[target.rsplit("/", 1)[1]])
        return {key: _inlined(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inlined(item) for item in schema]
    return schema


# The graph itself is checked by graphshape.shape_problem, whose messages say what to export.
_CHECKED = jsonschema.Draft202012Validator(
    {
        "type": "object",
        "properties": {
            **_inlined(FIELDS),
            "workflow_id": {"type": "string"},
            "params": {"type": "object"},
        },
    }
)


def check_fields(body: dict[str, Any]) -> None:
    """Refuse a body whose fields do not have the declared shape: 400 naming the field."""
    error = best_match(_CHECKED.iter_errors(body))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the body"
        raise BadRequest(f"{where}: {error.message}")
