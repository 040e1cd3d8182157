"""The `comfyrun` command follows an async job (a line per change of state, the progress bar the
SSE mode draws) and never overwrites an output saved before.

Before, `--async` printed nothing from submit to the end, and every run of a workflow saved to
the same `outputs/proto/empty_00001_.png`, over the last one.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyrun_client.cli import JobFollower, ProgressBar
from comfyrun_client.client import write_new
from tests.fixtures.comfy import STANDIN, ComfyTarget, Gate, ServiceProcess, start_service

ROOT = Path(__file__).resolve().parents[2]
EMPTY_SAVE = ROOT / "test_resources" / "comfy" / "workflows" / "empty_save.json"


def test_the_follower_draws_states_and_progress():
    out = io.StringIO()
    follower = JobFollower("j1", ProgressBar(out))
    for status in (
        {"state": "queued"},
        {"state": "running"},
        {"state": "running", "progress": {"stage": "loading models", "step": None, "max": None}},
        {
            "state": "running",
            "progress": {
                "stage": "sampling",
                "node": "5",
                "class_type": "KSampler",
                "step": 3,
                "max": 25,
                "percent": 12.0,
            },
        },
        {"state": "succeeded"},
    ):
        follower.update(status)
    text = out.getvalue()
    assert "job j1: queued\n" in text and "job j1: running\n" in text and "job j1: succeeded\n" in text
    assert "running: loading models" in text
    assert " 12.0% node 5 KSampler 3/25" in text and "[###" in text
    # the state lines come in order, each once
    assert [line for line in text.split("\n") if line.startswith("job j1:")] == [
        "job j1: queued",
        "job j1: running",
        "job j1: succeeded",
    ]


def test_the_follower_says_what_placed_means():
    out = io.StringIO()
    follower = JobFollower("j1", ProgressBar(out))
    for state in ("queued", "placed", "placed", "running", "succeeded"):
        follower.update({"state": state})
    assert [line for line in out.getvalue().split("\n") if line.startswith("job j1:")] == [
        "job j1: queued",
        "job j1: placed (in ComfyUI's queue, not executing yet)",
        "job j1: running",
        "job j1: succeeded",
    ]


def test_the_follower_and_the_bar_show_model_downloads():
    """A placed job whose models download shows the file and how far it got, not a silent wait;
    the same line serves the SSE mode's `download` events."""
    out = io.StringIO()
    follower = JobFollower("j1", ProgressBar(out))
    downloading = {
        "stage": "downloading models",
        "file": "lora.safetensors",
        "folder": "loras",
        "source": "https://models.example/lora.safetensors",
        "bytes_done": 3 * 2**20,
        "bytes_total": 12 * 2**20,
        "percent": 25.0,
        "model": 2,
        "models": 2,
    }
    follower.update({"state": "placed", "progress": downloading})
    assert " 25.0% downloading lora.safetensors (2/2) 3.0 MiB / 12.0 MiB" in out.getvalue()

    out = io.StringIO()
    ProgressBar(out).update("download", {**downloading, "bytes_total": None, "percent": None, "models": 1})
    assert out.getvalue().endswith("downloading lora.safetensors 3.0 MiB")


def test_write_new_never_overwrites(tmp_path):
    first = write_new(tmp_path / "proto" / "empty_00001_.png", b"one")
    second = write_new(tmp_path / "proto" / "empty_00001_.png", b"two")
    third = write_new(tmp_path / "proto" / "empty_00001_.png", b"three")
    assert [p.name for p in (first, second, third)] == ["empty_00001_.png", "empty_00001_-2.png", "empty_00001_-3.png"]
    assert [p.read_bytes() for p in (first, second, third)] == [b"one", b"two", b"three"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = start_service(ComfyTarget("standin", STANDIN, sys.executable, ""), tmp_path_factory.mktemp("cli"))
    yield service
    service.stop()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "comfyrun_client", *args]


def test_async_shows_the_job_as_it_goes(svc, tmp_path):
    gate = Gate(svc.comfy_url)
    workflow = tmp_path / "held.json"
    workflow.write_text(json.dumps(gate.workflow("cli/held")))
    process = subprocess.Popen(
        cli(svc.url, str(workflow), "--async", "--out", str(tmp_path / "out")),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        gate.wait_entered()
        time.sleep(2.5)  # the job's progress is recorded after a second, and polled every second
    finally:
        gate.release()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    job_id = json.loads(stdout)["job_id"]
    assert f"job {job_id}: running" in stderr, stderr
    assert "running: running" in stderr, stderr  # the stage, from /status's progress (no model here)
    assert "saved " in stderr and "held_00001_.png" in stderr, stderr
    assert f"job {job_id}: succeeded" in stderr, stderr


def test_two_runs_keep_both_outputs(svc, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        done = subprocess.run(
            cli(svc.url, str(EMPTY_SAVE), "--out", str(out)), cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    saved = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert saved == ["proto/empty_00001_-2.png", "proto/empty_00001_.png"], saved
