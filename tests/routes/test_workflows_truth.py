"""/workflows tells the truth about what the running ComfyUI can run, and unknown ids are named.

`available` comes from ComfyUI's node catalogue (its node classes and the model files it lists),
not from MODEL_TYPE: on the stand-in (no model files) a service that claims MODEL_TYPE=sd15 still
lists the sd15 templates as unavailable, with what is missing, and the model-free templates as
available. On the real ComfyUI with the tiny SD1.5 checkpoint installed under the name the
template uses, the sd15 template is available on a service whose MODEL_TYPE is another.
An unknown workflow id answers 404 with the ids there are; a missing checkpoint, with the files
installed in that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.comfy import NO_REAL_COMFYUI, STANDIN, ComfyTarget, ServiceProcess, start_service

ROOT = Path(__file__).resolve().parents[2]
MODEL_FREE = ["invert", "solid-scale"]


def workflows_folder(root: Path) -> Path:
    """The shipped templates plus two from test_resources that need no model file."""
    folder = root / "workflows"
    shutil.copytree(ROOT / "workflows", folder)
    for name in MODEL_FREE:
        for suffix in (".json", ".manifest.json"):
            shutil.copy(ROOT / "test_resources" / "templates" / f"{name}{suffix}", folder)
    shared = json.loads((folder / "_params.json").read_text())
    for name, spec in json.loads((ROOT / "test_resources" / "templates" / "_params.json").read_text())[
        "params"
    ].items():
        shared["params"].setdefault(name, spec)
    (folder / "_params.json").write_text(json.dumps(shared))
    return folder


@pytest.fixture(scope="module")
def standin_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("truth")
    target = ComfyTarget("standin", STANDIN, sys.executable, "")
    service = start_service(target, root / "state", WORKFLOWS_DIR=str(workflows_folder(root)), MODEL_TYPE="sd15")
    yield service
    service.stop()


def listing(service: ServiceProcess, query: str = "") -> dict[str, dict]:
    response = service.get(f"/workflows{query}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body["errors"]
    return {w["id"]: w for w in body["workflows"]}


def wait_for_catalogue(service: ServiceProcess) -> dict[str, dict]:
    deadline = time.monotonic() + 30
    while True:
        listed = listing(service)
        if listed["invert"]["available"] is not None:
            return listed
        assert time.monotonic() < deadline, "the node catalogue never loaded"
        time.sleep(0.1)


def test_availability_is_what_comfyui_has_not_the_model_type(standin_service):
    listed = wait_for_catalogue(standin_service)
    for name in MODEL_FREE:
        assert listed[name]["available"] is True and "missing" not in listed[name], listed[name]
    sd15 = listed["sd15-txt2img"]
    assert sd15["model_type"] == "sd15"  # this service's MODEL_TYPE, and still:
    assert sd15["available"] is False
    assert any("v1-5-pruned-emaonly.safetensors" in line for line in sd15["missing"]), sd15
    lora = listed["sd15-lora-txt2img"]  # its checkpoint is missing; its LoRA is the caller's to name
    assert lora["available"] is False and lora["missing"] == sd15["missing"], lora
    flux = listed["flux1-schnell-txt2img"]
    assert flux["available"] is False and any("unet_name" in line for line in flux["missing"]), flux
    only = listing(standin_service, "?available=true")
    assert sorted(only) == MODEL_FREE
    one = standin_service.get("/workflows/sd15-txt2img").json()
    assert one["available"] is False and one["missing"] == sd15["missing"] and "params" in one


def test_an_unknown_workflow_id_lists_the_ids_there_are(standin_service):
    for response in (
        standin_service.post("/predict", json={"workflow_id": "flux-txt2img", "params": {"prompt": "a fox"}}),
        standin_service.get("/workflows/flux-txt2img"),
    ):
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "not_found" and error["workflow_id"] == "flux-txt2img"
        assert "flux1-schnell-txt2img" in error["workflows"] and "sd15-txt2img" in error["workflows"]
        assert "flux1-dev-txt2img" in error["message"], error["message"]


def test_a_missing_checkpoint_answers_with_the_folder_it_looked_in(standin_service):
    response = standin_service.post("/predict", json={"workflow_id": "sd15-txt2img", "params": {"prompt": "a fox"}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "workflow_invalid"
    assert "'v1-5-pruned-emaonly.safetensors' is not installed, the files there are: none" in error["message"]
    assert error["missing_files"][0]["input"] == "ckpt_name"


# --- the real ComfyUI, with the tiny SD1.5 checkpoint installed under two names ----------------


@pytest.fixture(scope="module")
def real_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    path = request.config.getoption("--comfyui-path")
    if not path:
        pytest.skip(NO_REAL_COMFYUI)
    tiny = request.getfixturevalue("tiny_checkpoint")
    root = tmp_path_factory.mktemp("truth-real")
    models = root / "models" / "checkpoints"
    models.mkdir(parents=True)
    for name in ("tiny-sd15.safetensors", "v1-5-pruned-emaonly.safetensors"):
        (models / name).symlink_to(tiny.path)
    python = request.config.getoption("--comfyui-python") or "python3"
    target = ComfyTarget(
        "real", Path(path).resolve(), python, os.environ.get("COMFYUI_TEST_ARGS", "--cpu --disable-api-nodes")
    )
    service = ServiceProcess(
        target,
        root / "state",
        env={
            "MODELS_DIR": str(root / "models"),
            "MODEL_TYPE": "flux1-dev",
            "WORKFLOWS_DIR": str(workflows_folder(root)),
        },
    )
    yield service.start().wait_ready(300)
    service.stop()


def test_real_comfyui_runs_the_sd15_template_whatever_the_model_type(real_service):
    listed = wait_for_catalogue(real_service)
    assert listed["sd15-txt2img"]["available"] is True, listed["sd15-txt2img"]
    # no LoRA installed: the caller names one (a file or a URL), so the template runs all the same
    assert listed["sd15-lora-txt2img"]["available"] is True, listed["sd15-lora-txt2img"]
    assert listed["flux1-dev-txt2img"]["available"] is False  # the service's MODEL_TYPE, without its files
    assert "sd15-txt2img" in listing(real_service, "?available=true")


def test_real_comfyui_names_the_installed_checkpoints(real_service):
    params = {"prompt": "a fox", "checkpoint": "absent.safetensors"}
    response = real_service.post("/predict", json={"workflow_id": "sd15-txt2img", "params": params})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert sorted(error["missing_files"][0]["installed"]) == [
        "tiny-sd15.safetensors",
        "v1-5-pruned-emaonly.safetensors",
    ]
    assert "tiny-sd15.safetensors" in error["message"]
