"""The client's delivery modes (url, raw, stream), as a module and on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyrun_client import Client, ClientError
from tests.fixtures.asyncjobs import BASE_ENV, STANDIN_TARGET
from tests.fixtures.comfy import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    service = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("client-modes"), env=dict(BASE_ENV))
    service.start().wait_ready()
    yield service
    service.stop()


def workflow(batch: int = 1, with_progress: bool = False) -> dict:
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": batch, "color": int.from_bytes(os.urandom(3), "big")},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "modes/out"}},
    }
    if with_progress:
        graph["3"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}
    return graph


def test_url_raw_and_stream_through_the_module(svc, tmp_path):
    client = Client(svc.url)
    linked = client.predict(workflow(batch=2), delivery="url", output={"format": "webp"})
    assert all(item["url"] and "image" not in item for item in linked["images"])
    saved = client.save_outputs(linked, tmp_path / "url")
    assert len(saved) == 2 and all(p.read_bytes()[8:12] == b"WEBP" for p in saved)

    raw = client.predict_raw(workflow(), accept="image/png")
    assert raw.content_type == "image/png" and raw.data.startswith(b"\x89PNG")
    assert raw.filename.startswith("modes/out_") and raw.node_id == "2" and raw.prompt_id
    with pytest.raises(ClientError) as info:
        client.predict_raw(workflow(batch=2), accept="image/png")
    assert info.value.status == 406 and info.value.error["code"] == "not_acceptable"

    seen: list[str] = []
    answer = client.predict_stream(workflow(batch=3, with_progress=True), on_event=lambda kind, _: seen.append(kind))
    assert seen[:2] == ["queued", "started"] and "progress" in seen
    assert answer["status"] == "success" and len(answer["images"]) == 6  # 3 saved + 3 pushed
    with pytest.raises(ClientError) as info:
        list(client.stream({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    assert info.value.status == 400 and info.value.error["code"] == "workflow_invalid"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "comfyrun_client", *args], cwd=ROOT, capture_output=True, text=True, timeout=180
    )


def test_cli_stream_raw_and_url(svc, tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow(batch=2, with_progress=True)))
    done = run_cli(svc.url, str(path), "--stream", "--out", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    assert "%" in done.stderr and "SaveImageWebsocket" in done.stderr  # the progress bar
    assert len(list((tmp_path / "s").rglob("*.png"))) == 4

    path.write_text(json.dumps(workflow()))
    done = run_cli(svc.url, str(path), "--raw", "image/webp", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["content_type"] == "image/webp"
    (saved,) = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert saved.read_bytes()[8:12] == b"WEBP"

    done = run_cli(svc.url, str(path), "--url", "--out", str(tmp_path / "u"))
    assert done.returncode == 0, done.stderr
    assert "/outputs/sync-" in done.stdout
    assert len(list((tmp_path / "u").rglob("*.png"))) == 1
