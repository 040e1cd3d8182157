"""Error bodies: scrubbed of private folder names and server paths, and bounded in size."""

from __future__ import annotations

import json
from pathlib import Path

from handler.errors import ExecutionFailed, WorkflowInvalid, register_private_path, scrub, scrub_text
from handler.predict_request import new_folder_name


def test_folder_names_are_replaced_wherever_they_occur():
    mine, other = new_folder_name(), new_folder_name()
    text = f"folder: 'nope' not in ['{mine}', '{other}/masks', '3d']"
    assert scrub_text(text) == "folder: 'nope' not in ['<request>', '<request>/masks', '3d']"
    assert scrub_text("a" + mine[1:]) == "a" + mine[1:]  # only the shape of our names


def test_registered_folders_become_placeholders(tmp_path: Path):
    register_private_path(tmp_path / "in", "<input>")
    register_private_path(tmp_path, "<server>")
    assert scrub_text(f"Is a directory: '{tmp_path}/in/3d'") == "Is a directory: '<input>/3d'"
    assert scrub_text(f"cwd {tmp_path}/x, not {tmp_path}x") == f"cwd <server>/x, not {tmp_path}x"


def test_every_error_body_is_scrubbed_and_bounded(tmp_path: Path):
    register_private_path(tmp_path, "<server>")
    name = new_folder_name()
    error = WorkflowInvalid(
        "refused",
        comfyui_error={"details": f"{tmp_path}/{name}"},
        node_errors={str(i): {"errors": ["x" * 10_000]} for i in range(500)},
    )
    body = json.dumps(error.to_dict())
    assert name not in body and str(tmp_path) not in body
    assert len(body) < 100_000
    huge = ExecutionFailed("p" * 1_000_000, exception_message="q" * 1_000_000).to_dict()
    assert len(json.dumps(huge)) < 5_000


def test_deep_values_are_cut_not_recursed():
    value: object = "leaf"
    for _ in range(5000):
        value = [value]
    assert json.dumps(scrub(value)).count("[") < 20
