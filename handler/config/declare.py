"""How a setting is declared, and how the environment is read into the declared fields.

A setting is a field of a section dataclass, declared once with `setting(...)`: the environment
variable(s) it comes from, its default, one line of help, and (only where its type does not say
it) how its text is parsed. `read` turns an environment into one value per field: unset or empty
means the default; a value that cannot be used raises `ConfigError` naming the variable. Settings
whose default depends on another setting (cloud mode, the backends, ...) are finished by
`Settings.from_env` after the loop, with the cross-field checks.

Standard library only: the image's models stage runs the downloader, which reads its settings
through this package, with no dependency installed.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

T = TypeVar("T")

# The key under which a field's metadata holds its `Declared`.
KEY = "setting"


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True, kw_only=True)
class Section:
    """A group of settings that belong together: a frozen dataclass whose fields are all declared
    with `setting()`, titled for docs/configuration.md; its docstring is the section's note there."""

    TITLE: ClassVar[str] = ""


@dataclass(frozen=True, kw_only=True)
class Declared:
    """What `setting()` records on a field."""

    env: tuple[str, ...]  # the variables it is read from; the first one set wins
    help: str  # one line, for docs/configuration.md
    parse: Callable[[str], Any] | None  # None: chosen from the field's type
    secret: bool  # masked in /system and kept out of repr
    choices: tuple[str, ...]  # the values it may take (after parsing); () means any
    at_least: float | None  # a smaller number is raised to this (not refused)
    shown: str | None  # the default as the docs show it, where the value alone would mislead


def setting(
    *,
    env: str | tuple[str, ...],
    default: T,
    help: str,
    parse: Callable[[str], Any] | None = None,
    secret: bool = False,
    choices: tuple[str, ...] = (),
    at_least: float | None = None,
    shown: str | None = None,
) -> T:
    """A dataclass field for a setting read from `env` (see `Declared`)."""
    declared = Declared(
        env=(env,) if isinstance(env, str) else env,
        help=help,
        parse=parse,
        secret=secret,
        choices=choices,
        at_least=at_least,
        shown=shown,
    )
    return field(default=default, repr=not secret, metadata={KEY: declared})


def declared(f: dataclasses.Field[Any]) -> Declared:
    """The declaration of a settings field; a field declared without `setting()` is a mistake."""
    found = f.metadata.get(KEY)
    if not isinstance(found, Declared):
        raise TypeError(f"settings field {f.name} is not declared with setting()")
    return found


def declarations(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Declared, Any]]:
    """Each field of a settings dataclass with its declaration and its type (resolved)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f, declared(f), hints[f.name]


# --- parsers: from the text of a variable to a value (empty text never reaches them)


def flag(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def words(text: str) -> tuple[str, ...]:
    """A comma-separated list; blanks dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def upper(text: str) -> str:
    return text.upper()


def lower(text: str) -> str:
    return text.lower()


def url(text: str) -> str | None:
    """A base URL, without its trailing slash ("/" alone is no URL)."""
    return text.rstrip("/") or None


class Unreadable(ValueError):
    """A parser's refusal, worded to follow the variable's name: "must be a number"."""


def _number(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return kind(text)
        except ValueError:
            raise Unreadable("must be a number") from None

    return parse


def parser_for(kind: Any) -> Callable[[str], Any]:
    """The parser a field's type implies: bool, int, float, str, Path, tuple[str, ...], an enum,
    or any of them `| None`."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        (inner,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
        return parser_for(inner)
    if kind is bool:
        return flag
    if kind in (int, float):
        return _number(kind)
    if kind is str:
        return str
    if kind is Path:
        return Path
    if typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...):
        return words
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind
    raise TypeError(f"no parser for settings of type {kind!r}: declare one with setting(parse=...)")


def choices_of(kind: Any, declared: Declared) -> tuple[str, ...]:
    """The values a setting may take: declared, or an enum type's values."""
    if declared.choices:
        return declared.choices
    inner = [arg for arg in typing.get_args(kind) if arg is not type(None)] or [kind]
    if isinstance(inner[0], type) and issubclass(inner[0], enum.Enum):
        return tuple(str(member.value) for member in inner[0])
    return ()


def one_of(choices: Sequence[str]) -> str:
    """'a, b or c'."""
    return f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]


def raw(env: Mapping[str, str], declared: Declared) -> tuple[str, str] | None:
    """The first of the declaration's variables that is set and not empty: (name, text)."""
    for name in declared.env:
        text = env.get(name)
        if text:
            return name, text
    return None


def read(cls: type, env: Mapping[str, str]) -> tuple[dict[str, Any], set[str]]:
    """Every field of `cls` read from `env`: the values (defaults where unset), and the names of
    the fields that were set."""
    values: dict[str, Any] = {}
    given: set[str] = set()
    for f, decl, kind in declarations(cls):
        found = raw(env, decl)
        if found is None:
            values[f.name] = f.default
            continue
        name, text = found
        given.add(f.name)
        values[f.name] = _value(name, text, decl, kind)
    return values, given


def _value(name: str, text: str, decl: Declared, kind: Any) -> Any:
    """One variable's text as its field's value, or a `ConfigError` that names the variable."""
    choices = choices_of(kind, decl)
    # Without a parser of its own, the text itself must be one of the choices (an enum's values);
    # with one (e.g. `lower`), what it makes of the text must be.
    if choices and decl.parse is None and text not in choices:
        raise ConfigError(f"{name} must be {one_of(choices)}, got {text!r}")
    try:
        value = (decl.parse or parser_for(kind))(text)
    except Unreadable as exc:
        raise ConfigError(f"{name} {exc}, got {text!r}") from None
    except ValueError as exc:
        raise ConfigError(f"{name} cannot be read ({exc}), got {text!r}") from None
    if choices and decl.parse is not None and value not in choices:
        raise ConfigError(f"{name} must be {one_of(choices)}, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{name} must not be negative, got {text!r}")
        if decl.at_least is not None:
            value = max(value, decl.at_least)
    return value
