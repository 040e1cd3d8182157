"""The service's OpenAPI 3.1 document, built on each request so template changes show at once.

Template parameters are already JSON Schema 2020-12 (`Templates.json_schema`), which OpenAPI 3.1
takes as is: each template becomes a component `<id>.params`, and `/predict` accepts either a raw
API-format workflow or one of the templates (`oneOf`, told apart by `workflow_id`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from handler.body import COMPONENTS, FIELDS, PRIORITIES, WORKFLOW, ref

JSON = "application/json"
# What `output` accepts: OutputOptions.parse also takes "jpg" for "jpeg".
_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema, **extra}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


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


RAW_REQUEST: dict[str, Any] = {
    "type": "object",
    "title": "Raw workflow",
    "required": ["workflow"],
    "properties": {
        "workflow": WORKFLOW,
        **FIELDS,
    },
}

FILE = {
    "type": "object",
    "properties": {
        "filename": {"type": "string"},
        "subfolder": {"type": "string"},
        "type": {"type": "string", "examples": ["output", "temp"]},
        "node_id": {"type": "string"},
        "output_key": {"type": "string", "examples": ["images", "gifs"]},
        "content_type": {"type": "string", "examples": ["image/png"]},
        "size": {"type": "integer"},
        "image": {"type": "string", "contentEncoding": "base64", "description": "Inline delivery."},
        "uri": {"type": "string", "description": "URL delivery: gs://bucket/key (local://key for a local store)."},
        "url": {
            "type": ["string", "null"],
            "format": "uri",
            "description": "URL delivery: a signed HTTPS URL (or the service's own link for a local store).",
        },
    },
}

# Server-Sent Events of a sync run (Accept: text/event-stream): handler/routes/sse.py.
EVENTS_DESCRIPTION = (
    "With `Accept: text/event-stream` the answer is a stream of events, sent chunked (no size limit): "
    "`queued` {prompt_id, position}, `started` {prompt_id}, `progress` {node, class_type, step, max, percent} as "
    "ComfyUI reports it, `executed` {node, class_type, output} per output node, `preview` {node, class_type, "
    'content_type, image} when the body says `"previews": true`, then `result` (exactly the JSON of a plain '
    "call) or `error` {status_code, body} (the status and error body of a plain call). A comment line is sent "
    "every 15 s while nothing else is. Errors before the run starts (a bad body, not ready) are plain HTTP "
    "errors. A client that disconnects has its prompt interrupted."
)
RAW_DESCRIPTION = (
    "With `Accept` naming a file type (image/png, image/webp, image/*, video/mp4, audio/*, "
    "application/octet-stream, …) and a workflow with exactly one file output, the body is that file (a still "
    "image is re-encoded to the still format asked for). Headers: Content-Disposition (its name), X-Prompt-Id, "
    "X-Output-Node, X-Output-Key, X-Output-Type, X-Output-Filename (URL-encoded, with its subfolder), "
    "Server-Timing (the timings), X-Outputs (ComfyUI's outputs as JSON, when under 8 KiB). With none or several "
    "files: 406, or the JSON answer when the Accept allows JSON too."
)

PREDICT_RESPONSE = {
    "type": "object",
    "properties": {
        "status": {"const": "success"},
        "prompt_id": {"type": "string"},
        "images": {"type": "array", "items": ref("OutputFile")},
        "outputs": {"type": "object", "description": "ComfyUI's outputs per node, as in its history."},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}

_STATE = {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}
_TIME = {"type": ["string", "null"], "format": "date-time"}

ACCEPTED = {
    "type": "object",
    "required": ["job_id", "status_url", "state"],
    "properties": {
        "job_id": {"type": "string"},
        "status_url": {"type": "string", "format": "uri"},
        "state": _STATE,
        "priority": {"type": "string", "enum": PRIORITIES},
    },
}

JOB = {
    "type": "object",
    "description": "An async job: its state and, once finished, its result (files with URLs) or error.",
    "required": ["job_id", "state"],
    "properties": {
        "job_id": {"type": "string"},
        "state": _STATE,
        "priority": {"type": "string", "enum": PRIORITIES},
        "attempts": {"type": "integer"},
        "created_at": _TIME,
        "started_at": _TIME,
        "finished_at": _TIME,
        "updated_at": _TIME,
        "status_url": {"type": "string"},
        "cancel_requested": {"type": "boolean"},
        "progress": {
            "type": "object",
            "description": "While running: the latest of ComfyUI's progress messages (at most one update a second).",
            "properties": {
                "node": {"type": ["string", "null"]},
                "class_type": {"type": ["string", "null"]},
                "step": {"type": ["number", "null"]},
                "max": {"type": ["number", "null"]},
                "percent": {"type": ["number", "null"]},
                "updated_at": {"type": "number", "description": "Unix time of the update."},
            },
        },
        "result": {
            "type": "object",
            "properties": {
                "files": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "uri": {"type": "string"},
                            "url": {"type": ["string", "null"]},
                            "base64": {"type": "string", "contentEncoding": "base64"},
                        },
                    },
                },
            },
        },
        "error": {"type": "object", "description": "Why the job failed or was cancelled."},
        "last_error": {"type": "object", "description": "The latest transient failure of a job that will be retried."},
        "webhook": {"type": "object", "description": "The webhook URL (shortened) and its delivery state."},
    },
}

CANCEL = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "state": _STATE,
        "cancel": {"type": "string", "enum": ["dequeued", "interrupting", "requested"]},
        "detail": {"type": "string"},
    },
}

WORKFLOW_SUMMARY = {
    "type": "object",
    "required": ["id", "title", "available"],
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "model_type": {"type": ["string", "null"], "description": "The MODEL_TYPE whose models it needs."},
        "available": {"type": "boolean", "description": "This service's image has those models."},
    },
}

WORKFLOW_DETAIL = {
    "allOf": [
        ref("WorkflowSummary"),
        {
            "type": "object",
            "properties": {"params": {"type": "object", "description": "The parameters as JSON Schema."}},
        },
    ]
}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _paths(predict_request: dict[str, Any], predict_examples: dict[str, Any]) -> dict[str, Any]:
    return {
        "/": {
            "get": {
                "summary": "Service information",
                "operationId": "info",
                "tags": ["service"],
                "responses": {"200": _json({"type": "object"}, "Version, MODEL_TYPE, ComfyUI state and endpoints.")},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Readiness (does not call ComfyUI)",
                "operationId": "healthz",
                "tags": ["service"],
                "responses": {
                    "200": _json({"type": "object", "properties": {"status": {"const": "ready"}}}, "ComfyUI is ready."),
                    "503": _json(
                        {"type": "object", "properties": {"status": {"type": "string"}}},
                        "ComfyUI is booting or restarting; see Retry-After.",
                    ),
                },
            }
        },
        "/models": {
            "get": {
                "summary": "Model files ComfyUI sees, per folder",
                "operationId": "models",
                "tags": ["service"],
                "parameters": [
                    {
                        "name": "refresh",
                        "in": "query",
                        "schema": {"type": "boolean"},
                        "description": "Ask ComfyUI again instead of the cached list.",
                    }
                ],
                "responses": {"200": _json({"type": "object"}, "model_type and the files of every model folder.")},
            }
        },
        "/models/{folder}": {
            "get": {
                "summary": "Model files of one folder",
                "operationId": "modelFolder",
                "tags": ["service"],
                "parameters": [
                    _path_param("folder"),
                    {"name": "refresh", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": _json({"type": "object"}, "The folder and its files."),
                    "404": _error("No such model folder."),
                },
            }
        },
        "/predict": {
            "post": {
                "summary": "Run a workflow: raw, or a named template with parameters",
                "operationId": "predict",
                "tags": ["predict"],
                "description": (
                    "Sends either `workflow` (API format) or `workflow_id` with `params`. The result comes back in the "
                    "response, unless the body asks for `async` or a `webhook`: then the graph is checked, a job is "
                    "accepted (202) and its state is read from `/status/{job_id}`.\n\n"
                    "The sync answer takes the form the `Accept` header asks for: JSON (default; files inline as base64, "
                    'or stored with links when `output.delivery` is "url"), the file itself, or Server-Sent Events. '
                    "Any answer over CHUNKED_ABOVE_BYTES (16 MiB) goes out chunked: Cloud Run lets a chunked answer through "
                    "at any size, and refuses one over 32 MiB that declares its length.\n\n"
                    + RAW_DESCRIPTION
                    + "\n\n"
                    + EVENTS_DESCRIPTION
                ),
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": predict_request, "examples": predict_examples}},
                },
                "responses": {
                    "200": {
                        "description": 'The outputs: JSON (base64 inline, or links with output.delivery "url"), the '
                        "one file itself (raw), or an event stream.",
                        "content": {
                            JSON: {"schema": ref("PredictResponse")},
                            "text/event-stream": {"schema": {"type": "string", "description": EVENTS_DESCRIPTION}},
                            "image/*": {"schema": {"type": "string", "format": "binary"}},
                            "video/*": {"schema": {"type": "string", "format": "binary"}},
                            "audio/*": {"schema": {"type": "string", "format": "binary"}},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "202": {
                        **_json(
                            ref("JobAccepted"),
                            "Accepted as an async job (`async`, `webhook`, or a Cloud Tasks delivery).",
                        ),
                        "headers": {"Location": {"schema": {"type": "string"}, "description": "The status URL."}},
                    },
                    "400": _error(
                        "A malformed body, or a workflow ComfyUI refuses (workflow_invalid, with node_errors)."
                    ),
                    "404": _error("No template with that workflow_id."),
                    "406": _error(
                        "The Accept header allows no form of the answer (e.g. text/html), or a raw answer was "
                        "asked for and the workflow did not produce exactly one file of an accepted type."
                    ),
                    "413": _error("The body or an input image is too large."),
                    "422": _error("A template parameter is wrong: `param` names it, `message` says why."),
                    "500": _error("ComfyUI failed while running the workflow."),
                    "503": _error("ComfyUI is not ready; retry after Retry-After seconds."),
                    "504": _error("The workflow did not finish in time."),
                },
            }
        },
        "/status/{job_id}": {
            "get": {
                "summary": "State of an async job",
                "operationId": "status",
                "tags": ["jobs"],
                "parameters": [
                    _path_param("job_id"),
                    {
                        "name": "inline",
                        "in": "query",
                        "schema": {"type": "boolean"},
                        "description": "Embed the outputs as base64 (default: what the job asked for).",
                    },
                ],
                "responses": {"200": _json(ref("Job"), "The job."), "404": _error("No such job.")},
            }
        },
        "/cancel/{job_id}": {
            "post": {
                "summary": "Cancel an async job",
                "operationId": "cancel",
                "tags": ["jobs"],
                "parameters": [_path_param("job_id")],
                "responses": {
                    "200": _json(CANCEL, "A queued job was taken out of the queue: it will never run."),
                    "202": _json(CANCEL, "A running job is being interrupted, or will stop soon."),
                    "404": _error("No such job."),
                    "409": _error("The job has already finished."),
                },
            }
        },
        "/outputs/{job_id}/{name}": {
            "get": {
                "summary": "An output file of an async job (local storage only; Cloud Storage gives signed URLs)",
                "operationId": "output",
                "tags": ["jobs"],
                "parameters": [_path_param("job_id"), _path_param("name")],
                "responses": {
                    "200": {"description": "The file.", "content": {"*/*": {}}},
                    "404": _error("No such file."),
                },
            }
        },
        "/workflows": {
            "get": {
                "summary": "Named workflows",
                "operationId": "listWorkflows",
                "tags": ["workflows"],
                "parameters": [
                    {
                        "name": "available",
                        "in": "query",
                        "schema": {"type": "boolean"},
                        "description": "Only the templates whose models this image has.",
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "model_type": {"type": "string"},
                                "workflows": {"type": "array", "items": ref("WorkflowSummary")},
                                "errors": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                    "description": "Templates refused at load time, and why.",
                                },
                            },
                        },
                        "Every loaded template.",
                    )
                },
            }
        },
        "/workflows/{workflow_id}": {
            "get": {
                "summary": "One named workflow with its parameters as JSON Schema",
                "operationId": "getWorkflow",
                "tags": ["workflows"],
                "parameters": [_path_param("workflow_id")],
                "responses": {
                    "200": _json(ref("WorkflowDetail"), "The template."),
                    "404": _error("No such template, or its manifest was refused."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "tags": ["service"],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
    }


def _example_params(schema: dict[str, Any]) -> dict[str, Any]:
    example: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if name in schema.get("required", []):
            example[name] = (
                prop.get("examples")
                or [
                    "https://example.com/input.png" if "contentMediaType" in prop else "a lighthouse on a cliff at dusk"
                ]
            )[0]
    return example


def _priority_with_queue_limits() -> dict[str, Any]:
    """The `priority` field, described with the Cloud Tasks queue limits the service creates."""
    from handler.taskqueue.cloudtasks import QUEUE_LIMITS  # google-cloud-tasks: imported only when a document is built

    limits = "; ".join(
        f"{p}: up to {QUEUE_LIMITS[p][0]:g} dispatches/s, {QUEUE_LIMITS[p][1]} at once"
        for p in PRIORITIES
        if p in QUEUE_LIMITS
    )
    field = FIELDS["priority"]
    return {
        **field,
        "description": f"{field['description']} With Cloud Tasks each priority is a queue of its own ({limits}).",
    }


def document(
    templates: Any = None,
    *,
    present: Iterable[str] | None = None,
    version: str = "0",
    server_url: str | None = None,
) -> dict[str, Any]:
    """The whole service; `present` limits the paths to the routes this app has mounted."""
    priority = _priority_with_queue_limits()
    schemas: dict[str, Any] = {
        "Error": ERROR,
        **COMPONENTS,
        "RawPredictRequest": {**RAW_REQUEST, "properties": {**RAW_REQUEST["properties"], "priority": priority}},
        "OutputFile": FILE,
        "PredictResponse": PREDICT_RESPONSE,
        "JobAccepted": ACCEPTED,
        "Job": JOB,
        "WorkflowSummary": WORKFLOW_SUMMARY,
        "WorkflowDetail": WORKFLOW_DETAIL,
    }
    choices = [ref("RawPredictRequest")]
    examples: dict[str, Any] = {
        "raw": {
            "summary": "A raw API-format workflow",
            "value": {
                "workflow": {
                    "1": {
                        "class_type": "EmptyImage",
                        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
                    },
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "example"}},
                }
            },
        },
    }
    for summary in templates.list() if templates is not None else []:
        workflow_id = summary["id"]
        params_schema = templates.json_schema(workflow_id)
        schemas[f"{workflow_id}.params"] = params_schema
        request = {
            "type": "object",
            "title": summary["title"],
            "description": summary.get("description", ""),
            "required": ["workflow_id"],
            "properties": {
                "workflow_id": {"const": workflow_id},
                "params": ref(f"{workflow_id}.params"),
                **FIELDS,
                "priority": priority,
            },
        }
        if params_schema.get("required"):
            request["required"] = ["workflow_id", "params"]
        schemas[f"{workflow_id}.request"] = request
        choices.append(ref(f"{workflow_id}.request"))
        examples[workflow_id] = {
            "summary": summary["title"] + ("" if summary.get("available", True) else " (models not in this image)"),
            "value": {"workflow_id": workflow_id, "params": _example_params(params_schema)},
        }

    paths = _paths({"oneOf": choices}, examples)
    if present is not None:
        wanted = {_CONVERTER.sub(r"{\1}", path) for path in present}  # "{name:path}" → "{name}"
        paths = {path: item for path, item in paths.items() if path in wanted}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "comfyrun",
            "version": version,
            "description": "ComfyUI as a serverless API: run raw workflows or named templates with typed parameters.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
