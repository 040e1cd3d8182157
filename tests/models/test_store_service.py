"""The model cache's store (MODEL_CACHE_STORE) through the service: two service processes on the
stand-in share one store folder, and what the first downloaded the second serves through /predict
without a request to the model server, over a budget that could not hold it; and, on the real
ComfyUI (skipped without one, saying why), a txt2img whose checkpoint is a URL the model server
does not have runs from the store's copy, linked into ComfyUI's folder (ComfyUI lists and loads
the symlink)."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from handler.models.index import Entry
from handler.models.refs import ModelRef
from handler.models.store import RECORD, Store
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.tiny_model import NAME, TinyCheckpoint, real_target, txt2img

KIB = 1024


def fetched_by(server: ModelServer) -> int:
    return sum(server.requests.values())


def service(tmp_path: Path, name: str, budget: int) -> ServiceProcess:
    target = ComfyTarget("standin", STANDIN, sys.executable, "")
    env = {
        "URL_ALLOWLIST": "127.0.0.1",
        "MODEL_CACHE_BYTES": str(budget),
        "MODEL_CACHE_DIR": str(tmp_path / name / "cache"),
        "MODEL_CACHE_STORE": str(tmp_path / "store"),
    }
    return ServiceProcess(target, tmp_path / name / "state", env=env).start()


def test_two_services_share_a_store_through_predict(tmp_path: Path, model_server: ModelServer) -> None:
    data = b"weights" * 20000  # 140 000 bytes: over the second service's 64 KiB budget
    digest = hashlib.sha256(data).hexdigest()
    model_server.files["big.safetensors"] = data
    url = model_server.url("plain", "big.safetensors")
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": {"url": url, "sha256": digest}}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    first, second = service(tmp_path, "a", 1024 * KIB), service(tmp_path, "b", 64 * KIB)
    try:
        first.wait_ready()
        second.wait_ready()
        # The stand-in's model lists are empty: ComfyUI's validation names the file it was given.
        answer = first.post("/predict", json={"workflow": workflow})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "workflow_invalid", answer.text
        (entry,) = first.get("/models").json()["cache"]["files"]
        assert not entry["stored"] and fetched_by(model_server) == 1
        record = tmp_path / "store" / entry["key"] / RECORD
        deadline = time.monotonic() + 20
        while not record.exists():  # copied in the background, after the answer
            assert time.monotonic() < deadline
            time.sleep(0.05)

        answer = second.post("/predict", json={"workflow": workflow})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "workflow_invalid", answer.text
        assert fetched_by(model_server) == 1  # served from the store, over a budget that could not hold it
        (linked,) = second.get("/models").json()["cache"]["files"]
        assert linked["stored"] and linked["sha256"] == digest and linked["key"] == entry["key"]
        assert linked["file"] in answer.text and str(tmp_path) not in answer.text
        assert requests.delete(f"{second.url}/models/cache/{entry['key']}", timeout=30).status_code == 200
        assert not (tmp_path / "store" / entry["key"]).exists()
    finally:
        first.stop()
        second.stop()


# --- on the real ComfyUI ---------------------------------------------------------------------------


@pytest.fixture
def real_with_store(
    tiny_checkpoint: TinyCheckpoint, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ServiceProcess]:
    target = real_target(request.config)
    (tmp_path / "models").mkdir()
    env = {
        "URL_ALLOWLIST": "127.0.0.1",
        "MODELS_DIR": str(tmp_path / "models"),  # empty: the checkpoint can only come from the store
        "MODEL_CACHE_BYTES": str(1024 * KIB),  # far below the checkpoint's size
        "MODEL_CACHE_STORE": str(tmp_path / "store"),
    }
    service = ServiceProcess(target, tmp_path / "state", env=env).start().wait_ready(300)
    yield service
    service.stop()


def test_a_checkpoint_linked_from_the_store_runs_a_txt2img(
    real_with_store: ServiceProcess, tiny_checkpoint: TinyCheckpoint, model_server: ModelServer, tmp_path: Path
) -> None:
    url = model_server.url("plain", NAME)  # the server does not have it: a download would be a 400
    ref = ModelRef(url=url, folder="checkpoints", filename=NAME, sha256=tiny_checkpoint.sha256)
    entry = Entry(
        key=ref.key,
        folder="checkpoints",
        filename=NAME,
        source=url,
        size=tiny_checkpoint.size,
        sha256=tiny_checkpoint.sha256,
        verified=True,
        fetched_at=time.time(),
        last_used=time.time(),
    )
    assert Store(root=tmp_path / "store").put(entry, tiny_checkpoint.path)  # as another instance left it

    answer = real_with_store.post(
        "/predict", json={"workflow": txt2img({"url": url, "sha256": ref.sha256}, seed=7, prefix="st")}
    )
    assert answer.status_code == 200, answer.text[:3000]
    (model,) = answer.json()["models"]
    assert model["stored"] and not model["fetched"] and model["sha256"] == tiny_checkpoint.sha256
    assert len(answer.json()["images"]) == 1 and fetched_by(model_server) == 0
    (linked,) = real_with_store.get("/models").json()["cache"]["files"]
    assert linked["stored"] and linked["key"] == ref.key
