"""docs/configuration.md is what the declarations make of it: a setting added, renamed or
redescribed without regenerating the file fails here, naming the command that regenerates it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from handler.config import Settings
from handler.config.declare import declarations
from handler.config.docs import COMMAND, markdown

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"


def test_the_configuration_doc_is_current() -> None:
    assert DOC.read_text() == markdown(), f"docs/configuration.md is stale: regenerate it with `{COMMAND}`"


def test_the_doc_lists_every_variable_once() -> None:
    first_cells = [line.split("|")[1] for line in DOC.read_text().splitlines() if line.startswith("| `")]
    listed = [name.strip(" `") for cell in first_cells for name in cell.split(" or ")]
    declared = [name for _, declaration, _ in declarations(Settings) for name in declaration.env]
    assert sorted(listed) == sorted(declared)


def test_the_command_prints_the_doc() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "handler.config", "--markdown"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout == markdown()
