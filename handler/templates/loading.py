"""Loading a workflows folder: each `<id>.manifest.json` with its graph and the shared
`_params.json`, checked against their JSON Schemas and against the graph (every parameter points
at an existing input that holds a value, no input is set by two parameters, defaults are valid).
A refused file is a `ManifestError` whose message says which file and what is wrong; `load_folder`
collects them so the other templates keep loading. `stamp` tells when the folder changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema

from handler.comfyui.graphshape import shape_problem
from handler.templates.params import TYPES, Param, Target, Template, value_problem

MANIFEST_SUFFIX = ".manifest.json"
SHARED_FILE = "_params.json"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

_TARGET = {
    "oneOf": [
        {"type": "string", "pattern": r"^[^.]+\..+$"},
        {
            "type": "object",
            "properties": {"node": {"type": "string", "minLength": 1}, "input": {"type": "string", "minLength": 1}},
            "required": ["node", "input"],
            "additionalProperties": False,
        },
    ]
}
_PARAM_FIELDS = {
    "type": {"enum": list(TYPES)},
    "use": {"type": "string"},
    "title": {"type": "string"},
    "description": {"type": "string"},
    "default": {},
    "required": {"type": "boolean"},
    "min": {"type": "number"},
    "max": {"type": "number"},
    "multiple_of": {"type": "number", "exclusiveMinimum": 0},
    "max_length": {"type": "integer", "minimum": 1},
    "values": {"type": "array", "minItems": 1},
    "random": {"type": "boolean"},
    "examples": {"type": "array"},
}
MANIFEST_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "description": {"type": "string"},
        "model_type": {"type": ["string", "null"]},
        "workflow": {"type": "string", "pattern": r"^[^/\\]+\.json$"},
        "params": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    **_PARAM_FIELDS,
                    "to": {"oneOf": [_TARGET, {"type": "array", "items": _TARGET, "minItems": 1}]},
                },
                "required": ["to"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["params"],
    "additionalProperties": False,
}
SHARED_SCHEMA = {
    "type": "object",
    "properties": {
        "params": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": _PARAM_FIELDS,
                "required": ["type"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["params"],
    "additionalProperties": False,
}


# A folder's file stamps: (name, mtime_ns, size) per JSON file, or ("missing",).
Stamp = tuple[str | tuple[str, int, int], ...]


class ManifestError(ValueError):
    """A template the service refuses to load; the message says which file and what is wrong."""


def stamp(directory: Path) -> Stamp:
    """Name, mtime and size of every JSON file: cheap enough to take on each request."""
    try:
        entries = sorted(directory.glob("*.json"))
    except OSError:
        return ("missing",)
    stamp: list[tuple[str, int, int]] = []
    for path in entries:
        try:
            st = path.stat()
        except OSError:
            continue
        stamp.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(stamp)


def load_folder(directory: Path) -> tuple[dict[str, Template], dict[str, str]]:
    templates: dict[str, Template] = {}
    errors: dict[str, str] = {}
    if not directory.is_dir():
        return templates, errors
    shared: dict[str, dict[str, Any]] = {}
    shared_error = None
    if (directory / SHARED_FILE).exists():
        try:
            shared = load_shared(directory / SHARED_FILE)
        except ManifestError as exc:
            shared_error = str(exc)
            errors[SHARED_FILE] = shared_error
    for manifest in sorted(directory.glob(f"*{MANIFEST_SUFFIX}")):
        workflow_id = manifest.name[: -len(MANIFEST_SUFFIX)]
        try:
            templates[workflow_id] = load_template(manifest, shared, shared_error)
        except ManifestError as exc:
            errors[workflow_id] = str(exc)
    return templates, errors


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path.name} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path.name} is not valid JSON: {exc}") from None


def _schema_error(path: Path, data: Any, schema: dict[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ManifestError(f"{path.name}: at {where}: {error.message}")


def load_shared(path: Path) -> dict[str, dict[str, Any]]:
    data = _read_json(path)
    _schema_error(path, data, SHARED_SCHEMA)
    for name, definition in data["params"].items():
        _build_param(name, definition, (), path.name)  # checks the definition on its own
    params: dict[str, dict[str, Any]] = data["params"]
    return params


def load_template(
    manifest_path: Path, shared: Mapping[str, dict[str, Any]] | None = None, shared_error: str | None = None
) -> Template:
    workflow_id = manifest_path.name[: -len(MANIFEST_SUFFIX)]
    if not _ID.match(workflow_id):
        raise ManifestError(f"{manifest_path.name}: the id {workflow_id!r} may hold only letters, digits, - and _")
    manifest = _read_json(manifest_path)
    _schema_error(manifest_path, manifest, MANIFEST_SCHEMA)
    graph_path = manifest_path.parent / manifest.get("workflow", f"{workflow_id}.json")
    graph = _read_json(graph_path)
    _check_graph(graph_path.name, graph)

    params: dict[str, Param] = {}
    claimed: dict[tuple[str, str], str] = {}
    where = manifest_path.name
    for name, local in manifest["params"].items():
        definition = dict(local)
        base_name = definition.pop("use", None)
        if base_name is None and "type" not in definition:
            base_name = name
        if base_name is not None:
            base = (shared or {}).get(base_name)
            if base is None:
                hint = f" ({SHARED_FILE} was refused: {shared_error})" if shared_error else ""
                raise ManifestError(
                    f"{where}: parameter {name!r} has no type and {SHARED_FILE} defines no {base_name!r}{hint}"
                )
            definition = {**base, **definition}
        targets = tuple(_target(t) for t in _as_list(definition.pop("to")))
        for target in targets:
            _check_target(where, graph_path.name, graph, name, target)
            owner = claimed.setdefault((target.node, target.input), name)
            if owner != name:
                raise ManifestError(f"{where}: parameters {owner!r} and {name!r} both set {target}")
        params[name] = _build_param(name, definition, targets, where, graph)
    return Template(
        id=workflow_id,
        graph=graph,
        params=params,
        title=manifest.get("title") or workflow_id,
        description=manifest.get("description", ""),
        model_type=manifest.get("model_type"),
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _target(raw: Any) -> Target:
    if isinstance(raw, str):
        node, _, input_name = raw.partition(".")
        return Target(node, input_name)
    return Target(raw["node"], raw["input"])


def _check_graph(name: str, graph: Any) -> None:
    problem = shape_problem(graph)
    if problem is not None:
        raise ManifestError(f"{name}: {problem}")


def _check_target(where: str, graph_name: str, graph: dict[str, Any], param: str, target: Target) -> None:
    node = graph.get(target.node)
    if node is None:
        raise ManifestError(
            f"{where}: parameter {param!r} points at node {target.node!r}, which {graph_name} does not have"
        )
    inputs = node.get("inputs") or {}
    if target.input not in inputs:
        known = ", ".join(sorted(inputs)) or "none"
        raise ManifestError(
            f"{where}: parameter {param!r} points at input {target.input!r} of node {target.node} "
            f"({node['class_type']}), which has no such input (it has: {known})"
        )
    value = inputs[target.input]
    if isinstance(value, list):
        raise ManifestError(
            f"{where}: parameter {param!r} points at {target}, which is a link to node {value[0]!r}, not a value"
        )


def _build_param(
    name: str,
    definition: Mapping[str, Any],
    targets: tuple[Target, ...],
    where: str,
    graph: dict[str, Any] | None = None,
) -> Param:
    prefix = f"{where}: parameter {name!r}"
    kind = definition.get("type")
    if kind not in TYPES:
        raise ManifestError(f"{prefix}: type must be one of {', '.join(TYPES)}")
    if kind == "enum" and not definition.get("values"):
        raise ManifestError(f"{prefix}: an enum needs a non-empty list of values")
    if definition.get("random") and kind != "integer":
        raise ManifestError(f"{prefix}: only integer parameters can be random")
    low, high = definition.get("min"), definition.get("max")
    if low is not None and high is not None and low > high:
        raise ManifestError(f"{prefix}: min {low} is larger than max {high}")
    for key in ("min", "max", "multiple_of"):
        if key in definition and kind not in ("integer", "number"):
            raise ManifestError(f"{prefix}: {key} applies to integer and number parameters only")
    required = bool(definition.get("required", False))
    default = definition.get("default")
    if required and default is not None:
        raise ManifestError(f"{prefix}: a required parameter cannot have a default")
    if default is None and not required and graph is not None and targets and kind != "image":
        # No default given: the graph's own value is the default.
        default = graph[targets[0].node]["inputs"][targets[0].input]
    values = definition.get("values")
    param = Param(
        name=name,
        type=kind,
        targets=targets,
        description=definition.get("description", ""),
        title=definition.get("title"),
        default=default,
        required=required,
        min=low,
        max=high,
        multiple_of=definition.get("multiple_of"),
        max_length=definition.get("max_length"),
        values=tuple(values) if values else None,
        random=bool(definition.get("random", False)),
        examples=tuple(definition.get("examples", ())),
    )
    if default is not None and not (param.random and default == "random"):
        problem = value_problem(param, default)
        if problem:
            raise ManifestError(f"{prefix}: the default {default!r} is not valid: {problem}")
    return param
