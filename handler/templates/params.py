"""A template's typed parameters: what each one is (`Param`, its JSON Schema), the template they
belong to (`Template`), and how a request's values become the values written into the graph
(`resolve`: given, default or random; a bad value is an `InvalidParameter` (422) naming it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from handler.errors import InvalidParameter

TYPES = ("string", "integer", "number", "boolean", "enum", "image")
# A value that names an entry of the request's `images` rather than carrying the image itself.
IMAGE_NAME = re.compile(r"^[\w][\w .()-]*\.(png|jpe?g|webp|gif|bmp|tiff?)$", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")


@dataclass(frozen=True)
class Target:
    """The graph input a parameter's value is written into."""

    node: str
    input: str

    def __str__(self) -> str:
        return f"{self.node}.{self.input}"


@dataclass(frozen=True)
class Param:
    """One parameter of a template, as its manifest (and `_params.json`) define it."""

    name: str
    type: str
    targets: tuple[Target, ...]
    description: str = ""
    title: str | None = None
    default: Any = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    multiple_of: float | None = None
    max_length: int | None = None
    values: tuple[Any, ...] | None = None
    random: bool = False
    examples: tuple[Any, ...] = ()

    def schema(self) -> dict[str, Any]:
        """This parameter as JSON Schema (2020-12, also valid in OpenAPI 3.1)."""
        if self.type == "enum":
            base: dict[str, Any] = {"enum": list(self.values or ())}
            if all(isinstance(v, str) for v in base["enum"]):
                base = {"type": "string", **base}
        elif self.type == "image":
            base = {
                "type": "string",
                "minLength": 1,
                "contentMediaType": "image/*",
            }
        else:
            base = {"type": self.type}
            if self.type in ("integer", "number"):
                for key, word in (("min", "minimum"), ("max", "maximum"), ("multiple_of", "multipleOf")):
                    if getattr(self, key) is not None:
                        base[word] = getattr(self, key)
            if self.type == "string":
                if self.values:
                    base["enum"] = list(self.values)
                if self.max_length:
                    base["maxLength"] = self.max_length
        schema: dict[str, Any] = {"anyOf": [base, {"const": "random"}]} if self.random else base
        if self.title:
            schema["title"] = self.title
        description = self.description
        if self.type == "image":
            description = (description + " " if description else "") + (
                "Base64, a data URI, an http(s) URL, or the name of an entry of `images`."
            )
        if self.random:
            description = (description + " " if description else "") + '"random" picks a fresh value.'
        if description:
            schema["description"] = description
        if self.default is not None:
            schema["default"] = self.default
        if self.examples:
            schema["examples"] = list(self.examples)
        return schema


@dataclass(frozen=True)
class Template:
    """A named workflow: its graph and parameters, from `<id>.json` and `<id>.manifest.json`."""

    id: str
    graph: dict[str, Any]
    params: dict[str, Param]
    title: str
    description: str = ""
    model_type: str | None = None

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "title": f"{self.id} parameters",
            "type": "object",
            "properties": {name: p.schema() for name, p in self.params.items()},
            "additionalProperties": False,
        }
        required = [name for name, p in self.params.items() if p.required]
        if required:
            schema["required"] = required
        return schema

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "description": self.description, "model_type": self.model_type}


def value_problem(param: Param, value: Any) -> str | None:
    """Why `value` does not fit `param`, or None."""
    errors = jsonschema.Draft202012Validator(param.schema()).iter_errors(value)
    # The stubs leave best_match's return unannotated.
    error: jsonschema.exceptions.ValidationError | None = jsonschema.exceptions.best_match(errors)
    if error is None:
        if param.type == "image" and not _image_value_ok(value):
            return "expected base64, a data URI, an http(s) URL or an image file name"
        return None
    if error.validator in ("anyOf", "oneOf") and param.random:
        return f'{value!r} is neither an integer within the limits nor "random"'
    return error.message


def _image_value_ok(value: str) -> bool:
    text = value.strip()
    if text.startswith(("http://", "https://", "data:")) or IMAGE_NAME.match(text):
        return True
    return bool(_BASE64.match(text[:4096])) and len(text) >= 8


def resolve(template: Template, params: Any) -> dict[str, Any]:
    """The value of every parameter to fill: given, default or random; InvalidParameter if wrong."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParameter("params must be an object of parameter names to values")
    unknown = sorted(set(params) - set(template.params))
    if unknown:
        raise InvalidParameter(
            f"unknown parameter {unknown[0]!r}: {template.id} takes {', '.join(template.params) or 'no parameters'}",
            param=unknown[0],
        )
    values: dict[str, Any] = {}
    problems: list[dict[str, str]] = []
    for name, param in template.params.items():
        if name not in params or params[name] is None:
            if param.required:
                problems.append({"param": name, "message": f"parameter {name!r} is required"})
                continue
            if param.default is None:
                continue  # the graph keeps its own value
            value = param.default
        else:
            value = params[name]
            problem = value_problem(param, value)
            if problem:
                problems.append({"param": name, "message": f"parameter {name!r}: {problem}"})
                continue
        values[name] = _final(param, value)
    if problems:
        first = problems[0]
        raise InvalidParameter(first["message"], param=first["param"], errors=problems if len(problems) > 1 else None)
    return values


def _final(param: Param, value: Any) -> Any:
    if param.random and value == "random":
        low = int(param.min) if param.min is not None else 0
        high = int(param.max) if param.max is not None else 2**53 - 1
        return random.randint(low, high)
    if param.type == "integer":
        return int(value)
    if param.type == "number":
        return float(value) if not isinstance(value, int) else value
    if param.type == "image":
        return value.strip()
    return value
