"""`output.format` beyond the encoder's limits is the caller's 400, not a 500 (issue 20): WebP
takes at most 16,383 pixels a side, and an image 16,384 wide re-encoded as WebP failed inside
Pillow. The same output as PNG (no limit) still comes back."""

from __future__ import annotations

import sys

import pytest

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess

STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")


def wide(width: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 4, "batch_size": 1, "color": 9}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "wide"}},
    }


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    running = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("formats")).start().wait_ready()
    yield running
    running.stop()


def test_webp_wider_than_its_limit_is_a_400_that_says_so(svc):
    answer = svc.post("/predict", json={"workflow": wide(16_384), "output": {"format": "webp"}})
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert "16383" in message and "webp" in message.lower()


def test_within_the_limit_or_as_png_the_output_comes_back(svc):
    answer = svc.post("/predict", json={"workflow": wide(16_383), "output": {"format": "webp"}})
    assert answer.status_code == 200, answer.text
    (image,) = answer.json()["images"]
    assert image["content_type"] == "image/webp" and image["filename"].endswith(".webp")
    assert svc.post("/predict", json={"workflow": wide(16_384), "output": {"format": "png"}}).status_code == 200
