"""Booting ComfyUI: runtime models fetched first, warmup before ready; readiness does not wait
for the node catalogue, whatever needs the catalogue does (bounded), and it is published after
ready (in-process, against the ComfyUI double with its catalogue held back)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from handler.app import create_app
from handler.comfyui import catalog
from handler.comfyui.instance import Comfy
from handler.config import ServiceRole, Settings
from handler.errors import ServiceError
from tests.fixtures.comfy import RESOURCES, STANDIN, ComfyTarget, ServiceProcess, start_service
from tests.fixtures.fakecomfy import FakeComfyUI
from tests.fixtures.waiting import stays, wait_until


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


# --- in-process: readiness and the node catalogue ---------------------------------------------


class SlowCatalogue(FakeComfyUI):
    """The ComfyUI double, its `/object_info` held until `release` (or failing `fail` times)."""

    def __init__(self, output_dir: Path, fail: int = 0):
        super().__init__(output_dir)
        self.catalogue_gate = threading.Event()
        self.catalogue_calls = 0
        self.fail = fail

    def get_json(self, path: str, timeout_s: float = 30.0) -> Any:
        if path == "/object_info":
            self.catalogue_calls += 1
            if self.catalogue_calls <= self.fail:
                raise ServiceError("ComfyUI answered 500 to GET /object_info")
            assert self.catalogue_gate.wait(10), "the test never released /object_info"
        return super().get_json(path, timeout_s)


@contextlib.contextmanager
def served(tmp_path: Path, comfyui: SlowCatalogue | None = None, **settings: Any) -> Iterator[tuple[TestClient, Comfy]]:
    comfyui_dir = tmp_path / "comfyui"
    for name in ("input", "output", "temp"):
        (comfyui_dir / name).mkdir(parents=True)
    config = Settings(
        comfyui_url="http://comfyui.test:8188",  # attached; never dialled: the double is the connection
        comfyui_input_dir=comfyui_dir / "input",
        comfyui_output_dir=comfyui_dir / "output",
        comfyui_temp_dir=comfyui_dir / "temp",
        state_dir=tmp_path / "state",
        **settings,
    )
    app = create_app(config, comfy_client=comfyui or SlowCatalogue(comfyui_dir / "output"))
    with TestClient(app) as http:
        comfy = app.state.services.comfy
        assert comfy is not None
        yield http, comfy


def save_workflow(prefix: str = "cat") -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def test_ready_does_not_wait_for_the_catalogue_and_a_run_waits_for_it(tmp_path: Path):
    comfyui = SlowCatalogue(tmp_path / "comfyui" / "output")
    with served(tmp_path, comfyui) as (http, comfy):
        assert comfy.wait_ready(5), comfy.state  # /system_stats answered; /object_info still held
        assert http.get("/healthz").json() == {"status": "ready"}
        assert comfy.catalogue.loading
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(http.post, "/predict", json={"workflow": save_workflow()})
            assert stays(lambda: not answer.done(), 0.3)  # a run needs the output classes: it waits
            assert comfyui.submitted == []
            comfyui.catalogue_gate.set()
            response = answer.result(10)
        assert response.status_code == 200, response.text
        # Its output node was rewritten from the loaded catalogue (the request's private folder).
        assert comfyui.submitted[-1]["2"]["inputs"]["filename_prefix"].endswith("/cat")
        assert not comfy.catalogue.loading and "SaveImage" in comfy.output_classes


def test_an_async_submit_is_checked_against_the_catalogue_on_its_way(tmp_path: Path):
    comfyui = SlowCatalogue(tmp_path / "comfyui" / "output")
    with served(tmp_path, comfyui) as (http, comfy):
        assert comfy.wait_ready(5)
        unknown = {**save_workflow(), "9": {"class_type": "NoSuchNode", "inputs": {}}}
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(http.post, "/predict", json={"workflow": unknown, "async": True})
            assert stays(lambda: not answer.done(), 0.3)  # not accepted unchecked
            comfyui.catalogue_gate.set()
            response = answer.result(10)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "workflow_invalid"


def test_a_catalogue_that_does_not_come_is_a_503_after_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(catalog, "WAIT_S", 0.2)
    comfyui = SlowCatalogue(tmp_path / "comfyui" / "output")
    with served(tmp_path, comfyui) as (http, comfy):
        assert comfy.wait_ready(5)
        response = http.post("/predict", json={"workflow": save_workflow()})
        assert response.status_code == 503, response.text
        assert "catalogue is still loading" in response.json()["error"]["message"]
        assert comfyui.submitted == []
        comfyui.catalogue_gate.set()


def test_a_failed_catalogue_load_takes_readiness_back_until_a_retry_loads_it(tmp_path: Path):
    comfyui = SlowCatalogue(tmp_path / "comfyui" / "output", fail=1)
    comfyui.catalogue_gate.set()
    with served(tmp_path, comfyui) as (http, comfy):
        # Ready at once, then not (the load failed), then ready with the catalogue (the retry).
        wait_until(lambda: comfyui.catalogue_calls == 2, 10)
        assert comfy.wait_ready(5)
        assert "SaveImage" in comfy.output_classes
        assert http.post("/predict", json={"workflow": save_workflow()}).status_code == 200


def test_the_catalogue_is_published_after_ready(tmp_path: Path):
    comfyui = SlowCatalogue(tmp_path / "comfyui" / "output")
    with served(tmp_path, comfyui, service_role=ServiceRole.WORKER) as (http, comfy):
        assert comfy.wait_ready(5)
        store = http.app.state.services.jobs.service.store
        assert store.get_json(catalog.CATALOG_KEY) is None  # ready first: nothing published yet
        comfyui.catalogue_gate.set()
        published = wait_until(lambda: store.get_json(catalog.CATALOG_KEY), 5)
        assert "SaveImage" in published.data


def test_the_warmup_runs_twice_after_the_catalogue_and_before_ready(tmp_path: Path):
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(save_workflow("warm")))
    comfyui = SlowCatalogue(tmp_path / "comfyui" / "output")
    with served(tmp_path, comfyui, warmup_workflow=warmup) as (http, comfy):
        assert stays(lambda: not comfy.ready, 0.3)  # the warmup waits for the catalogue, ready for the warmup
        assert comfyui.submitted == []
        comfyui.catalogue_gate.set()
        assert comfy.wait_ready(5)
        # Twice: the second run starts once ComfyUI is done with the first (its full gc).
        assert [graph["2"]["inputs"]["filename_prefix"].endswith("/warm") for graph in comfyui.submitted] == [True] * 2
        assert comfy.warmup_s is not None
        assert not [p for p in (tmp_path / "comfyui").rglob("*") if p.is_file()]  # it leaves no files
