"""The one websocket: cut mid-job, the job still completes.

The service attaches to a ComfyUI through a TCP proxy the test controls (COMFYUI_URL), so the
connection can be cut for real, against the stand-in or a real ComfyUI alike.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.fixtures.attached import wait_listening
from tests.fixtures.comfy import RESOURCES, ComfyTarget, ServiceProcess, free_port


class CuttableProxy:
    """A loopback TCP proxy whose connections can all be cut at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut_all(self) -> int:
        with self.lock:
            connections, self.connections = self.connections, []
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        return len(connections)

    def close(self) -> None:
        self.listener.close()
        self.cut_all()


@pytest.fixture
def attached(comfy_target: ComfyTarget, tmp_path: Path, request: pytest.FixtureRequest):
    """ComfyUI started by the test, and a service attached to it through the proxy.

    With the `remote` marker the service is not told where ComfyUI's folders are, as when
    ComfyUI runs on another machine: inputs go up through /upload/image, outputs come via /view."""
    remote = request.node.get_closest_marker("remote") is not None
    base = tmp_path / "comfy"
    folders = {name: base / name for name in ("input", "output", "temp", "user")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    port = free_port()
    args = [
        comfy_target.python,
        "main.py",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--input-directory",
        str(folders["input"]),
        "--output-directory",
        str(folders["output"]),
        "--temp-directory",
        str(folders["temp"]),
        "--disable-auto-launch",
        *comfy_target.args.split(),
    ]
    if comfy_target.is_real:
        args += ["--user-directory", str(base / "user"), "--database-url", "sqlite:///:memory:"]
    log = open(tmp_path / "comfy.log", "wb")
    comfy = subprocess.Popen(
        args,
        cwd=comfy_target.path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "STANDIN_TEST_GATE": "1"},
    )
    wait_listening(comfy, port, tmp_path / "comfy.log")
    proxy = CuttableProxy(port)
    env = {"COMFYUI_URL": f"http://127.0.0.1:{proxy.port}", "COMFYUI_PATH": ""}
    if not remote:
        env.update(
            COMFYUI_INPUT_DIR=str(folders["input"]),
            COMFYUI_OUTPUT_DIR=str(folders["output"]),
            COMFYUI_TEMP_DIR=str(folders["temp"] / "temp"),
        )
    service = ServiceProcess(comfy_target, tmp_path / "service", env=env).start().wait_ready()
    service.comfy_port = port  # straight to ComfyUI, not through the proxy (service.gate())
    yield service, proxy
    service.stop()
    proxy.close()
    comfy.terminate()
    comfy.wait(10)
    log.close()


def test_websocket_cut_mid_job_and_the_job_still_completes(attached):
    service, proxy = attached
    result: dict = {}
    gate = service.gate()
    job = threading.Thread(target=lambda: result.update(r=service.post("/predict", json={"workflow": gate.workflow()})))
    job.start()
    gate.wait_entered()
    assert proxy.cut_all() > 0
    gate.release()
    job.join(120)
    assert not job.is_alive()
    response = result["r"]
    assert response.status_code == 200, response.text
    (item,) = [i for i in response.json()["images"] if i["node_id"] == gate.output_node][:1]
    assert item["content_type"] == "image/png" and item["size"] > 0


def test_attached_service_is_ready_and_runs_jobs(attached):
    service, _ = attached
    workflow = json.loads((RESOURCES / "comfy" / "workflows" / "empty_save.json").read_text())
    response = service.post("/predict", json={"workflow": workflow})
    assert response.status_code == 200, response.text


@pytest.mark.remote
def test_attached_without_shared_folders_uploads_inputs_and_fetches_outputs(attached):
    service, _ = attached
    image = (RESOURCES / "comfy" / "test_input.png").read_bytes()
    workflow = json.loads((RESOURCES / "comfy" / "workflows" / "loadimage_invert_save.json").read_text())
    body = {
        "workflow": workflow,
        "images": [{"name": "proto_upload/test_input.png", "image": base64.b64encode(image).decode()}],
    }
    response = service.post("/predict", json=body)
    assert response.status_code == 200, response.text
    kinds = {(item["node_id"], item["type"]) for item in response.json()["images"]}
    assert kinds == {("3", "output"), ("5", "temp")}
    assert all(base64.b64decode(item["image"]).startswith(b"\x89PNG") for item in response.json()["images"])
