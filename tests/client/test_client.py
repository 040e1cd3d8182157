"""The client, as a module and as a command line, against a real service process."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from comfyrun_client import Client, ClientError, image_entry
from comfyrun_client.cli import _param, main
from tests.fixtures.asyncjobs import BASE_ENV, STANDIN_TARGET, failing, quick, slow
from tests.fixtures.comfy import Gate, ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
LOAD_INVERT = ROOT / "test_resources" / "comfy" / "workflows" / "loadimage_invert_save.json"
INPUT_PNG = ROOT / "test_resources" / "comfy" / "test_input.png"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    service = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("client"), env=dict(BASE_ENV))
    service.start().wait_ready()
    yield service
    service.stop()


def test_sync_and_async_through_the_module(svc, tmp_path):
    client = Client(svc.url)
    answer = client.predict(quick(9000))
    saved = client.save_outputs(answer, tmp_path / "sync")
    assert len(saved) == 1 and saved[0].read_bytes().startswith(b"\x89PNG")

    job_id = client.submit(quick(9001), priority="high")
    done = client.wait(job_id, timeout_s=60)
    assert done["state"] == "succeeded"
    (path,) = client.save_outputs(done, tmp_path / "async")
    assert path.read_bytes().startswith(b"\x89PNG") and path.relative_to(tmp_path / "async").parts[0] == "proto"


def test_cancel_and_errors_through_the_module(svc):
    client = Client(svc.url)
    first = client.submit(slow(9100, batch=2))
    second = client.submit(slow(9101, batch=2))
    waiting = client.submit(quick(9102))
    assert client.cancel(waiting)["cancel"] in ("dequeued", "interrupting", "requested")
    assert client.wait(waiting, timeout_s=60)["state"] in ("cancelled", "succeeded")
    for job_id in (first, second):
        client.wait(job_id, timeout_s=120)
    with pytest.raises(ClientError) as info:
        client.submit({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert info.value.status == 400 and info.value.error["code"] == "workflow_invalid"
    with pytest.raises(ClientError) as info:
        client.status("no-such-job")
    assert info.value.status == 404


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "comfyrun_client", *args], cwd=ROOT, capture_output=True, text=True, timeout=180
    )


def test_cli_async_with_an_input_image(svc, tmp_path):
    out = tmp_path / "out"
    done = run_cli(
        svc.url,
        str(LOAD_INVERT),
        "--async",
        "--priority",
        "low",
        "--image",
        f"proto_upload/test_input.png={INPUT_PNG}",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "succeeded" and summary["priority"] == "low"
    saved = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert "proto/loaded_inverted_00001_.png" in saved


def test_cli_sync_and_failures(svc, tmp_path):
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(quick(9200)))
    done = run_cli(svc.url, str(workflow), "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert "<" in done.stdout and "base64 chars>" in done.stdout  # payloads are not printed
    assert list((tmp_path / "o").rglob("*.png"))

    workflow.write_text(json.dumps(failing()))
    done = run_cli(svc.url, str(workflow), "--async", "--out", str(tmp_path / "f"))
    assert done.returncode == 1 and json.loads(done.stdout)["state"] == "failed"

    done = run_cli(svc.url, "--workflow-id", "no-such-template", "--param", "steps=3")
    assert done.returncode == 1 and "no-such-template" in done.stderr


def test_the_command_says_what_is_wrong_with_its_files_without_a_traceback(tmp_path):
    """A newcomer's first typo: a workflow file that is not there, or not JSON, or an input image
    that is not there, is a one-line usage error (exit 2) before anything is sent."""
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(quick(9300)))
    for args, said in (
        ([str(tmp_path / "missing.json")], "missing.json"),
        ([str(broken)], "broken.json is not JSON"),
        ([str(workflow), "--image", str(tmp_path / "no-photo.png")], "no-photo.png"),
    ):
        done = run_cli("http://127.0.0.1:9", *args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and said in done.stderr, done.stderr


def test_argument_helpers(tmp_path):
    assert _param("steps=20") == ("steps", 20)
    assert _param("prompt=a red fox") == ("prompt", "a red fox")
    assert _param("flag=true") == ("flag", True)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    assert image_entry(png) == {"name": "x.png", "image": "iVBORw=="}
    assert image_entry("https://example.com/a/b.png?sig=1") == {
        "name": "b.png",
        "image": "https://example.com/a/b.png?sig=1",
    }
    with pytest.raises(SystemExit):
        main(["http://127.0.0.1:9"])  # neither a workflow nor --workflow-id


def test_wait_follows_the_jobs_event_stream_in_one_request(svc):
    """One `GET /status` held open, not a poll a second: every state comes as the service sees it."""
    seen: list[str] = []
    session = requests.Session()
    session.hooks["response"].append(lambda response, **_: seen.append(response.request.path_url))
    client = Client(svc.url, session=session)
    gate = Gate(svc.comfy_url)
    job_id = client.submit(gate.workflow("client/held"))
    states: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        waited = pool.submit(client.wait, job_id, timeout_s=60, on_status=lambda view: states.append(view["state"]))
        gate.wait_entered()
        time.sleep(0.3)
        gate.release()
        assert waited.result(timeout=60)["state"] == "succeeded"
    assert seen.count(f"/status/{job_id}") == 1, seen
    assert states[-1] == "succeeded" and states.count("succeeded") == 1, states


def test_wait_polls_a_service_that_does_not_stream(tmp_path):
    """A service from before the stream answers `/status` with JSON whatever the Accept: the
    client polls it instead, over a real socket."""
    answers = iter([{"job_id": "j", "state": "running"}, {"job_id": "j", "state": "succeeded"}])

    class OldService(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(next(answers)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OldService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        states: list[str] = []
        client = Client(f"http://127.0.0.1:{server.server_address[1]}")
        final = client.wait("j", timeout_s=30, on_status=lambda view: states.append(view["state"]))
        assert final["state"] == "succeeded" and states == ["succeeded"]  # the first answer went to the stream try
    finally:
        server.shutdown()
        server.server_close()
