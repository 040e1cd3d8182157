"""cloudbuild.yaml's deploy step run as Cloud Build runs it: the step's script with Cloud Build's
substitutions applied ($$ to $, ${_X} and $PROJECT_ID to their values), in bash, with the recording
gcloud stub (tests/deploy_fixtures/gcloud) first on PATH."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.fixtures.deploy import Stub, find, flag, substitute

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "demo-project"


def run_step(stub: Stub, step_id: str, **given: str) -> subprocess.CompletedProcess[str]:
    config = YAML(typ="safe").load((ROOT / "cloudbuild.yaml").read_text())
    (step,) = [s for s in config["steps"] if s["id"] == step_id]
    values = {**config["substitutions"], **given, "PROJECT_ID": PROJECT}
    assert step["args"][0] == "-c" and step["entrypoint"] == "bash"
    script = substitute(step["args"][1], values)
    return subprocess.run(["bash", "-c", script], env=stub.env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def stub(tmp_path):
    return Stub(tmp_path)


def test_deploy_true_rolls_out_both_roles_api_first(stub):
    proc = run_step(stub, "deploy", _DEPLOY="true", _TAG="v7", _MODEL_TYPE="sdxl", _REGION="europe-west4")
    assert proc.returncode == 0, proc.stderr
    deploys = find(stub.records(), "run", "deploy")
    assert [d["argv"][2] for d in deploys] == ["comfyui-api", "comfyui"]
    registry = f"europe-west4-docker.pkg.dev/{PROJECT}/comfyui"
    api, worker = (d["argv"] for d in deploys)
    assert flag(api, "--image") == [f"{registry}/comfyui-api:v7"] and flag(api, "--update-env-vars") == []
    assert flag(worker, "--image") == [f"{registry}/comfyui:v7"]
    assert flag(worker, "--update-env-vars") == ["MODEL_TYPE=sdxl"]
    assert all(flag(d, "--region") == ["europe-west4"] for d in (api, worker))


def test_a_base_image_keeps_the_services_runtime_model_type(stub):
    proc = run_step(stub, "deploy", _DEPLOY="true", _MODEL_TYPE="base")
    assert proc.returncode == 0, proc.stderr
    worker = find(stub.records(), "run", "deploy", "comfyui")[0]["argv"]
    assert flag(worker, "--update-env-vars") == []


@pytest.mark.parametrize(
    ("model_type", "bake", "fits"),
    [
        ("sdxl", "false", True),
        ("base", "false", True),
        ("flux1-dev-fp8", "false", False),
        ("flux1-dev-fp8", "true", True),
    ],
)
def test_a_model_set_over_10_gb_is_baked_only_when_asked(stub, model_type, bake, fits):
    """cloudbuild.yaml used by hand (without deploy.sh, which mounts large sets from a bucket)
    stops before building an image that carries more than Google's advised 10 GB of models."""
    config = YAML(typ="safe").load((ROOT / "cloudbuild.yaml").read_text())
    assert [s["id"] for s in config["steps"]][:2] == ["models-fit", "build"]
    step = next(s for s in config["steps"] if s["id"] == "models-fit")
    script = substitute(step["args"][1], {**config["substitutions"], "_MODEL_TYPE": model_type, "_BAKE_MODELS": bake})
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (proc.returncode == 0) == fits, proc.stdout + proc.stderr
    if not fits:
        assert "flux1-dev-fp8's models are 17 GB, over the 10 GB" in proc.stderr
        assert "_BAKE_MODELS=true" in proc.stderr


def test_without_deploy_nothing_is_rolled_out(stub):
    proc = run_step(stub, "deploy")
    assert proc.returncode == 0 and stub.records() == []
    assert "images pushed, not deployed" in proc.stdout


def test_the_worker_cache_holds_the_image_layers_only():
    """mode=max would export the models stage's download layer next to the image's copy of it:
    the models twice per model type. See cloudbuild.yaml's note on the cache."""
    config = YAML(typ="safe").load((ROOT / "cloudbuild.yaml").read_text())
    (build,) = [s for s in config["steps"] if s["id"] == "build"]
    script = build["args"][1]
    worker = script[script.index("--target worker") : script.index("--target api")]
    (cache_to,) = re.findall(r'--cache-to "([^"]+)"', worker)
    assert "mode=min" in cache_to and "mode=max" not in cache_to
