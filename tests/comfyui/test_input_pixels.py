"""Input images are checked from their header before anything decodes them (issue 20): a
109-byte PNG declaring 10,000 × 10,000 pixels cost ComfyUI 3 GB and 11 s. Above MAX_INPUT_PIXELS
the request is a 413, whether the image came inline (at once, sync or async) or from a URL (when
the run fetches it); files that are not images (audio, say) are not judged by it."""

from __future__ import annotations

import base64
import struct
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width × height (its pixel data would not even fill it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def workflow() -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "px"}},
    }


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {"MAX_INPUT_PIXELS": "1000000", "URL_ALLOWLIST": "127.0.0.1"}
    running = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("pixels"), env=env).start().wait_ready()
    yield running
    running.stop()


def test_an_inline_image_declaring_too_many_pixels_is_413_before_it_runs(svc):
    bomb = png_declaring(10_000, 10_000)
    assert len(bomb) < 120
    image = [{"name": "in.png", "image": base64.b64encode(bomb).decode()}]
    for extra in ({}, {"async": True}):
        answer = svc.post("/predict", json={"workflow": workflow(), "images": image, **extra})
        assert answer.status_code == 413, answer.text
        error = answer.json()["error"]
        assert error["code"] == "payload_too_large" and "100000000 pixels" in error["message"]


def test_an_image_fetched_by_url_is_checked_the_same(svc):
    bomb = png_declaring(4_000, 4_000)

    class Serve(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/bomb.png"
        answer = svc.post("/predict", json={"workflow": workflow(), "images": [{"name": "in.png", "image": url}]})
        assert answer.status_code == 413, answer.text
    finally:
        server.shutdown()
        server.server_close()


def test_images_within_the_limit_and_other_files_pass(svc):
    small = (ROOT / "test_resources/comfy/test_input.png").read_bytes()
    images = [
        {"name": "in.png", "image": base64.b64encode(small).decode()},
        {
            "name": "tone.wav",
            "image": base64.b64encode((ROOT / "test_resources/workflows/tone.wav").read_bytes()).decode(),
        },
    ]
    answer = svc.post("/predict", json={"workflow": workflow(), "images": images})
    assert answer.status_code == 200, answer.text
