"""Cancelling a prompt uses ComfyUI's per-job cancel where it has one (`POST
/api/jobs/{id}/cancel`): it checks that the prompt is still the one running and raises the
interrupt under the queue's lock. `POST /interrupt` with a `prompt_id` checks, then raises the
global interrupt flag in a second step: a prompt that ends in between leaves the flag for the
next prompt, another caller's. A ComfyUI without the route (404) gets the two old calls."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from handler.comfyui.api import ComfyAPI


class RecordingComfy:
    """A local HTTP server that records each call; the cancel route exists or answers 404."""

    def __init__(self, *, has_cancel_route: bool):
        self.calls: list[tuple[str, str, object]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.calls.append(("POST", self.path, json.loads(raw) if raw else None))
                if self.path.startswith("/api/jobs/") and not has_cancel_route:
                    self.send_response(404)
                    body = b"404: Not Found"
                else:
                    self.send_response(200)
                    body = json.dumps({"cancelled": True}).encode() if self.path.startswith("/api/") else b""
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("has_cancel_route", [True, False], ids=["with the cancel route", "without it"])
def test_a_cancel_is_one_atomic_call_where_comfyui_has_one(has_cancel_route: bool) -> None:
    comfy = RecordingComfy(has_cancel_route=has_cancel_route)
    api = ComfyAPI(comfy.url, client_id="c")
    try:
        api.interrupt("p-1")
    finally:
        api.close()
        comfy.close()
    cancel = ("POST", "/api/jobs/p-1/cancel", None)
    if has_cancel_route:
        assert comfy.calls == [cancel]  # nothing else: no global flag
    else:
        assert comfy.calls == [
            cancel,
            ("POST", "/queue", {"delete": ["p-1"]}),
            ("POST", "/interrupt", {"prompt_id": "p-1"}),
        ]
