"""Schemathesis against the running service's own /openapi.json (the stand-in behind it): a
bounded fuzz run (about a minute) in which no input may produce a 5xx."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "50"))


def schemathesis_binary() -> str | None:
    return shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")


def test_no_input_the_schema_allows_or_forbids_gets_a_5xx(service, tmp_path):
    binary = schemathesis_binary()
    if binary is None:
        pytest.fail("schemathesis is not installed: it is in the project's test extras")
    proc = subprocess.run(
        [
            binary,
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-time",
            str(FUZZ_SECONDS),
            # One worker: with two threads, hypothesis parses lambda sources with ast.parse at
            # once in both, and CPython 3.11 then fails with "AST constructor recursion depth
            # mismatch" (a runtime error of the tool, not a finding; seen 1 run in 3).
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--suppress-health-check",
            "all",
            "--request-timeout",
            "30",
            "--max-failures",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    assert counts and int(counts[1]) == int(counts[2]) > 50, proc.stdout[-3000:]  # it did send requests
