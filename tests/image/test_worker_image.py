"""The worker image run as Cloud Run runs it (user 1000, PORT, SIGTERM then SIGKILL 10 s later), on
CPU: ComfyUI boots, /healthz turns ready, /models lists the built-in checkpoint, /predict answers a
PNG (the sd15 txt2img template on the tiny SD1.5 checkpoint where the image holds a real ComfyUI),
an async job succeeds with its webhook, and a stop ends cleanly within 10 s."""

from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image

from tests.fixtures.asyncjobs import quick, wait_for
from tests.fixtures.receiver import Receiver
from tests.image.conftest import Images
from tests.image.harness import CHECKPOINT, Container, txt2img_request, worker_env

SIZE = 64


def png_of(body: dict) -> Image.Image:
    assert body["status"] == "success", body
    (image,) = body["images"]
    data = base64.b64decode(image["image"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    return decoded


@pytest.fixture(scope="module")
def worker(images: Images, docker_cleanup):
    container = Container(images.docker, images.worker, worker_env(images.real)).start()
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()


def test_ready_on_cpu_without_a_gpu(worker, images: Images):
    assert worker.get("/healthz").status_code == 200
    (spawn,) = [line for line in worker.logs().splitlines() if "starting ComfyUI:" in line]
    assert " --cpu" in spawn and "main.py" in spawn, spawn
    print(f"worker ({images.source}): docker run -> ready in {worker.ready_s:.1f} s")


def test_models_lists_the_built_in_checkpoint(worker):
    listed = worker.get("/models").json()
    assert listed["model_type"] == "test"
    assert CHECKPOINT in listed["models"]["checkpoints"], listed


def test_the_sd15_txt2img_template_answers_a_png(worker, images: Images):
    if not images.real:
        pytest.skip(
            f"the worker image holds {images.source}: the sd15 template needs a real ComfyUI "
            "(set COMFYUI_SOURCE); /predict is checked on a stand-in graph below"
        )
    response = worker.post("/predict", json=txt2img_request(images.real, seed=5), timeout=300)
    assert response.status_code == 200, response.text[:2000]
    assert png_of(response.json()).size == (SIZE, SIZE)


def test_predict_answers_a_png(worker, images: Images):
    response = worker.post("/predict", json={"workflow": quick(7)}, timeout=300)
    assert response.status_code == 200, response.text[:2000]
    assert png_of(response.json()).size == (SIZE, SIZE)


def test_the_pinned_custom_node_is_loaded(worker, images: Images):
    if not images.real:
        pytest.skip(f"the worker image holds {images.source}, which loads no custom nodes")
    comfy_port = worker.env["COMFYUI_PORT"]
    info = requests.get(f"http://127.0.0.1:{comfy_port}/object_info/ImageTierPinned", timeout=30).json()
    assert info["ImageTierPinned"]["input"]["required"]["text"][1]["default"] == "pinned"


def test_an_async_job_succeeds_with_its_webhook(worker, images: Images):
    receiver = Receiver()
    try:
        request = {**txt2img_request(images.real, seed=9), "async": True, "webhook": {"url": receiver.url}}
        submitted = worker.post("/predict", json=request)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        final = wait_for(
            worker,
            job_id,
            lambda s: s["state"] in {"succeeded", "failed"} and s.get("webhook", {}).get("delivered_at"),
            timeout=300,
        )
        assert final["state"] == "succeeded", final
        (delivery,) = receiver.received
        assert delivery["verified"] and delivery["payload"]["data"]["job_id"] == job_id
    finally:
        receiver.close()


def test_a_stop_ends_cleanly_within_10_s(worker):
    seconds, code = worker.stop()
    assert code == 0, worker.logs()[-3000:]
    assert seconds < 10, f"stopped in {seconds:.1f} s (SIGKILL comes at 10 s)"
