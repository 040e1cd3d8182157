"""Pre-flight check of an API-format graph against ComfyUI's `object_info`.

It follows ComfyUI's own prompt validation (0.3x `execution.validate_prompt`) so the service can
refuse a graph before accepting an async job, and answer with the same shape ComfyUI gives:

    {"error": {"type", "message", "details", "extra_info"},
     "node_errors": {node_id: {"errors": [...], "dependent_outputs": [...], "class_type": ...}}}

Like ComfyUI, only nodes that feed an output node are checked, values are converted the way
ComfyUI converts them (`int("12")` is fine, `int("abc")` is not), and the graph is accepted when
at least one output validates; `Report.clean` is the stricter "no error anywhere".

Deliberate differences, because the check runs without ComfyUI's Python classes:
* A link to a missing node or output slot is a `bad_linked_input` error, not an exception.
* Inputs ComfyUI checks with a node's own `VALIDATE_INPUTS` (uploaded files: `image_upload`,
  remote lists) are not checked against their lists: the file may be written just before the run.
* Model-file lists (`ckpt_name`, `unet_name`, …) are checked only with `check_files=True`: a
  recorded `object_info` from a machine without models would otherwise refuse every model graph.
  With `check_files=False`, a value that looks like a file name is not looked up in its list.
* Dynamic V3 inputs (`COMFY_DYNAMICCOMBO_V3`, `COMFY_AUTOGROW_V3`) are left to ComfyUI.
* A `value_not_in_list` for a file name (a model or an image) adds `installed` to its
  `extra_info`: the files ComfyUI has for that input (`WorkflowInvalid` says them in its message).

Nothing here recurses along the graph, so any graph gets an answer. The API format's shape and the
depth of its chains of links are checked before this, in graphshape.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from handler.comfyui.graphshape import is_link, is_ui_format
from handler.errors import WorkflowInvalid
from handler.models.refs import folder_of, looks_like_url

Graph = Mapping[str, Any]
ObjectInfo = Mapping[str, Any]

_ANY = {"*", "COMFY_MATCHTYPE_V3"}
_DYNAMIC = {"COMFY_DYNAMICCOMBO_V3", "COMFY_AUTOGROW_V3"}
_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
_FILE_NAME = re.compile(
    r"\.(safetensors|sft|ckpt|pt|pth|bin|gguf|onnx|pkl|"
    r"png|jpe?g|webp|gif|bmp|tiff?|mp4|webm|mov|wav|mp3|flac|ogg|glb|obj|ply)$",
    re.IGNORECASE,
)


def _error(type_: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra}


@dataclass(frozen=True)
class Report:
    """The outcome of `check`: ComfyUI's `error` (None when valid) and `node_errors`."""

    error: dict[str, Any] | None = None
    node_errors: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """What ComfyUI would accept: at least one output validates."""
        return self.error is None

    @property
    def clean(self) -> bool:
        """Nothing wrong anywhere (what a shipped template must be)."""
        return self.error is None and not self.node_errors

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "node_errors": self.node_errors}

    def messages(self) -> list[str]:
        """One line per problem, for logs and load-time refusals."""
        lines = []
        if self.error and not self.node_errors:
            lines.append(f"{self.error['message']}: {self.error['details']}".rstrip(": "))
        for node_id, entry in self.node_errors.items():
            for err in entry["errors"]:
                lines.append(f"node {node_id} ({entry['class_type']}): {err['message']}: {err['details']}")
        return lines

    def raise_for_errors(self, strict: bool = False) -> None:
        if self.clean if strict else self.ok:
            return
        error = self.error or _error("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        # The same body as ComfyUI's own refusal (comfy_client), so callers see one shape either way.
        raise WorkflowInvalid(
            f"ComfyUI would refuse the workflow: {error['message']}", comfyui_error=error, node_errors=self.node_errors
        )


def check(graph: Any, object_info: ObjectInfo, *, check_files: bool = True) -> Report:
    """Validate `graph` (API format) against `object_info` (ComfyUI's GET /object_info)."""
    if is_ui_format(graph):
        return Report(
            _error(
                "invalid_prompt",
                "This is a UI-format workflow (nodes and links); send the API format instead",
                "Export it from ComfyUI with 'Export (API)'",
            )
        )
    if not isinstance(graph, Mapping) or not graph:
        return Report(_error("invalid_prompt", "The workflow must be a non-empty object of nodes keyed by id"))

    outputs: list[str] = []
    for node_id, node in graph.items():
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        if not isinstance(class_type, str):
            return Report(
                _error(
                    "missing_node_type",
                    f"Node 'ID #{node_id}' has no class_type. The workflow may be corrupted or a custom node is missing.",
                    f"Node ID '#{node_id}'",
                    node_id=node_id,
                    class_type=None,
                    node_title=None,
                )
            )
        spec = object_info.get(class_type)
        if spec is None:
            title = (node.get("_meta") or {}).get("title", class_type)
            return Report(
                _error(
                    "missing_node_type",
                    f"Node '{title}' not found. The custom node may not be installed.",
                    f"Node ID '#{node_id}'",
                    node_id=node_id,
                    class_type=class_type,
                    node_title=title,
                )
            )
        if spec.get("output_node"):
            outputs.append(node_id)
    if not outputs:
        return Report(_error("prompt_no_outputs", "Prompt has no outputs"))

    checker = _Checker(graph, object_info, check_files)
    node_errors: dict[str, dict[str, Any]] = {}
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    good = 0
    for output in outputs:
        if checker.validate(output, []):
            good += 1
            continue
        failed.append((output, checker.results[output][1]))
        # Report each broken node once, listing every output that depends on it.
        for node_id in checker.ancestors(output):
            valid, errors = checker.results.get(node_id, (True, []))
            if valid or not errors:
                continue
            entry = node_errors.setdefault(
                node_id, {"errors": errors, "dependent_outputs": [], "class_type": graph[node_id]["class_type"]}
            )
            entry["dependent_outputs"].append(output)

    if good:
        return Report(None, node_errors)
    details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failed for e in errors)
    return Report(_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), node_errors)


class _Checker:
    def __init__(self, graph: Graph, object_info: ObjectInfo, check_files: bool):
        self.graph = graph
        self.object_info = object_info
        self.check_files = check_files
        self.results: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def ancestors(self, node_id: str) -> list[str]:
        """`node_id` and every node it reads from, each once."""
        seen: dict[str, None] = {}
        stack = [node_id]
        while stack:
            current = stack.pop()
            if current in seen or current not in self.graph:
                continue
            seen[current] = None
            for value in (self.graph[current].get("inputs") or {}).values():
                if is_link(value):
                    stack.append(value[0])
        return list(seen)

    def validate(self, root: str, visiting: list[str]) -> bool:
        """Validate `root` and everything upstream, depth first but without recursion: a chain
        of thousands of nodes must be a refusal, not a RecursionError."""
        if root in self.results:
            return self.results[root][0]
        # One frame per node being validated: [node_id, own errors, upstream ids, next index, upstream ok]
        frames: list[list[Any]] = []
        on_path: set[str] = set(visiting)

        def enter(node_id: str) -> None:
            errors, upstream = self._own(node_id)
            frames.append([node_id, errors, upstream, 0, True])
            visiting.append(node_id)
            on_path.add(node_id)

        enter(root)
        while frames:
            frame = frames[-1]
            node_id, errors, upstream, index, _ = frame
            if index < len(upstream):
                frame[3] += 1
                linked = upstream[index]
                if linked in self.results:
                    frame[4] = self.results[linked][0] and frame[4]
                elif linked in on_path:
                    self._mark_cycle(linked, visiting)
                    frame[4] = False
                else:
                    enter(linked)
                continue
            frames.pop()
            visiting.pop()
            on_path.discard(node_id)
            valid, earlier = self.results.get(node_id, (True, []))
            merged = earlier + [e for e in errors if e not in earlier]
            self.results[node_id] = (valid and frame[4] and not errors, merged)
            if frames:
                frames[-1][4] = self.results[node_id][0] and frames[-1][4]
        return self.results[root][0]

    def _mark_cycle(self, node_id: str, visiting: list[str]) -> None:
        path = visiting[visiting.index(node_id) :] + [node_id]
        cycle = list(dict.fromkeys(path))
        details = " -> ".join(f"{n} ({self.graph[n]['class_type']})" for n in path)
        for member in cycle:
            self.results[member] = (
                False,
                [_error("dependency_cycle", "Dependency cycle detected", details, node_id=member, cycle_nodes=cycle)],
            )

    def _own(self, node_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        """The node's own input errors, and the nodes its valid links read from, in input order."""
        node = self.graph[node_id]
        inputs = node.get("inputs")
        inputs = inputs if isinstance(inputs, Mapping) else {}
        spec = self.object_info[node["class_type"]].get("input", {})
        errors: list[dict[str, Any]] = []
        upstream: list[str] = []
        for category in ("required", "optional"):
            for name, config in (spec.get(category) or {}).items():
                input_type = config[0] if isinstance(config, list) and config else config
                extra = (
                    config[1] if isinstance(config, list) and len(config) > 1 and isinstance(config[1], dict) else {}
                )
                if isinstance(input_type, str) and input_type in _DYNAMIC:
                    continue
                if name not in inputs:
                    if category == "required":
                        errors.append(
                            _error("required_input_missing", "Required input is missing", name, input_name=name)
                        )
                    continue
                value = inputs[name]
                if looks_like_url(value) and folder_of(node["class_type"], name, self.object_info):
                    continue  # a model by URL, fetched before the run (handler/models/refs.py)
                if isinstance(value, list):
                    error, linked = self._link(name, value, input_type, extra)
                    if error:
                        errors.append(error)
                    elif linked is not None:
                        upstream.append(linked)
                else:
                    error = self._value(name, value, input_type, extra)
                    if error:
                        errors.append(error)
        return errors, upstream

    def _link(
        self, name: str, value: list[Any], input_type: Any, extra: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(an error, None) for a bad link, else (None, the node it reads from)."""
        config = [input_type, extra]
        if len(value) != 2:
            return _error(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                name,
                input_name=name,
                input_config=config,
                received_value=value,
            ), None
        source, slot = value
        if not isinstance(source, str) or source not in self.graph:
            return _error(
                "bad_linked_input",
                "Linked node does not exist",
                f"{name}: node {source!r} is not in the workflow",
                input_name=name,
                input_config=config,
                linked_node=value,
            ), None
        class_type = self.graph[source]["class_type"]
        returns = self.object_info[class_type].get("output", [])
        if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < len(returns):
            return _error(
                "bad_linked_input",
                "Linked output slot does not exist",
                f"{name}: node {source} ({class_type}) has {len(returns)} outputs, not slot {slot!r}",
                input_name=name,
                input_config=config,
                linked_node=value,
            ), None
        received = returns[slot]
        if not _types_match(received, input_type):
            return _error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                f"{name}, received_type({received}) mismatch input_type({input_type})",
                input_name=name,
                input_config=config,
                received_type=received,
                linked_node=value,
            ), None
        return None, source

    def _value(self, name: str, value: Any, input_type: Any, extra: dict[str, Any]) -> dict[str, Any] | None:
        config = [input_type, extra]
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        convert = _CONVERT.get(input_type) if isinstance(input_type, str) else None
        if convert is not None:
            try:
                value = convert(value)
            except (TypeError, ValueError, OverflowError) as exc:
                return _error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {input_type} value",
                    f"{name}, {value}, {exc}",
                    input_name=name,
                    input_config=config,
                    received_value=value,
                    exception_message=str(exc),
                )
        if "min" in extra and _compare(value, extra["min"], "<"):
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {extra['min']}",
                name,
                input_name=name,
                input_config=config,
                received_value=value,
            )
        if "max" in extra and _compare(value, extra["max"], ">"):
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {extra['max']}",
                name,
                input_name=name,
                input_config=config,
                received_value=value,
            )
        options = (
            input_type if isinstance(input_type, list) else extra.get("options") if input_type == "COMBO" else None
        )
        if options is None or self._custom_checked(extra):
            return None
        values = value if extra.get("multiselect") and isinstance(value, list) else [value]
        invalid = [v for v in values if v not in options]
        if not self.check_files:
            invalid = [v for v in invalid if not (isinstance(v, str) and _FILE_NAME.search(v))]
        if not invalid:
            return None
        listing = f"(list of length {len(options)})" if len(options) > 20 else str(options)
        # ComfyUI's own error, word for word; a missing file also gets the files there are.
        files = all(isinstance(v, str) and _FILE_NAME.search(v) for v in invalid)
        return _error(
            "value_not_in_list",
            "Value not in list",
            f"{name}: {', '.join(repr(v) for v in invalid)} not in {listing}",
            input_name=name,
            input_config=None if len(options) > 20 else config,
            received_value=value,
            **({"installed": list(options)} if files else {}),
        )

    @staticmethod
    def _custom_checked(extra: dict[str, Any]) -> bool:
        # Upload widgets and remote lists are validated by the node itself (file exists), not by list.
        return any(key.endswith("_upload") and extra[key] for key in extra) or "remote" in extra


def _compare(value: Any, bound: Any, op: str) -> bool:
    try:
        result: bool = value < bound if op == "<" else value > bound
        return result
    except TypeError:
        return False


def _types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's non-strict `validate_node_input`: any shared type, `*` and match types pass."""
    if received == expected:
        return True
    if any(isinstance(t, str) and t in _ANY for t in (received, expected)):
        return True
    if isinstance(received, list) and expected == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)
