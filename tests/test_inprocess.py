"""The service in-process: the real app (routes, pipeline, Comfy's readiness, the local jobs)
against a ComfyUI double (tests/fixtures/fakecomfy.py), driven by starlette's TestClient.

The same behaviours run against a service process and a real (or stand-in) ComfyUI in
test_app.py and routes/test_jobs.py; here they take milliseconds.
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from handler.app import create_app
from handler.comfyui.instance import Comfy, ComfyState
from tests.fixtures.fakecomfy import FakeComfyUI
from tests.fixtures.inprocess import final_view, settings_under, workflow
from tests.fixtures.waiting import wait_until


@dataclass
class Served:
    http: TestClient
    comfyui: FakeComfyUI
    app: Starlette
    root: Path

    @property
    def comfy(self) -> Comfy:
        comfy = self.app.state.services.comfy
        assert comfy is not None
        return comfy

    def files_left(self) -> list[Path]:
        return [path for path in (self.root / "comfyui").rglob("*") if path.is_file()]


@contextlib.contextmanager
def serve(root: Path, *, connect_on_start: bool = True) -> Iterator[Served]:
    settings = settings_under(root)
    assert settings.comfyui_output_dir is not None
    comfyui = FakeComfyUI(settings.comfyui_output_dir, connect_on_start=connect_on_start)
    app = create_app(settings, comfy_client=comfyui)
    with TestClient(app) as http:  # runs the lifespan: Comfy starts, the local worker starts
        yield Served(http, comfyui, app, root)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One service for the module: ComfyUI connects at start and boots (catalogue, stats)."""
    with serve(tmp_path_factory.mktemp("inprocess")) as service:
        assert service.comfy.wait_ready(5), service.comfy.state
        yield service


# --- sync /predict ---------------------------------------------------------------------------


def test_a_sync_predict_answers_the_saved_file_and_removes_it(served: Served) -> None:
    response = served.http.post("/predict", json={"workflow": workflow()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    [image] = body["images"]
    # The request's private folder is ComfyUI's business: the caller sees the prefix it chose.
    assert (image["filename"], image["subfolder"], image["type"]) == ("proto_00001_.png", "", "output")
    assert (image["node_id"], image["content_type"]) == ("2", "image/png")
    with Image.open(io.BytesIO(base64.b64decode(image["image"]))) as decoded:
        assert decoded.size == (8, 8)
    assert body["outputs"]["2"]["images"][0]["subfolder"] == ""
    sent = served.comfyui.submitted[-1]["2"]["inputs"]
    assert sent["filename_prefix"].endswith("/proto") and sent["filename_prefix"] != "proto"
    assert served.files_left() == []  # removed once the answer was sent


def test_a_workflow_comfyui_refuses_is_400_with_its_error(served: Served) -> None:
    response = served.http.post("/predict", json={"workflow": workflow(("NoSuchNode", {}))})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "workflow_invalid"
    assert error["comfyui_error"]["type"] == "missing_node_type"
    assert "node_errors" in error


def test_an_execution_error_is_500_without_server_paths(served: Served) -> None:
    secret = served.root / "comfyui" / "models" / "weights.safetensors"
    response = served.http.post(
        "/predict", json={"workflow": workflow(("RaiseError", {"message": f"cannot open {secret}"}))}
    )
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "execution_error"
    assert (error["node_id"], error["node_type"], error["exception_type"]) == ("2", "RaiseError", "RuntimeError")
    assert error["exception_message"].startswith("cannot open ")
    assert str(served.root) not in response.text and "Traceback" not in response.text
    assert served.files_left() == []


def test_a_timeout_interrupts_the_prompt_and_is_504(served: Served) -> None:
    started = time.monotonic()
    response = served.http.post("/predict", json={"workflow": workflow(("Hang", {})), "timeout": 0.2})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "timeout"
    assert served.comfyui.interrupts, "the prompt was not interrupted"
    # Interrupted, not left running: the next job runs at once.
    assert served.http.post("/predict", json={"workflow": workflow()}).status_code == 200
    assert time.monotonic() - started < 2


# --- readiness -------------------------------------------------------------------------------


def test_healthz_is_503_until_comfyui_is_booted_and_follows_the_websocket(tmp_path: Path) -> None:
    started, before = time.monotonic(), set(threading.enumerate())
    with serve(tmp_path, connect_on_start=False) as service:
        health = service.http.get("/healthz")
        assert health.status_code == 503 and health.json() == {"status": "starting"}
        assert health.headers["retry-after"] == "5"
        info = service.http.get("/").json()["comfyui"]
        assert (info["state"], info["ready"]) == ("starting", False)
        assert service.http.post("/predict", json={"workflow": workflow()}).status_code == 503

        service.comfyui.connect()  # the websocket handshake starts the boot checks
        assert service.comfy.wait_ready(5)
        assert service.comfy.state is ComfyState.READY
        assert service.http.get("/healthz").json() == {"status": "ready"}
        assert service.http.get("/").json()["comfyui"]["version"] == "0.0.0-fake"

        service.comfyui.disconnect()  # ComfyUI runs on, but without the websocket no job can be watched
        assert not service.comfy.ready and service.http.get("/healthz").status_code == 503
        service.comfyui.connect()  # a reconnect, not a new ComfyUI: ready at once, no second boot
        assert service.comfy.ready and service.http.get("/healthz").status_code == 200
    assert service.comfy.state is ComfyState.STOPPING and not service.comfy.ready
    assert time.monotonic() - started < 2  # the local worker and ComfyUI's threads stop promptly
    # Every thread the service started has ended (anyio's idle workers end on their own).
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert [name for name in left if name != "AnyIO worker thread"] == []


def test_an_async_job_waits_for_comfyui_then_runs(tmp_path: Path) -> None:
    with serve(tmp_path, connect_on_start=False) as service:
        accepted = service.http.post("/predict", json={"workflow": workflow(), "async": True})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        time.sleep(0.1)  # the dispatcher has had every chance to take it
        assert service.comfyui.submitted == []  # not run, no attempt spent, while ComfyUI boots
        assert service.http.get(f"/status/{job_id}").json()["state"] == "queued"

        service.comfyui.connect()
        done = wait_until(lambda: final_view(service.http, job_id), timeout_s=5)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 1
        assert len(service.comfyui.submitted) == 1
