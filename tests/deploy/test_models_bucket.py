"""Where deploy.sh puts the models, against the recording `gcloud`: a model set over the 10 GB Google
advises baking into a Cloud Run GPU image is by default mounted from a models bucket deploy.sh
creates, fills with a models-only Cloud Build (deploy/cloudbuild-models.yaml) unless its marker
says the set is already there, and mounts; smaller sets, and any set with --bake-models, are baked.
The models build's own steps run here as Cloud Build runs them: the project's downloader against
a local HTTP server, then the upload with the marker last."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.fixtures.deploy import PROJECT, REGION, ROOT, TAG, Stub, find, flag, index, substitute
from tests.fixtures.modelserver import serve

MODELS_CONFIG = ROOT / "deploy" / "cloudbuild-models.yaml"
MODELS_BUCKET = f"{PROJECT}-comfyui-models"
RUN_SA = f"serviceAccount:comfyui-run@{PROJECT}.iam.gserviceaccount.com"
BUILD_SA = f"serviceAccount:comfyui-build@{PROJECT}.iam.gserviceaccount.com"


def model_set(model_type: str, models_txt: str | None = None) -> tuple[int, str]:
    """(bytes, digest) of a model type's files: what deploy.sh sizes and names the set by."""
    lines = []
    for line in (models_txt or (ROOT / "models.txt").read_text()).splitlines():
        cols = line.split()
        if cols and not cols[0].startswith("#") and model_type in cols[0].split(","):
            lines.append(" ".join(cols[1:5]))
    data = "".join(f"{line}\n" for line in lines).encode()
    return sum(int(line.split()[3]) for line in lines), hashlib.sha256(data).hexdigest()[:16]


def env_of(argv: list[str]) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in flag(argv, "--set-env-vars")[0].split(","))


def subs_of(argv: list[str]) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in flag(argv, "--substitutions")[0].split(","))


def builds(recs: list[dict]) -> dict[str, list[str]]:
    """The submitted builds by config file name."""
    return {Path(flag(r["argv"], "--config")[0]).name: r["argv"] for r in find(recs, "builds", "submit")}


def test_over_10_gb_the_default_is_a_models_bucket_filled_once_and_mounted(stub):
    size, digest = model_set("flux1-dev-fp8")
    assert size > 10 * 10**9  # the default model type: about 17 GB
    proc, recs = stub.deploy(PROJECT, REGION, TAG, env={"HF_TOKEN": "hf_x"})
    assert proc.returncode == 0, proc.stderr
    uri = f"gs://{MODELS_BUCKET}/flux1-dev-fp8/{digest}"
    assert f"models: mounted from {uri}: flux1-dev-fp8's files are 17.2 GB, over the 10 GB" in proc.stderr

    (create,) = find(recs, "storage", "buckets", "create", f"gs://{MODELS_BUCKET}")
    assert flag(create["argv"], "--location") == [REGION] and "--uniform-bucket-level-access" in create["argv"]
    grants = {
        (flag(r["argv"], "--member")[0], flag(r["argv"], "--role")[0])
        for r in find(recs, "storage", "buckets", "add-iam-policy-binding", f"gs://{MODELS_BUCKET}")
    }
    assert grants == {(RUN_SA, "roles/storage.objectViewer"), (BUILD_SA, "roles/storage.objectAdmin")}

    # the models build first (it checks the marker), then the image as `base`, then the services
    submitted = builds(recs)
    assert sorted(submitted) == ["cloudbuild-models.yaml", "cloudbuild.yaml"]
    marker = index(recs, "storage", "objects", "describe", f"{uri}/.complete")
    models_build = index(recs, "builds", "submit")
    assert marker < models_build and recs[models_build]["argv"] == submitted["cloudbuild-models.yaml"]
    assert subs_of(submitted["cloudbuild-models.yaml"]) == {
        "_MODEL_TYPE": "flux1-dev-fp8",
        "_HF_SECRET": "hf-token",
        "_MODELS_URI": uri,
        "_MARKER": ".complete",
    }
    assert flag(submitted["cloudbuild-models.yaml"], "--service-account") == [
        f"projects/{PROJECT}/serviceAccounts/comfyui-build@{PROJECT}.iam.gserviceaccount.com"
    ]
    assert subs_of(submitted["cloudbuild.yaml"])["_MODEL_TYPE"] == "base"

    worker = find(recs, "run", "deploy", "comfyui")[0]["argv"]
    assert flag(worker, "--add-volume") == [f"name=models,type=cloud-storage,bucket={MODELS_BUCKET},readonly=true"]
    assert flag(worker, "--add-volume-mount") == ["volume=models,mount-path=/mnt/models"]
    env = env_of(worker)
    assert env["MODEL_TYPE"] == "flux1-dev-fp8" and env["MODELS_SOURCE"] == f"/mnt/models/flux1-dev-fp8/{digest}"


def test_a_model_set_already_in_the_bucket_is_not_copied_again(stub):
    _, digest = model_set("flux1-dev-fp8")
    stub.put("object", f"gs://{MODELS_BUCKET}/flux1-dev-fp8/{digest}/.complete")
    proc, recs = stub.deploy(PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    assert sorted(builds(recs)) == ["cloudbuild.yaml"]
    assert "already holds flux1-dev-fp8's files; nothing to copy" in proc.stderr
    worker = find(recs, "run", "deploy", "comfyui")[0]["argv"]
    assert env_of(worker)["MODELS_SOURCE"] == f"/mnt/models/flux1-dev-fp8/{digest}"

    # another model set has no marker yet: it is filled, under its own prefix
    proc, recs = stub.deploy("--model-type", "flux1-schnell", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    uri = subs_of(builds(recs)["cloudbuild-models.yaml"])["_MODELS_URI"]
    assert uri == f"gs://{MODELS_BUCKET}/flux1-schnell/{model_set('flux1-schnell')[1]}"


def test_under_10_gb_the_models_stay_baked(stub):
    size, _ = model_set("sdxl")
    assert size < 10 * 10**9
    proc, recs = stub.deploy("--model-type", "sdxl", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    assert "models: baked into the image: sdxl's files are 6.9 GB, within the 10 GB" in proc.stderr
    assert sorted(builds(recs)) == ["cloudbuild.yaml"]
    assert subs_of(builds(recs)["cloudbuild.yaml"])["_MODEL_TYPE"] == "sdxl"
    assert find(recs, "storage", "buckets", "create", f"gs://{MODELS_BUCKET}") == []
    worker = find(recs, "run", "deploy", "comfyui")[0]["argv"]
    assert flag(worker, "--add-volume") == [] and "MODELS_SOURCE" not in env_of(worker)


@pytest.mark.parametrize("how", [("--bake-models",), ()])
def test_bake_models_bakes_a_large_set_with_a_warning(stub, how):
    proc, recs = stub.deploy(*how, PROJECT, REGION, TAG, env={} if how else {"BAKE_MODELS": "true"})
    assert proc.returncode == 0, proc.stderr
    assert "warning: --bake-models: flux1-dev-fp8's files are 17.2 GB, over the 10 GB" in proc.stderr
    assert "models: baked into the image (--bake-models)" in proc.stderr
    assert sorted(builds(recs)) == ["cloudbuild.yaml"]
    subs = subs_of(builds(recs)["cloudbuild.yaml"])
    assert (subs["_MODEL_TYPE"], subs["_BAKE_MODELS"]) == ("flux1-dev-fp8", "true")  # cloudbuild's models-fit step
    assert find(recs, "storage", "buckets", "create", f"gs://{MODELS_BUCKET}") == []
    assert flag(find(recs, "run", "deploy", "comfyui")[0]["argv"], "--add-volume") == []


def test_bake_models_and_a_bucket_of_ones_own_exclude_each_other(stub):
    proc, recs = stub.deploy("--bake-models", "--models-mount", "gs://store/m", PROJECT, REGION, TAG)
    assert proc.returncode == 2 and "--bake-models puts the models in the image" in proc.stderr and recs == []


def test_a_gated_model_set_needs_the_token_for_its_models_build(stub):
    proc, recs = stub.deploy("--model-type", "flux1-dev", PROJECT, REGION, TAG)
    assert proc.returncode == 2 and "gated on Hugging Face: set HF_TOKEN" in proc.stderr
    assert find(recs, "builds", "submit") == []
    proc, recs = stub.deploy("--model-type", "flux1-dev", PROJECT, REGION, TAG, env={"HF_TOKEN": "hf_x"})
    assert proc.returncode == 0, proc.stderr
    assert subs_of(builds(recs)["cloudbuild-models.yaml"])["_HF_SECRET"] == "hf-token"
    # an operator's own bucket holds the files already: no token needed
    proc, _ = stub.deploy("--model-type", "flux1-dev", "--models-mount", "gs://store/m", PROJECT, REGION, "t2")
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- the models build itself


def models_config() -> dict:
    return YAML(typ="safe").load(MODELS_CONFIG.read_text())


def test_the_models_build_matches_the_cloud_build_schema_and_takes_the_token_as_the_image_build_does():
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which(
        "check-jsonschema"
    )
    assert checker, "check-jsonschema is not installed (it is in the project's test extras)"
    proc = subprocess.run(
        [checker, "--builtin-schema", "vendor.cloudbuild", str(MODELS_CONFIG)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = models_config()
    image_build = YAML(typ="safe").load((ROOT / "cloudbuild.yaml").read_text())
    assert config["availableSecrets"] == image_build["availableSecrets"]
    download, upload = config["steps"]
    assert download["secretEnv"] == ["HF_TOKEN"] and "secretEnv" not in upload
    assert "HF_TOKEN" not in download["args"][1].replace('"$$HF_TOKEN"', "")
    # the Python of the image's models stage runs the same downloader
    python_image = next(
        line.split("=", 1)[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("ARG PYTHON_IMAGE=")
    )
    assert download["name"] == python_image
    assert 'python -m handler.models --model-type "${_MODEL_TYPE}"' in download["args"][1]
    assert set(config["substitutions"]) == {"_MODEL_TYPE", "_HF_SECRET", "_MODELS_URI", "_MARKER"}


def run_step(step: dict, workspace: Path, env: dict[str, str], **values: str) -> subprocess.CompletedProcess[str]:
    """A step's script as Cloud Build runs it, in WORKSPACE (standing for /workspace)."""
    assert step["entrypoint"] == "bash" and step["args"][0] == "-c"
    script = substitute(step["args"][1], {**models_config()["substitutions"], **values, "PROJECT_ID": PROJECT})
    script = script.replace("/workspace", str(workspace)).replace("/tmp/hf_token", str(workspace.parent / "hf_token"))
    return subprocess.run(["bash", "-c", script], cwd=workspace, env=env, capture_output=True, text=True, timeout=120)


def test_the_models_build_fetches_verified_files_then_uploads_them_with_the_marker_last(tmp_path):
    blob = os.urandom(4096)
    with serve({"tiny.safetensors": blob}) as server:
        workspace = tmp_path / "workspace"
        for part in ("handler/__init__.py", "handler/config", "handler/models"):
            src, dst = ROOT / part, workspace / part
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
        url = server.url("plain", "tiny.safetensors")
        digest = hashlib.sha256(blob).hexdigest()
        bindir = tmp_path / "python-bin"
        bindir.mkdir()
        (bindir / "python").symlink_to(sys.executable)
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "HF_TOKEN", "MODEL_TYPE"}}
        env.update(PATH=f"{bindir}{os.pathsep}{env['PATH']}", HF_TOKEN="", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        download, upload = models_config()["steps"]

        (workspace / "models.txt").write_text(f"tiny {url} checkpoints/tiny.safetensors {'0' * 64} {len(blob)}\n")
        proc = run_step(download, workspace, env, _MODEL_TYPE="tiny")
        assert proc.returncode != 0 and "sha256" in proc.stderr  # a wrong checksum fails the build
        (workspace / "models.txt").write_text(f"tiny {url} checkpoints/tiny.safetensors {digest} {len(blob)}\n")
        proc = run_step(download, workspace, env, _MODEL_TYPE="tiny")
        assert proc.returncode == 0, proc.stderr
        assert (workspace / "models" / "checkpoints" / "tiny.safetensors").read_bytes() == blob

    (tmp_path / "stub").mkdir()
    stub = Stub(tmp_path / "stub")
    uri = "gs://b/tiny/0123456789abcdef"
    proc = run_step(upload, workspace, stub.env, _MODELS_URI=uri, _MODEL_TYPE="tiny")
    assert proc.returncode == 0, proc.stderr
    assert [r["argv"] for r in stub.records()] == [
        ["storage", "rsync", "--recursive", str(workspace / "models"), uri],
        ["storage", "cp", "-", f"{uri}/.complete"],
    ]
    assert stub.records()[-1]["stdin_len"] == len("tiny\n")
    assert not (workspace / "models" / ".modelfiles.json").exists()  # the downloader's record stays behind

    stub.fail("storage rsync --recursive")  # an upload cut short writes no marker
    proc = run_step(upload, workspace, stub.env, _MODELS_URI=uri)
    assert proc.returncode != 0 and len(find(stub.records(), "storage", "cp")) == 1
    proc = run_step(upload, workspace, stub.env, _MODELS_URI="")
    assert proc.returncode == 2 and "_MODELS_URI must be gs://BUCKET/PREFIX" in proc.stderr
