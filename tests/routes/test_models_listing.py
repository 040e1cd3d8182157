"""/models lists model files only: no Python caches, hidden files or hidden folders (ComfyUI lists
every file of a folder without an extension filter, custom_nodes' `__pycache__/*.pyc` and `.git`
included)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess, start_service


@pytest.fixture
def models_service(tmp_path: Path) -> Iterator[ServiceProcess]:
    models = tmp_path / "models"
    for name in (
        "checkpoints/real.safetensors",
        "checkpoints/sub/other.ckpt",
        "checkpoints/.hidden.safetensors",
        "custom_nodes/my-node/__init__.py",
        "custom_nodes/my-node/__pycache__/__init__.cpython-311.pyc",
        "custom_nodes/__pycache__/x.cpython-311.pyc",
        "custom_nodes/my-node/.git/HEAD",
        "custom_nodes/stray.pyc",
    ):
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).write_bytes(b"x")
    target = ComfyTarget("standin", STANDIN, sys.executable, "")
    service = start_service(target, tmp_path / "state", MODELS_DIR=str(models))
    yield service
    service.stop()


def test_models_leaves_out_caches_and_hidden_files(models_service):
    response = models_service.get("/models", params={"refresh": "true"})
    assert response.status_code == 200, response.text
    models = response.json()["models"]
    assert models["checkpoints"] == ["real.safetensors", "sub/other.ckpt"]
    assert models["custom_nodes"] == ["my-node/__init__.py"]


def test_worth_listing():
    from handler.comfyui.instance import worth_listing

    assert worth_listing("a/b.safetensors") and worth_listing("dir.v2/x.pt")
    assert not any(map(worth_listing, ["__pycache__/a.pyc", "x/.git/HEAD", ".DS_Store", "a.pyc", "x\\.cache\\y"]))
