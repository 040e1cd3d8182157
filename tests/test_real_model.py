"""A real model through the real ComfyUI: the tiny SD1.5 checkpoint (tests/fixtures/tiny_model.py)
run as txt2img and img2img, CheckpointLoaderSimple → CLIPTextEncode → KSampler → VAEDecode →
SaveImage, at 64 px and 2 steps on CPU: through /predict, as an async job, through the shipped
sd15 templates, listed by /models, fetched by the models downloader from fake-gcs-server with its
checksum, and warmed up before ready. The boot's order: without a warmup the service is ready
before ComfyUI's node catalogue has loaded; with one, catalogue, then the warmup (twice), then ready.

Without a real ComfyUI (COMFYUI_PATH / --comfyui-path) every test here skips and says why.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.fixtures.comfy import ServiceProcess
from tests.fixtures.tiny_model import NAME, TinyCheckpoint, real_target, txt2img
from tests.fixtures.waiting import wait_until

SIZE = 64


def img2img(image: str = "in.png", seed: int = 1) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAME}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "an oil painting", "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["4", 0],
                "negative": ["5", 0],
                "latent_image": ["3", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 0.5,
            },
        },
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "tiny-img2img"}},
    }


def png(width: int = SIZE, height: int = SIZE) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 90, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def only_image(body: dict) -> Image.Image:
    assert body["status"] == "success", body
    assert len(body["images"]) == 1, body["images"]
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["image"])))
    image.load()
    return image


@pytest.fixture(scope="module")
def sd_service(
    tiny_checkpoint: TinyCheckpoint, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service on the real ComfyUI, its models folder the tiny checkpoint's (MODELS_DIR)."""
    target = real_target(request.config)
    service = ServiceProcess(
        target, tmp_path_factory.mktemp("real-model"), env={"MODELS_DIR": str(tiny_checkpoint.models_dir)}
    )
    yield service.start().wait_ready(300)
    service.stop()


def test_ready_comes_before_the_node_catalogue_without_a_warmup(sd_service):
    log = wait_until(lambda: "node catalogue loaded" in sd_service.log() and sd_service.log(), 60)
    assert log.index("is ready (") < log.index("node catalogue loaded"), log[-3000:]


def test_models_lists_the_tiny_checkpoint(sd_service):
    response = sd_service.get("/models")
    assert response.status_code == 200, response.text
    assert NAME in json.dumps(response.json())


def test_txt2img_through_predict(sd_service):
    response = sd_service.post("/predict", json={"workflow": txt2img(seed=11)})
    assert response.status_code == 200, response.text[:2000]
    image = only_image(response.json())
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    # the same seed is the same picture: a real, deterministic sampler ran
    again = only_image(sd_service.post("/predict", json={"workflow": txt2img(seed=11)}).json())
    assert again.tobytes() == image.tobytes()


def test_img2img_through_predict(sd_service):
    response = sd_service.post("/predict", json={"workflow": img2img(), "images": [{"name": "in.png", "image": png()}]})
    assert response.status_code == 200, response.text[:2000]
    assert only_image(response.json()).size == (SIZE, SIZE)


def test_txt2img_as_an_async_job(sd_service):
    response = sd_service.post("/predict", json={"workflow": txt2img(seed=21), "async": True})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 240
    while True:
        status = sd_service.get(f"/status/{job_id}", params={"inline": "true"}).json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["state"] == "succeeded", status
    (file,) = status["result"]["files"]
    assert file["content_type"] == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(file["base64"]))).size == (SIZE, SIZE)


@pytest.mark.parametrize("workflow_id", ["sd15-txt2img", "sd15-img2img"])
def test_the_shipped_sd15_templates(sd_service, workflow_id):
    params = {
        "prompt": "a lighthouse",
        "checkpoint": NAME,
        "width": SIZE,
        "height": SIZE,
        "steps": 2,
        "seed": 5,
        "sampler": "euler",
    }
    if workflow_id == "sd15-img2img":
        params.update(image=png(96, 80), denoise=0.5)
    else:
        params["batch_size"] = 1
    response = sd_service.post("/predict", json={"workflow_id": workflow_id, "params": params})
    assert response.status_code == 200, response.text[:2000]
    assert only_image(response.json()).size == (SIZE, SIZE)


def test_a_missing_checkpoint_is_refused_before_running(sd_service):
    response = sd_service.post("/predict", json={"workflow": txt2img(checkpoint="absent.safetensors")})
    assert response.status_code == 400, response.text[:2000]
    assert response.json()["error"]["code"] == "workflow_invalid"


def test_downloaded_from_cloud_storage_with_its_checksum_then_warmed_up(tiny_checkpoint, fake_gcs, request, tmp_path):
    """MODELS_SOURCE=gs://…: the downloader fetches and verifies the checkpoint before ComfyUI boots,
    and the warmup workflow runs on it before the service says ready."""
    bucket = fake_gcs.new_bucket("models")
    blob = fake_gcs.client().bucket(bucket).blob(f"store/checkpoints/{NAME}")
    blob.upload_from_filename(str(tiny_checkpoint.path))
    models_file = tmp_path / "models.txt"
    line = (
        f"tiny-sd15 https://example.invalid/{NAME} checkpoints/{NAME} {tiny_checkpoint.sha256} {tiny_checkpoint.size}\n"
    )
    models_file.write_text(line)
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(txt2img(prefix="warmup")))
    env = {
        "MODELS_DIR": str(tmp_path / "models"),
        "MODELS_SOURCE": f"gs://{bucket}/store",
        "MODELS_FILE": str(models_file),
        "MODEL_TYPE": "tiny-sd15",
        "STORAGE_EMULATOR_HOST": fake_gcs.url,
        "WARMUP_WORKFLOW": str(warmup),
    }
    service = ServiceProcess(real_target(request.config), tmp_path / "state", env=env)
    try:
        service.start().wait_ready(300)
        log = service.log()
        assert "models for tiny-sd15 ready" in log and "1 downloaded" in log, log[-3000:]
        assert "warmup workflow warmup.json ran" in log and "then again in" in log, log[-3000:]
        assert log.index("node catalogue loaded") < log.index("warmup workflow") < log.index("is ready ("), log[-3000:]
        assert (tmp_path / "models" / "checkpoints" / NAME).stat().st_size == tiny_checkpoint.size
        started = time.monotonic()
        response = service.post("/predict", json={"workflow": txt2img(seed=3)})
        assert response.status_code == 200, response.text[:2000]
        assert only_image(response.json()).size == (SIZE, SIZE)
        assert time.monotonic() - started < 60
    finally:
        service.stop()

    # a checksum that does not match: the file is refused and ComfyUI never boots on it
    models_file.write_text(line.replace(tiny_checkpoint.sha256, "0" * 64))
    env["MODELS_DIR"] = str(tmp_path / "models-bad")
    bad = ServiceProcess(real_target(request.config), tmp_path / "state-bad", env=env).start()
    try:
        deadline = time.monotonic() + 120
        while "cannot fetch the models" not in bad.log():
            assert time.monotonic() < deadline, bad.log()[-3000:]
            time.sleep(0.2)
        assert "sha256" in bad.log()
        assert bad.get("/healthz").status_code == 503
        assert not (tmp_path / "models-bad" / "checkpoints" / NAME).exists()
    finally:
        bad.stop()
