"""Sync /predict answers of every form and size: chunked above the limit, raw files, URL links,
content negotiation, gs:// inputs; end to end against the stand-in (and a real ComfyUI)."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
import requests
from PIL import Image

from handler.config import CLOUD_RUN_MAX_REQUEST_BYTES, Settings
from handler.errors import NotAcceptable
from handler.routes.delivery import AnswerForm, negotiate
from tests.fixtures.cloudrun import CloudRunFront
from tests.fixtures.comfy import RESOURCES, ComfyTarget, ServiceProcess, start_service
from tests.fixtures.waiting import wait_until

RECORDED = RESOURCES / "comfy" / "workflows"
TEST_INPUT = RESOURCES / "comfy" / "test_input.png"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def empty_save(color: int | None = None, size: int = 64, batch: int = 1) -> dict:
    color = int.from_bytes(os.urandom(3), "big") if color is None else color
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "deliver/out"}},
    }


def big_noise() -> dict:
    """Four noisy 2048² PNGs: about 42 MB of files, 56 MB of base64."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 2048, "height": 2048, "batch_size": 4, "color": int.from_bytes(os.urandom(3), "big")},
        },
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 7, "strength": 0.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "big/noise"}},
    }


def leftovers(service: ServiceProcess, *names: str) -> list[Path]:
    """Files of the service's ComfyUI folders whose path mentions one of `names`."""
    base = service.state_dir / "comfyui"
    # os.walk, not rglob: a run's folder may be removed while it is walked (rglob raises then)
    return [
        Path(folder, file)
        for folder, _, files in os.walk(base)
        for file in files
        if any(name in os.path.join(folder, file) for name in names)
    ]


# --- negotiation (no servers) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "form"),
    [
        (None, AnswerForm.JSON),
        ("", AnswerForm.JSON),
        ("*/*", AnswerForm.JSON),
        ("application/json", AnswerForm.JSON),
        ("text/html,application/xhtml+xml,*/*;q=0.8", AnswerForm.JSON),
        ("text/event-stream", AnswerForm.EVENTS),
        ("image/png", AnswerForm.RAW),
        ("image/*", AnswerForm.RAW),
        ("video/mp4, application/json", AnswerForm.RAW),
        ("application/octet-stream", AnswerForm.RAW),
    ],
)
def test_the_accept_header_decides_the_form(accept: str | None, form: AnswerForm):
    assert negotiate(accept).form is form


@pytest.mark.parametrize("accept", ["text/html", "text/plain", "application/xml", "image/png;q=0"])
def test_an_accept_that_allows_no_form_is_406(accept: str):
    with pytest.raises(NotAcceptable):
        negotiate(accept)


def test_max_body_bytes_defaults_to_what_cloud_run_accepts_in_cloud_mode():
    assert Settings.from_env({"K_SERVICE": "svc"}).max_body_bytes == CLOUD_RUN_MAX_REQUEST_BYTES == 32 * 1024 * 1024
    assert Settings.from_env({}).max_body_bytes == 64 * 1024 * 1024
    assert Settings.from_env({"K_SERVICE": "svc", "MAX_BODY_BYTES": "1000"}).max_body_bytes == 1000
    assert Settings.from_env({}).chunked_above_bytes < 32 * 1024 * 1024


# --- raw answers -----------------------------------------------------------------------------


def test_accept_image_png_answers_the_file_itself_with_its_metadata(service: ServiceProcess):
    response = service.post("/predict", json={"workflow": empty_save(0x112233)}, headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert int(response.headers["content-length"]) == len(response.content)
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size == (64, 64) and image.getpixel((0, 0))[:3] == (0x11, 0x22, 0x33)
    assert response.headers["x-prompt-id"]
    assert response.headers["x-output-node"] == "2"
    assert response.headers["content-disposition"].startswith('inline; filename="out_')
    assert "comfyui;dur=" in response.headers["server-timing"]
    assert json.loads(response.headers["x-outputs"])["2"]["images"][0]["subfolder"] == "deliver"


def test_accept_webp_reencodes_a_still_image(service: ServiceProcess):
    response = service.post("/predict", json={"workflow": empty_save()}, headers={"Accept": "image/webp"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert response.content[:4] == b"RIFF" and response.content[8:12] == b"WEBP"


def test_a_raw_answer_with_several_outputs_is_406_and_leaves_no_files(service: ServiceProcess):
    body = {"workflow": empty_save(batch=2)}
    response = service.post("/predict", json=body, headers={"Accept": "image/png"})
    assert response.status_code == 406, response.text
    error = response.json()["error"]
    assert error["code"] == "not_acceptable"
    assert "2 files" in error["message"] and "application/json" in error["message"]
    wait_until(lambda: not leftovers(service, "deliver"), message="the run's files removed")
    # With JSON acceptable too, the same run answers JSON.
    fallback = service.post("/predict", json=body, headers={"Accept": "image/png, */*;q=0.1"})
    assert fallback.status_code == 200 and len(fallback.json()["images"]) == 2


def test_a_wrong_accept_is_406_before_anything_runs(service: ServiceProcess):
    # an earlier test's run may still be removing its files (that happens after its answer)
    wait_until(lambda: not leftovers(service, "deliver"), message="earlier runs' files removed")
    response = service.post("/predict", json={"workflow": empty_save()}, headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
    assert not leftovers(service, "deliver")


def test_raw_and_url_delivery_together_are_refused(service: ServiceProcess):
    body = {"workflow": empty_save(), "output": {"delivery": "url"}}
    response = service.post("/predict", json=body, headers={"Accept": "image/png"})
    assert response.status_code == 400
    assert service.post("/predict", json={**body, "output": {"delivery": "ftp"}}).status_code == 400


# --- url delivery ----------------------------------------------------------------------------


def test_url_delivery_stores_the_files_and_answers_links(service: ServiceProcess):
    body = {"workflow": empty_save(0x445566, batch=2), "output": {"delivery": "url"}}
    response = service.post("/predict", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success" and len(answer["images"]) == 2
    inline = service.post("/predict", json={"workflow": body["workflow"]}).json()
    for item, same in zip(answer["images"], inline["images"]):
        assert "image" not in item
        assert item["uri"].startswith("local://outputs/sync-")
        fetched = requests.get(item["url"], timeout=30)
        assert fetched.status_code == 200
        with (
            Image.open(io.BytesIO(fetched.content)) as image,
            Image.open(io.BytesIO(base64.b64decode(same["image"]))) as ref,
        ):
            assert image.tobytes() == ref.tobytes()  # the metadata differs: each run is marked
        assert len(fetched.content) == item["size"]
    assert answer["timings"]["store_ms"] >= 0
    wait_until(lambda: not leftovers(service, "deliver"), message="the run's files removed from ComfyUI's folders")


# --- beyond 32 MiB, through Cloud Run's rules ------------------------------------------------


@pytest.fixture
def front(service: ServiceProcess):
    proxy = CloudRunFront(service.port)
    yield proxy
    proxy.close()


def test_an_answer_over_40_mib_reaches_the_client_through_cloud_runs_limit(
    service: ServiceProcess, front: CloudRunFront
):
    response = requests.post(front.url + "/predict", json={"workflow": big_noise()}, timeout=600)
    assert response.status_code == 200, response.text[:500]
    assert not front.refused
    assert len(response.content) > 40 * 1024 * 1024
    images = response.json()["images"]
    assert len(images) == 4 and all(len(base64.b64decode(i["image"])) == i["size"] for i in images)
    assert response.headers.get("transfer-encoding") == "chunked"


def test_without_chunking_cloud_runs_limit_would_refuse_that_answer(comfy_target: ComfyTarget, tmp_path: Path):
    if comfy_target.is_real:
        pytest.skip("the proxy's refusal does not depend on the ComfyUI behind the service")
    service = start_service(comfy_target, tmp_path / "s", CHUNKED_ABOVE_BYTES=str(1 << 30))
    proxy = CloudRunFront(service.port)
    try:
        response = requests.post(proxy.url + "/predict", json={"workflow": big_noise()}, timeout=600)
        assert response.status_code == 500
        assert proxy.refused and "Content-Length" in proxy.refused[0]
    finally:
        proxy.close()
        service.stop()


def test_a_request_over_32_mib_never_reaches_the_service(service: ServiceProcess, front: CloudRunFront):
    padding = "A" * (33 * 1024 * 1024)
    response = requests.post(
        front.url + "/predict",
        data=json.dumps({"workflow": empty_save(), "pad": padding}),
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 413
    assert front.refused and front.refused[0].startswith("request of")


# --- gs:// inputs ----------------------------------------------------------------------------


@pytest.fixture
def gcs_service(comfy_target: ComfyTarget, tmp_path: Path, fake_gcs, gcs_bucket: str):
    store_bucket = fake_gcs.new_bucket("store")
    service = start_service(
        comfy_target,
        tmp_path / "s",
        STORAGE_EMULATOR_HOST=fake_gcs.url,
        URL_ALLOWLIST=f"gs://{gcs_bucket}/inputs/",
        STORAGE_BACKEND="gcs",
        GCS_BUCKET=store_bucket,
    )
    yield service, gcs_bucket, store_bucket
    service.stop()


def loadimage_invert() -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "gs/out"}},
    }


def test_gs_inputs_are_read_from_allowlisted_buckets_and_url_delivery_goes_to_cloud_storage(gcs_service, fake_gcs):
    service, bucket, store_bucket = gcs_service
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, "PNG")
    client = fake_gcs.client()
    client.bucket(bucket).blob("inputs/photo.png").upload_from_string(buffer.getvalue(), content_type="image/png")
    client.bucket(bucket).blob("secret/photo.png").upload_from_string(buffer.getvalue(), content_type="image/png")

    def body(uri: str, **extra) -> dict:
        return {"workflow": loadimage_invert(), "images": [{"name": "photo.png", "image": uri}], **extra}

    raw = service.post("/predict", json=body(f"gs://{bucket}/inputs/photo.png"), headers={"Accept": "image/png"})
    assert raw.status_code == 200, raw.text
    with Image.open(io.BytesIO(raw.content)) as image:
        assert image.getpixel((0, 0))[:3] == (245, 235, 225)

    refused = service.post("/predict", json=body(f"gs://{bucket}/secret/photo.png"))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsafe_url"
    assert service.post("/predict", json=body(f"gs://{store_bucket}/jobs/x")).status_code == 400
    missing = service.post("/predict", json=body(f"gs://{bucket}/inputs/nothing.png"))
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "fetch_failed"

    linked = service.post("/predict", json=body(f"gs://{bucket}/inputs/photo.png", output={"delivery": "url"}))
    assert linked.status_code == 200, linked.text
    item = linked.json()["images"][0]
    assert item["uri"].startswith(f"gs://{store_bucket}/outputs/sync-")
    name = item["uri"].split("/", 3)[3]
    stored = client.bucket(store_bucket).blob(name).download_as_bytes()
    assert len(stored) == item["size"] and stored.startswith(b"\x89PNG")
    assert linked.json()["url_note"]  # the emulator's anonymous credentials cannot sign
