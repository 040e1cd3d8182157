"""The service process under load and at its end, over real sockets against the stand-in.

* Long sync runs never hold the threads that /healthz and /models need.
* SIGTERM mid-run answers the JSON 503 with Retry-After inside Cloud Run's 10 s grace.
* Slow clients (headers, body, a Content-Length larger than the body) get a 408, and fetching
  input URLs counts inside the request's timeout.
"""

from __future__ import annotations

import http.server
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess, start_service
from tests.fixtures.waiting import wait_until

STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")
ANYIO_DEFAULT_THREADS = 40
SATURATING_RUNS = ANYIO_DEFAULT_THREADS + 5


def comfy_queue(service: ServiceProcess) -> dict:
    return requests.get(f"{service.comfy_url}/queue", timeout=10).json()


def held_in_comfy(service: ServiceProcess, count: int) -> bool:
    queue = comfy_queue(service)
    return len(queue["queue_running"]) + len(queue["queue_pending"]) >= count


def test_saturating_sync_runs_leave_health_and_listings_free(tmp_path: Path):
    service = start_service(STANDIN_TARGET, tmp_path / "s")
    gate = service.gate()
    try:
        with ThreadPoolExecutor(SATURATING_RUNS) as pool:
            runs = [
                pool.submit(service.post, "/predict", json={"workflow": gate.workflow()})
                for _ in range(SATURATING_RUNS)
            ]
            try:
                # As many runs inside ComfyUI (one running, the rest queued) as anyio's default
                # pool has threads: each holds a thread while it waits.
                wait_until(
                    lambda: held_in_comfy(service, ANYIO_DEFAULT_THREADS),
                    60,
                    message=lambda: f"ComfyUI holds {comfy_queue(service)}",
                )
                assert service.get("/healthz", timeout=5).status_code == 200
                models = service.get("/models", params={"refresh": "1"}, timeout=5)
                assert models.status_code == 200, models.text
            finally:
                gate.release()
            assert [run.result().status_code for run in runs] == [200] * SATURATING_RUNS
    finally:
        service.stop()


def test_sigterm_mid_run_answers_503_with_retry_after_within_the_grace(tmp_path: Path):
    service = start_service(STANDIN_TARGET, tmp_path / "s")
    gate = service.gate()  # never released: the run would wait forever
    answer: dict = {}

    def call() -> None:
        try:
            answer["response"] = service.post("/predict", json={"workflow": gate.workflow(), "timeout": 600})
        except requests.RequestException as exc:
            answer["error"] = exc
        answer["at"] = time.monotonic()

    caller = threading.Thread(target=call)
    caller.start()
    try:
        gate.wait_entered()
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        caller.join(30)
        assert "response" in answer, answer.get("error")
        response = answer["response"]
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        assert response.json()["error"]["code"] == "comfyui_unavailable"
        assert answer["at"] - signalled < 10.0  # Cloud Run's SIGKILL comes 10 s after SIGTERM
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert service.process.wait(30) in (0, -signal.SIGTERM), service.log()[-3000:]
        assert service.comfy_pid() is None
    finally:
        if service.process.poll() is None:
            gate.release()
        service.stop()


# --- slow clients ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Short read timeouts, and URLs on loopback allowed (the slow image server)."""
    running = start_service(
        STANDIN_TARGET,
        tmp_path_factory.mktemp("strict"),
        HEADER_READ_TIMEOUT_S="1",
        BODY_READ_TIMEOUT_S="1",
        URL_ALLOWLIST="127.0.0.1",
    )
    yield running
    running.stop()


def read_answer(sock: socket.socket, within_s: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(within_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """One byte every 0.2 s, until told to stop or the server hangs up."""
    for byte in data:
        if stop.wait(0.2):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def assert_408(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("trickled", [False, True], ids=["stalled", "one-byte-at-a-time"])
def test_slow_headers_are_408_and_the_connection_closed(strict_service: ServiceProcess, trickled: bool):
    request = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + b"X-Pad: a\r\n" * 100
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", strict_service.port)) as sock:
        sock.sendall(request[:10])
        if trickled:
            threading.Thread(target=trickle, args=(sock, request[10:], stop), daemon=True).start()
        try:
            assert_408(read_answer(sock))
        finally:
            stop.set()


@pytest.mark.parametrize("trickled", [False, True], ids=["short-body", "one-byte-at-a-time"])
def test_slow_or_short_bodies_are_408(strict_service: ServiceProcess, trickled: bool):
    body = json.dumps({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}}}).encode() + b" " * 200
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) + (0 if trickled else 1000)}\r\n\r\n"
    ).encode()
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", strict_service.port)) as sock:
        sock.sendall(head + body[:5])
        if trickled:
            threading.Thread(target=trickle, args=(sock, body[5:], stop), daemon=True).start()
        else:
            sock.sendall(body[5:])  # all of it, but less than Content-Length says
        try:
            assert_408(read_answer(sock))
        finally:
            stop.set()


class SlowImage(http.server.BaseHTTPRequestHandler):
    """Answers at once, then sends its body one byte a second."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "60")
        self.end_headers()
        for _ in range(60):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(1)

    def log_message(self, *args) -> None:
        pass


def test_fetching_input_urls_counts_inside_the_request_timeout(strict_service: ServiceProcess):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowImage)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow.png"
        workflow = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        }
        started = time.monotonic()
        response = strict_service.post(
            "/predict", json={"workflow": workflow, "timeout": 2, "images": [{"name": "in.png", "image": url}]}
        )
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "timeout"
    assert elapsed < 20  # the body alone takes 60 s; URL_FETCH_TIMEOUT_S is 30 s
