"""A plain JSON client that disconnects gets its prompt interrupted and its files removed, as a
streamed (SSE) one already did (issue 20): before, its prompt ran to its end for nobody, holding
ComfyUI from every caller behind it."""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from pathlib import Path

import requests

from tests.fixtures.comfy import RESOURCES, ServiceProcess
from tests.fixtures.waiting import wait_until

TEST_INPUT = RESOURCES / "comfy" / "test_input.png"


def files_of(service: ServiceProcess, name: str) -> list[Path]:
    return [p for p in (service.state_dir / "comfyui").rglob("*") if p.is_file() and name in str(p)]


def test_a_json_client_that_disconnects_leaves_no_prompt_running_and_no_files(service: ServiceProcess):
    gate = service.gate()
    name = f"left-{uuid.uuid4().hex[:8]}"
    workflow = gate.workflow(prefix=f"{name}/out")
    workflow["90"] = {"class_type": "LoadImage", "inputs": {"image": f"{name}.png"}}
    workflow["91"] = {"class_type": "PreviewImage", "inputs": {"images": ["90", 0]}}
    image = base64.b64encode(TEST_INPUT.read_bytes()).decode()
    body = json.dumps({"workflow": workflow, "images": [{"name": f"{name}.png", "image": image}]})
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
    gate.wait_entered()
    assert files_of(service, name), "the request's input should be staged while it runs"
    (running,) = requests.get(f"{service.comfy_url}/queue", timeout=10).json()["queue_running"]
    prompt_id = running[1]
    conn.close()  # the caller goes away without an answer

    def idle() -> bool:
        queue = requests.get(f"{service.comfy_url}/queue", timeout=10).json()
        return not queue["queue_running"] and not queue["queue_pending"]

    try:
        wait_until(idle, timeout_s=60, message="the prompt is still in ComfyUI after the client left")
        wait_until(lambda: not files_of(service, name), message=lambda: f"left behind: {files_of(service, name)}")
        if not gate.real:
            assert gate.state()["passed"] == 0  # interrupted inside the gate, not run to its end
        # ComfyUI's own record: interrupted, not run to its end for nobody.
        history = requests.get(f"{service.comfy_url}/history/{prompt_id}", timeout=10).json()[prompt_id]
        events = [message[0] for message in history["status"]["messages"]]
        assert "execution_interrupted" in events and "execution_success" not in events, events
    finally:
        gate.release()
