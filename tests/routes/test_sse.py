"""Sync /predict as Server-Sent Events: event order, progress as ComfyUI reports it, the final
answer equal to a plain call's, and a client that goes away mid-stream."""

from __future__ import annotations

import http.client
import json
import os
import threading
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from handler.comfyui.client import BinaryImage
from handler.comfyui.progress import EventKind, ProgressEvent, Reporter, Throttled
from tests.fixtures.comfy import RESOURCES, ServiceProcess
from tests.fixtures.waiting import wait_until

RECORDED = RESOURCES / "comfy" / "workflows"
TEST_INPUT = RESOURCES / "comfy" / "test_input.png"
STREAM = {"Accept": "text/event-stream"}


def progress_workflow(batch: int = 4) -> dict:
    """SaveImageWebsocket reports a progress tick per image, in ComfyUI and in the stand-in."""
    color = int.from_bytes(os.urandom(3), "big")
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": batch, "color": color}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "sse/out"}},
    }


def events_of(response: requests.Response) -> list[tuple[str, dict]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events, kind = [], None
    for line in response.iter_lines():
        if line.startswith(b"event: "):
            kind = line[7:].decode()
        elif line.startswith(b"data: "):
            events.append((kind, json.loads(line[6:])))
    return events


def comfyuis_own_progress(comfy_url: str, workflow: dict) -> list[tuple[str, int, int]]:
    """The same workflow straight to ComfyUI, on a websocket of our own: its progress messages."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws{comfy_url[4:]}/ws?clientId={client_id}", timeout=60)
    try:
        prompt_id = str(uuid.uuid4())
        answer = requests.post(
            f"{comfy_url}/prompt", json={"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        seen = []
        while True:
            message = ws.recv()
            if isinstance(message, bytes):
                continue
            data = json.loads(message)
            body = data.get("data") or {}
            if body.get("prompt_id") != prompt_id:
                continue
            if data["type"] == "progress":
                seen.append((str(body["node"]), body["value"], body["max"]))
            if data["type"] in ("execution_success", "execution_error"):
                return seen
    finally:
        ws.close()


def test_events_arrive_in_order_and_progress_matches_comfyuis_own(service: ServiceProcess):
    workflow = progress_workflow()
    events = events_of(service.post("/predict", json={"workflow": workflow}, headers=STREAM, stream=True))
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "result", kinds
    assert kinds.count("result") == 1 and "error" not in kinds
    progress = [(d["node"], d["step"], d["max"]) for kind, d in events if kind == "progress"]
    assert progress, kinds
    assert all(
        d["class_type"] == "SaveImageWebsocket" and 0 <= d["percent"] <= 100 for kind, d in events if kind == "progress"
    )
    executed = [d for kind, d in events if kind == "executed"]
    assert any(d["node"] == "3" and d["class_type"] == "SaveImage" for d in executed)
    # Our folder names never show: the caller sees the subfolder it named.
    assert all(ref["subfolder"] == "sse" for d in executed if d["node"] == "3" for ref in d["output"]["images"])
    assert kinds.index("executed") < kinds.index("result")

    direct = comfyuis_own_progress(service.comfy_url, progress_workflow())
    assert progress == direct

    result = events[-1][1]
    plain = service.post("/predict", json={"workflow": workflow}).json()
    assert result.keys() == plain.keys()
    assert result["status"] == "success"
    shape = [(i["node_id"], i["type"], i["content_type"]) for i in result["images"]]  # sizes: PNG metadata differs
    assert shape == [(i["node_id"], i["type"], i["content_type"]) for i in plain["images"]]


@pytest.mark.parametrize("name", ["invalid_node_class.json", "bad_values.json"])
def test_an_error_event_carries_the_plain_calls_status_and_body(service: ServiceProcess, name: str):
    workflow = json.loads((RECORDED / name).read_text())
    plain = service.post("/predict", json={"workflow": workflow})
    events = events_of(service.post("/predict", json={"workflow": workflow}, headers=STREAM, stream=True))
    assert [kind for kind, _ in events] == ["error"]
    assert events[0][1] == {"status_code": plain.status_code, "body": plain.json()}


def test_a_bad_body_is_a_plain_error_before_the_stream(service: ServiceProcess):
    response = service.post("/predict", json={"workflow": "nope"}, headers=STREAM)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_queued_reports_the_prompts_ahead(service: ServiceProcess):
    if service.target.is_real:
        pytest.skip("a real ComfyUI has no gate to hold the first prompt: the slow graph would run ~45 s")
    gate = service.gate()
    held = threading.Thread(target=service.post, args=("/predict",), kwargs={"json": {"workflow": gate.workflow()}})
    held.start()
    try:
        gate.wait_entered()
        response = service.post("/predict", json={"workflow": progress_workflow(1)}, headers=STREAM, stream=True)
        lines = response.iter_lines()
        first = [next(lines), next(lines)]
        assert first[0] == b"event: queued"
        assert json.loads(first[1][6:])["position"] == 1
    finally:
        gate.release()
        held.join(120)
    assert [kind for kind, _ in events_of(response)][-1] == "result"


def test_a_client_that_disconnects_mid_stream_leaves_no_prompt_running_and_no_files(service: ServiceProcess):
    gate = service.gate()
    name = f"gone-{uuid.uuid4().hex[:8]}"
    workflow = gate.workflow(prefix=f"{name}/out")
    workflow["90"] = {"class_type": "LoadImage", "inputs": {"image": f"{name}.png"}}
    workflow["91"] = {"class_type": "PreviewImage", "inputs": {"images": ["90", 0]}}
    body = json.dumps({"workflow": workflow, "images": [{"name": f"{name}.png", "image": _b64(TEST_INPUT)}]})
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    conn.request("POST", "/predict", body=body, headers={**STREAM, "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    while (line := response.readline()) != b"event: started\n":
        assert line, "the stream ended before the run started"
    gate.wait_entered()
    assert _files(service, name), "the request's input should be staged while it runs"
    conn.close()  # the caller goes away

    def idle() -> bool:
        queue = requests.get(f"{service.comfy_url}/queue", timeout=10).json()
        return not queue["queue_running"] and not queue["queue_pending"]

    wait_until(idle, timeout_s=120, message="the prompt is still in ComfyUI after the client left")
    wait_until(lambda: not _files(service, name), message=lambda: f"files left behind: {_files(service, name)}")
    if not gate.real:
        assert gate.state()["passed"] == 0  # interrupted inside the gate, not run to its end


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def _files(service: ServiceProcess, name: str) -> list[Path]:
    return [p for p in (service.state_dir / "comfyui").rglob("*") if p.is_file() and name in str(p)]


# --- the translation, on its own (no servers) ------------------------------------------------


def test_previews_come_only_when_asked_and_only_from_nodes_that_are_not_outputs():
    graph = {"5": {"class_type": "KSampler"}, "9": {"class_type": "SaveImageWebsocket"}}
    for previews, expected in ((True, [("5", "KSampler")]), (False, [])):
        seen: list[ProgressEvent] = []
        reporter = Reporter(
            seen.append,
            graph,
            frozenset({"SaveImageWebsocket"}),
            lambda outputs: outputs,
            prompt_id="p",
            previews=previews,
        )
        reporter.on_message("binary", BinaryImage("5", "image/jpeg", b"\xff\xd8"))
        reporter.on_message("binary", BinaryImage("9", "image/png", b"\x89PNG"))
        assert [(e.data["node"], e.data["class_type"]) for e in seen if e.kind is EventKind.PREVIEW] == expected


def test_throttled_progress_writes_at_most_once_per_interval_and_the_latest():
    written: list[ProgressEvent] = []
    wrote = threading.Event()

    def write(event: ProgressEvent) -> None:
        written.append(event)
        wrote.set()

    throttled = Throttled(write, interval_s=0.5)
    try:
        throttled(ProgressEvent(EventKind.PROGRESS, {"step": 1}))
        throttled(ProgressEvent(EventKind.PROGRESS, {"step": 2}))
        assert not wrote.wait(0.2)  # the first write waits an interval too: short runs write none
        assert wrote.wait(10)
        assert [e.data["step"] for e in written] == [2]  # the latest, once
        wrote.clear()
        for step in range(3, 50):
            throttled(ProgressEvent(EventKind.PROGRESS, {"step": step}))
        throttled(ProgressEvent(EventKind.EXECUTED, {"node": "1"}))  # not progress: ignored
        assert wrote.wait(10)
        assert [e.data["step"] for e in written] == [2, 49]
        wrote.clear()
        assert not wrote.wait(0.8)  # nothing new: nothing written again
    finally:
        throttled.close()


def test_a_run_shorter_than_the_interval_writes_no_progress():
    written: list[ProgressEvent] = []
    throttled = Throttled(written.append, interval_s=30.0)
    throttled(ProgressEvent(EventKind.STARTED, {}))
    throttled(ProgressEvent(EventKind.PROGRESS, {"step": 1}))
    throttled.close(wait_s=5)
    assert written == []


def test_a_running_jobs_status_shows_its_progress(service: ServiceProcess):
    if service.target.is_real:
        pytest.skip("a real ComfyUI has no gate to hold the job after its progress ticks")
    gate = service.gate()
    held = gate.workflow(prefix="progress/out")
    # Node "2" ticks 4 times (SaveImageWebsocket), then the job waits in the gate.
    held["2"], held["9"] = progress_workflow(4)["2"], held["2"]
    held["3"]["inputs"]["images"] = ["9", 0]
    held["1"]["inputs"]["batch_size"] = 4
    accepted = service.post("/predict", json={"workflow": held, "async": True})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    try:
        gate.wait_entered()

        def progress() -> dict | None:
            status = service.get(f"/status/{job_id}").json()
            return status.get("progress") if status["state"] == "running" else None

        shown = wait_until(
            lambda: (p := progress()) and p["step"] == 3 and p,
            timeout_s=30,
            message="the job's last progress tick never showed in /status",
        )
        assert (shown["node"], shown["class_type"], shown["max"], shown["percent"]) == (
            "2",
            "SaveImageWebsocket",
            4,
            75.0,
        )
    finally:
        gate.release()
    done = wait_until(
        lambda: (s := service.get(f"/status/{job_id}").json())["state"] == "succeeded" and s,
        timeout_s=60,
        message="the job did not finish",
    )
    assert "progress" not in done
