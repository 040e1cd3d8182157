"""docs/configuration.md, written from the declarations: one table per section (variable, default,
meaning). `python -m handler.config --markdown > docs/configuration.md` regenerates it; a test
fails when the file in the repository differs from what this writes."""

from __future__ import annotations

import enum
import inspect
import re
from pathlib import Path
from typing import Any

from handler.config.declare import Declared, choices_of, declarations, one_of
from handler.config.settings import SECTIONS

COMMAND = "python -m handler.config --markdown > docs/configuration.md"
MiB = 1024 * 1024

INTRO = f"""\
# Configuration

Everything is read from the environment, once, at start (`Settings.from_env` in
`handler/config/`). A variable that is unset or empty takes its default; a value the service
cannot use stops it at start with a message naming the variable. Numbers may not be negative.
Times are in seconds and sizes in bytes unless a name says otherwise.

<!-- Generated from the declarations in handler/config/ by `{COMMAND}`: edit those, not this file. -->
"""


def shown_default(value: Any, declared: Declared) -> str:
    """A default as a reader wants it: "64 MiB", "600", "true", "–" for none."""
    if declared.shown is not None:
        return declared.shown
    if value is None or value == () or value == "":
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"{value // MiB} MiB"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path):
        return f"`{value}`"
    return str(value)


def _linked(text: str) -> str:
    """docs/x.md, as the declarations name it, as a link from docs/configuration.md."""
    return re.sub(r"\bdocs/([\w-]+\.md)", r"[\1](\1)", text)


def _cell(text: str) -> str:
    return _linked(text).replace("|", "\\|")


def markdown() -> str:
    """The whole of docs/configuration.md."""
    parts = [INTRO]
    for section in SECTIONS:
        parts.append(f"\n## {section.TITLE}\n")
        intro = inspect.getdoc(section)
        if intro:
            parts.append(f"\n{_linked(' '.join(intro.split()))}\n")
        source = section.__module__.replace(".", "/") + ".py"
        parts.append(f"\nDeclared in `{source}` (`{section.__name__}`).\n")
        parts.append("\n| variable | default | meaning |\n|---|---|---|\n")
        for f, declared, kind in declarations(section):
            names = " or ".join(f"`{name}`" for name in declared.env)
            meaning = declared.help
            choices = choices_of(kind, declared)
            if choices and not all(f"`{choice}`" in meaning for choice in choices):
                meaning += f": {one_of([f'`{choice}`' for choice in choices])}"
            parts.append(f"| {names} | {_cell(shown_default(f.default, declared))} | {_cell(meaning)} |\n")
    return "".join(parts)
