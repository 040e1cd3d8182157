"""Booting ComfyUI: runtime models fetched first, warmup before ready."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from tests.fixtures.comfy import RESOURCES, STANDIN, ComfyTarget, ServiceProcess, start_service


def standin_copy(tmp_path: Path) -> ComfyTarget:
    """A stand-in of the test's own, so model files land outside the repository."""
    path = tmp_path / "tests" / "standin"
    shutil.copytree(STANDIN, path, ignore=shutil.ignore_patterns("__pycache__", "models"))
    (tmp_path / "test_resources").symlink_to(RESOURCES)  # the stand-in reads its catalogue from there
    import sys

    return ComfyTarget("standin", path, sys.executable, "")


def models_setup(tmp_path: Path, payload: bytes, digest: str) -> dict[str, str]:
    mount = tmp_path / "bucket"
    (mount / "loras").mkdir(parents=True)
    (mount / "loras" / "detail.safetensors").write_bytes(payload)
    models_txt = tmp_path / "models.txt"
    models_txt.write_text(f"# runtime models\ntest https://models.example/detail loras/detail.safetensors {digest}\n")
    return {"MODEL_TYPE": "test", "MODELS_FILE": str(models_txt), "MODELS_SOURCE": str(mount)}


def test_runtime_models_are_fetched_before_comfyui_boots(tmp_path: Path):
    payload = b"lora weights"
    target = standin_copy(tmp_path)
    service = start_service(
        target, tmp_path / "s", **models_setup(tmp_path, payload, hashlib.sha256(payload).hexdigest())
    )
    try:
        assert (target.path / "models" / "loras" / "detail.safetensors").read_bytes() == payload
        assert "detail.safetensors" in service.get("/models/loras").json()["models"]
    finally:
        service.stop()


def test_a_model_missing_from_the_source_keeps_the_service_unready(tmp_path: Path):
    target = standin_copy(tmp_path)
    env = models_setup(tmp_path, b"x", hashlib.sha256(b"x").hexdigest())
    (Path(env["MODELS_SOURCE"]) / "loras" / "detail.safetensors").unlink()
    service = ServiceProcess(target, tmp_path / "s", env=env).start()
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            try:
                response = service.get("/healthz", timeout=2)
            except Exception:
                time.sleep(0.1)
                continue
            status = response.json()["status"]
            if status == "model fetch failed":
                break
            time.sleep(0.1)
        assert response.status_code == 503 and status == "model fetch failed", status
        assert service.comfy_pid() is None
        assert "cannot fetch the models" in service.log()
    finally:
        service.stop()


def test_the_warmup_workflow_runs_before_ready(tmp_path: Path):
    warmup = tmp_path / "warmup.json"
    warmup.write_text((RESOURCES / "comfy" / "workflows" / "empty_save.json").read_text())
    import sys

    service = start_service(
        ComfyTarget("standin", STANDIN, sys.executable, ""), tmp_path / "s", WARMUP_WORKFLOW=str(warmup)
    )
    try:
        log = service.log()
        assert "warmup workflow warmup.json ran" in log
        assert log.index("warmup workflow") < log.index("is ready")
        # The warmup leaves no files behind.
        assert not [p for p in (service.state_dir / "comfyui" / "output").rglob("*") if p.is_file()]
        body = json.loads(service.get("/").text)
        assert body["comfyui"]["ready"]
    finally:
        service.stop()
