"""Models by URL on the real ComfyUI (skipped without one, saying why): the tiny SD1.5 checkpoint
and a LoRA built for it (tests/fixtures/tiny_lora.py: the kohya format, random weights), served
over HTTP on loopback, named by URL in a txt2img through /predict. The service's own models folder
is empty: the run can only succeed from the cache. Run twice, each file is fetched once; the LoRA
changes the picture, so ComfyUI really loaded it from the cached name."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures.comfy import ServiceProcess
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.tiny_lora import make_lora
from tests.fixtures.tiny_model import NAME, TinyCheckpoint, real_target

SIZE = 64


def txt2img(checkpoint: object, lora: object | None, seed: int = 7) -> dict:
    model, clip = (["8", 0], ["8", 1]) if lora is not None else (["1", 0], ["1", 1])
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": clip}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": model,
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "od"}},
    }
    if lora is not None:
        graph["8"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": lora,
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        }
    return graph


def pixels(body: dict) -> bytes:
    (image,) = body["images"]
    return Image.open(io.BytesIO(base64.b64decode(image["image"]))).convert("RGB").tobytes()


@pytest.fixture
def real_service(
    tiny_checkpoint: TinyCheckpoint, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ServiceProcess]:
    target = real_target(request.config)
    (tmp_path / "models").mkdir()
    env = {
        "URL_ALLOWLIST": "127.0.0.1",
        "MODELS_DIR": str(tmp_path / "models"),
        "MODEL_CACHE_BYTES": str(2 * 1024**3),
    }
    service = ServiceProcess(target, tmp_path / "state", env=env).start().wait_ready(300)
    yield service
    service.stop()


def test_txt2img_with_checkpoint_and_lora_by_url_fetches_once(
    real_service: ServiceProcess, tiny_checkpoint: TinyCheckpoint, model_server: ModelServer, tmp_path: Path
) -> None:
    model_server.files[NAME] = tiny_checkpoint.path
    assert make_lora(tiny_checkpoint.path, tmp_path / "lora.safetensors") > 0
    model_server.files["tiny-lora.safetensors"] = lora_bytes = (tmp_path / "lora.safetensors").read_bytes()
    checkpoint = {"url": model_server.url("plain", NAME), "sha256": tiny_checkpoint.sha256}
    lora = model_server.url("plain", "tiny-lora.safetensors")

    # The first run streamed: its models' downloads come as events before the prompt is queued.
    streamed = real_service.post(
        "/predict", json={"workflow": txt2img(checkpoint, lora)}, headers={"Accept": "text/event-stream"}
    )
    assert streamed.status_code == 200, streamed.text[:3000]
    seen = [
        (kind[len("event: ") :], json.loads(data[len("data: ") :]))
        for kind, data in (block.split("\n", 1) for block in streamed.text.split("\n\n") if block.startswith("event: "))
    ]
    kinds = [kind for kind, _ in seen]
    assert (
        kinds[-1] == "result"
        and "download" in kinds
        and kinds.index("queued") > max(n for n, kind in enumerate(kinds) if kind == "download")
    ), kinds
    downloads = [data for kind, data in seen if kind == "download"]
    finished = {(d["file"], d["model"]) for d in downloads if d["bytes_done"] == d["bytes_total"]}
    assert {file for file, _ in finished} == {NAME, "tiny-lora.safetensors"}, downloads
    assert {model for _, model in finished} == {1, 2} and {d["models"] for d in downloads} == {2}, downloads
    first_body = seen[-1][1]
    report = {m["input"]: m for m in first_body["models"]}
    assert report["ckpt_name"]["fetched"] and report["ckpt_name"]["verified"]
    assert (
        report["ckpt_name"]["sha256"] == tiny_checkpoint.sha256 and report["ckpt_name"]["size"] == tiny_checkpoint.size
    )
    assert (
        report["lora_name"]["sha256"] == hashlib.sha256(lora_bytes).hexdigest() and not report["lora_name"]["verified"]
    )
    assert report["lora_name"]["folder"] == "loras" and "models_ms" in first_body["timings"]

    second = real_service.post("/predict", json={"workflow": txt2img(checkpoint, lora)})
    assert second.status_code == 200, second.text[:3000]
    assert not any(m["fetched"] for m in second.json()["models"])
    assert pixels(second.json()) == pixels(first_body)
    assert model_server.requests[f"/plain/{NAME}"] == 1 and model_server.requests["/plain/tiny-lora.safetensors"] == 1

    plain = real_service.post("/predict", json={"workflow": txt2img(checkpoint, None)})
    assert plain.status_code == 200, plain.text[:3000]
    assert pixels(plain.json()) != pixels(first_body)  # the LoRA was applied
    assert "lora key not loaded" not in real_service.log()


def test_the_lora_template_takes_its_checkpoint_and_lora_by_url(
    real_service: ServiceProcess, tiny_checkpoint: TinyCheckpoint, model_server: ModelServer, tmp_path: Path
) -> None:
    """`sd15-lora-txt2img`: template parameters that land in loader inputs take model URLs."""
    model_server.files[NAME] = tiny_checkpoint.path
    assert make_lora(tiny_checkpoint.path, tmp_path / "lora.safetensors") > 0
    model_server.files["tiny-lora.safetensors"] = (tmp_path / "lora.safetensors").read_bytes()
    common = {"prompt": "a lighthouse", "checkpoint": model_server.url("plain", NAME), "width": SIZE, "height": SIZE}
    common |= {"steps": 2, "seed": 7, "sampler": "euler"}
    with_lora = real_service.post(
        "/predict",
        json={
            "workflow_id": "sd15-lora-txt2img",
            "params": {**common, "lora": model_server.url("plain", "tiny-lora.safetensors"), "lora_strength": 1.0},
        },
    )
    assert with_lora.status_code == 200, with_lora.text[:3000]
    assert {m["input"] for m in with_lora.json()["models"]} == {"ckpt_name", "lora_name"}
    without = real_service.post("/predict", json={"workflow_id": "sd15-txt2img", "params": common})
    assert without.status_code == 200, without.text[:3000]
    assert pixels(with_lora.json()) != pixels(without.json())  # the LoRA was applied
    assert model_server.requests[f"/plain/{NAME}"] == 1  # the second run took the cached checkpoint
