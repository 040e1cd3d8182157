"""Prompt validation against the catalog, with ComfyUI's error types and shapes.

A prompt is checked from its output nodes up through their links; only the nodes reachable from
an output are checked. Errors are reported per node (`node_errors`) and, for the outputs that
failed, summed up in the top-level `error`.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from typing import Any

from .catalog import Catalog

log = logging.getLogger("standin")

ANY = "*"
COMBO = "COMBO"
MATCHTYPE = "COMFY_MATCHTYPE_V3"
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
AUTOGROW = "COMFY_AUTOGROW_V3"


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


def full_type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def types_compatible(received: Any, expected: Any) -> bool:
    """Whether an output of type `received` may feed an input of type `expected`."""
    if received == expected:
        return True
    if ANY in (received, expected) or MATCHTYPE in (received, expected):
        return True
    if isinstance(received, list) and expected == COMBO:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    if ANY in got or ANY in want:
        return True
    return bool(got & want)


def expand_inputs(input_spec: dict, live: dict) -> tuple[dict, dict]:
    """The node's required and optional inputs for these live values (dynamic combos expanded)."""
    required: dict[str, list] = {}
    optional: dict[str, list] = {}
    target = {"required": required, "optional": optional}

    def walk(spec: dict, prefix: str) -> None:
        for category in ("required", "optional"):
            for name, entry in spec.get(category, {}).items():
                full = f"{prefix}{name}"
                kind = entry[0]
                if kind == DYNAMIC_COMBO:
                    if full not in live:
                        continue
                    options = entry[1].get("options", []) if len(entry) > 1 else []
                    chosen = next((o for o in options if o.get("key") == live[full]), None)
                    if chosen is None:
                        continue
                    walk(chosen.get("inputs", {}), f"{full}.")
                    target[category][full] = entry
                elif kind == AUTOGROW:
                    # Grown slots are named "<input>.<slot>": accept whatever the prompt wires there.
                    for key in live:
                        if key.startswith(f"{full}."):
                            optional[key] = [ANY, {}]
                else:
                    target[category][full] = entry

    walk(input_spec, "")
    return required, optional


class Validator:
    def __init__(self, catalog: Catalog, registry: dict, context_factory):
        self.catalog = catalog
        self.registry = registry
        self.context_factory = context_factory

    # --- one node -------------------------------------------------------------------------------
    def _custom_validator(self, class_type: str):
        impl = self.registry.get(class_type)
        fn = getattr(impl, "validate_inputs", None) if impl else None
        if fn is None:
            return None, [], False
        spec = inspect.getfullargspec(fn)
        params = [a for a in spec.args if a not in ("cls", "self", "ctx")]
        return fn, params, spec.varkw is not None

    def validate_node(self, prompt: dict, node_id: str, validated: dict, visiting: list) -> tuple:
        if node_id in validated:
            return validated[node_id]
        if node_id in visiting:
            path = visiting[visiting.index(node_id) :] + [node_id]
            members = list(dict.fromkeys(path))
            text = " -> ".join(f"{n} ({prompt[n]['class_type']})" for n in path)
            for member in members:
                validated[member] = (
                    False,
                    [
                        {
                            "type": "dependency_cycle",
                            "message": "Dependency cycle detected",
                            "details": text,
                            "extra_info": {"node_id": member, "cycle_nodes": members},
                        }
                    ],
                    member,
                )
            return validated[node_id]

        inputs = prompt[node_id]["inputs"]
        class_type = prompt[node_id]["class_type"]
        info = self.catalog.info(class_type)
        required, optional = expand_inputs(info.get("input", {}), inputs)
        validator, validator_params, validator_kwargs = self._custom_validator(class_type)

        errors: list[dict] = []
        valid = True
        received_types: dict[str, Any] = {}

        for name in list(required) + [n for n in optional if n not in required]:
            entry = required.get(name) or optional[name]
            input_type = entry[0]
            extra = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            config = [input_type, extra]
            if name not in inputs:
                if name in required:
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name.split(".")[-1] if "." in name else name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue

            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            "details": name,
                            "extra_info": {"input_name": name, "input_config": config, "received_value": value},
                        }
                    )
                    continue
                source_id = value[0]
                source_class = prompt[source_id]["class_type"]
                received = self.catalog.output_types(source_class)[value[1]]
                received_types[name] = received
                if "input_types" not in validator_params and not types_compatible(received, input_type):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received}) mismatch input_type({input_type})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": config,
                                "received_type": received,
                                "linked_node": value,
                            },
                        }
                    )
                    continue
                try:
                    visiting.append(node_id)
                    try:
                        result = self.validate_node(prompt, source_id, validated, visiting)
                    finally:
                        visiting.pop()
                    if result[0] is False:
                        valid = False
                        continue
                except Exception as ex:
                    valid = False
                    validated[source_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(ex),
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": config,
                                    "exception_message": str(ex),
                                    "exception_type": full_type_name(type(ex)),
                                    "traceback": traceback.format_tb(ex.__traceback__),
                                    "linked_node": value,
                                },
                            }
                        ],
                        source_id,
                    )
                    continue
                continue

            try:
                if isinstance(value, dict) and "__value__" in value:
                    value = value["__value__"]
                    inputs[name] = value
                converter = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(
                    input_type if isinstance(input_type, str) else None
                )
                if converter is not None:
                    value = converter(value)
                    inputs[name] = value
            except Exception as ex:
                errors.append(
                    {
                        "type": "invalid_input_type",
                        "message": f"Failed to convert an input value to a {input_type} value",
                        "details": f"{name}, {value}, {ex}",
                        "extra_info": {
                            "input_name": name,
                            "input_config": config,
                            "received_value": value,
                            "exception_message": str(ex),
                        },
                    }
                )
                continue

            if name in validator_params or validator_kwargs:
                continue
            if "min" in extra and value < extra["min"]:
                errors.append(
                    {
                        "type": "value_smaller_than_min",
                        "message": f"Value {value} smaller than min of {extra['min']}",
                        "details": name,
                        "extra_info": {"input_name": name, "input_config": config, "received_value": value},
                    }
                )
                continue
            if "max" in extra and value > extra["max"]:
                errors.append(
                    {
                        "type": "value_bigger_than_max",
                        "message": f"Value {value} bigger than max of {extra['max']}",
                        "details": name,
                        "extra_info": {"input_name": name, "input_config": config, "received_value": value},
                    }
                )
                continue
            if isinstance(input_type, list) or input_type == COMBO:
                options = input_type if isinstance(input_type, list) else extra.get("options", [])
                if extra.get("multiselect", False) and isinstance(value, list):
                    invalid = [v for v in value if v not in options]
                else:
                    invalid = [value] if value not in options else []
                if invalid:
                    if len(options) > 20:
                        listed, shown_config = f"(list of length {len(options)})", None
                    else:
                        listed, shown_config = str(options), config
                    errors.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name}: {', '.join(repr(v) for v in invalid)} not in {listed}",
                            "extra_info": {"input_name": name, "input_config": shown_config, "received_value": value},
                        }
                    )
                    continue

        if validator is not None:
            # Linked inputs are not known yet: a validator sees None for them.
            given = {}
            for name, value in inputs.items():
                if name in validator_params or validator_kwargs:
                    given[name] = None if is_link(value) else value
            if "input_types" in validator_params:
                given["input_types"] = received_types
            result = validator(self.context_factory(node_id), **given)
            if result is not True:
                for name in given:
                    details = name if result is False else f"{name} - {result}"
                    errors.append(
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": details,
                            "extra_info": {"input_name": name},
                        }
                    )

        previous = validated.get(node_id, (True, [], node_id))
        outcome = (
            previous[0] and valid and not errors,
            previous[1] + [e for e in errors if e not in previous[1]],
            node_id,
        )
        validated[node_id] = outcome
        return outcome

    # --- the whole prompt -----------------------------------------------------------------------
    def validate_prompt(self, prompt: dict, partial_targets: list | None):
        """(ok, error, outputs to execute, node_errors), as ComfyUI's `validate_prompt`."""
        outputs: list[str] = []
        for node_id, node in prompt.items():
            if "class_type" not in node:
                title = (node.get("_meta") or {}).get("title")
                return (
                    False,
                    {
                        "type": "missing_node_type",
                        "message": f"Node '{title or f'ID #{node_id}'}' has no class_type. "
                        "The workflow may be corrupted or a custom node is missing.",
                        "details": f"Node ID '#{node_id}'",
                        "extra_info": {"node_id": node_id, "class_type": None, "node_title": title},
                    },
                    [],
                    {},
                )
            class_type = node["class_type"]
            if class_type not in self.catalog:
                title = (node.get("_meta") or {}).get("title", class_type)
                return (
                    False,
                    {
                        "type": "missing_node_type",
                        "message": f"Node '{title}' not found. The custom node may not be installed.",
                        "details": f"Node ID '#{node_id}'",
                        "extra_info": {"node_id": node_id, "class_type": class_type, "node_title": title},
                    },
                    [],
                    {},
                )
            if self.catalog.is_output_node(class_type):
                if partial_targets is None or node_id in partial_targets:
                    outputs.append(node_id)

        if not outputs:
            return (
                False,
                {
                    "type": "prompt_no_outputs",
                    "message": "Prompt has no outputs",
                    "details": "",
                    "extra_info": {},
                },
                [],
                {},
            )

        good: list[str] = []
        failed: list[tuple[str, list]] = []
        node_errors: dict[str, dict] = {}
        validated: dict[str, tuple] = {}
        for output_id in outputs:
            try:
                ok, reasons, _ = self.validate_node(prompt, output_id, validated, [])
            except Exception as ex:
                ok = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(ex),
                        "extra_info": {
                            "exception_type": full_type_name(type(ex)),
                            "traceback": traceback.format_tb(ex.__traceback__),
                        },
                    }
                ]
                validated[output_id] = (False, reasons, output_id)
            if ok is True:
                good.append(output_id)
                continue
            log.error("Failed to validate prompt for output %s:", output_id)
            if reasons:
                log.error("* (prompt):")
                for reason in reasons:
                    log.error("  - %s: %s", reason["message"], reason["details"])
            failed.append((output_id, reasons))
            for failed_id, (node_ok, node_reasons, _) in validated.items():
                if node_ok is not True and node_reasons:
                    if failed_id not in node_errors:
                        node_errors[failed_id] = {
                            "errors": node_reasons,
                            "dependent_outputs": [],
                            "class_type": prompt[failed_id]["class_type"],
                        }
                        log.error("* %s %s:", prompt[failed_id]["class_type"], failed_id)
                        for reason in node_reasons:
                            log.error("  - %s: %s", reason["message"], reason["details"])
                    node_errors[failed_id]["dependent_outputs"].append(output_id)
            log.error("Output will be ignored")

        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
            return (
                False,
                {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": details,
                    "extra_info": {},
                },
                [],
                node_errors,
            )
        return (True, None, good, node_errors)
