"""A running job's progress says what ComfyUI is doing instead of nulls, with ISO 8601 times.

Between a prompt's start and its first step ComfyUI sends no progress (it is loading weights):
the `started` event and the job's stored progress say `stage: "loading models"` when the graph
has a model loader, `running` when not; a sampler's steps are `sampling`. `/status` shows the
progress's `updated_at` in ISO 8601 like every other time, not as Unix time.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler.comfyui.progress import EventKind, JobProgress, ProgressEvent, Reporter, read_job_progress
from handler.storage.local import LocalStore
from tests.fixtures.comfy import STANDIN, ComfyTarget, Gate, ServiceProcess, start_service

ROOT = Path(__file__).resolve().parents[2]
SD15 = json.loads((ROOT / "workflows" / "sd15-txt2img.json").read_text())
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def reporter(graph: dict) -> tuple[Reporter, list[ProgressEvent]]:
    seen: list[ProgressEvent] = []
    return Reporter(seen.append, graph, frozenset({"SaveImage"}), lambda outputs: outputs, prompt_id="p"), seen


def test_a_model_graph_is_loading_models_until_its_first_step_then_sampling():
    report, seen = reporter(SD15)
    report.on_message("execution_start", {"prompt_id": "p"})
    started = [e for e in seen if e.kind is EventKind.STARTED]
    assert started[0].data["stage"] == "loading models"
    report.on_message("progress", {"node": "5", "value": 3, "max": 25, "prompt_id": "p"})
    assert seen[-1].kind is EventKind.PROGRESS
    assert seen[-1].data["stage"] == "sampling" and seen[-1].data["class_type"] == "KSampler"


def test_a_graph_without_models_is_running():
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    report, seen = reporter(graph)
    report.on_message("execution_start", {"prompt_id": "p"})
    report.on_message("progress", {"node": "2", "value": 1, "max": 4, "prompt_id": "p"})
    assert [e.data["stage"] for e in seen if e.kind is not EventKind.QUEUED] == ["running", "running"]


def test_the_stored_progress_says_the_stage(tmp_path):
    store = LocalStore(tmp_path / "store")
    sink = JobProgress(store, "job-1", interval_s=0.05)
    report, _ = reporter(SD15)
    report.sink = sink
    report.on_message("execution_start", {"prompt_id": "p"})
    deadline = time.monotonic() + 10
    while (stored := read_job_progress(store, "job-1")) is None:
        assert time.monotonic() < deadline, "no progress was written"
        time.sleep(0.02)
    sink.close()
    assert stored["stage"] == "loading models" and stored["step"] is None


@pytest.fixture
def held_service(tmp_path: Path) -> Iterator[ServiceProcess]:
    service = start_service(ComfyTarget("standin", STANDIN, sys.executable, ""), tmp_path / "state")
    yield service
    service.stop()


def test_status_shows_progress_with_a_stage_and_an_iso_time(held_service):
    gate = Gate(held_service.comfy_url)
    response = held_service.post("/predict", json={"workflow": gate.workflow(), "async": True})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    try:
        gate.wait_entered()
        deadline = time.monotonic() + 20
        while "progress" not in (status := held_service.get(f"/status/{job_id}").json()):
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        progress = status["progress"]
        assert progress["stage"] == "running", progress  # no model loader in this graph
        assert ISO.match(progress["updated_at"]), progress
        assert all(ISO.match(status[key]) for key in ("created_at", "updated_at", "started_at")), status
    finally:
        gate.release()
