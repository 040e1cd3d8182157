"""The sync worker end to end: a real service process, booting ComfyUI (stand-in or real)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.fixtures.comfy import RESOURCES, ComfyTarget, ServiceProcess, start_service
from tests.fixtures.waiting import wait_until

RECORDED = RESOURCES / "comfy" / "workflows"
KINDS = RESOURCES / "workflows"
TEST_INPUT = RESOURCES / "comfy" / "test_input.png"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(color: tuple[int, int, int], size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def decoded(item: dict) -> bytes:
    return base64.b64decode(item["image"])


# --- every recorded workflow ----------------------------------------------------------------

SUCCEEDS = {
    "empty_save.json": {("2", "image/png", "output")},
    "empty_blur_invert_scale_save.json": {("5", "image/png", "output")},
    "latent_save.json": {("3", "application/octet-stream", "output")},
    "preview_only.json": {("2", "image/png", "temp")},
    "websocket_save.json": {("2", "image/png", "websocket")},
    "loadimage_invert_save.json": {("3", "image/png", "output"), ("5", "image/png", "temp")},
}
REFUSED = {
    "bad_values.json": "prompt_outputs_failed_validation",
    "invalid_node_class.json": "missing_node_type",
    "missing_input_file.json": "prompt_outputs_failed_validation",
    "missing_model.json": "prompt_outputs_failed_validation",
    "missing_required_input.json": "prompt_outputs_failed_validation",
    "no_outputs.json": "prompt_no_outputs",
}


def with_test_input(body: dict) -> dict:
    return {**body, "images": [{"name": "proto_upload/test_input.png", "image": b64(TEST_INPUT.read_bytes())}]}


@pytest.mark.parametrize("name", sorted(SUCCEEDS))
def test_recorded_workflows_succeed_with_their_outputs(service: ServiceProcess, name: str):
    response = service.post("/predict", json=with_test_input({"workflow": load(RECORDED / name)}))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    assert {(i["node_id"], i["content_type"], i["type"]) for i in body["images"]} == SUCCEEDS[name]
    for item in body["images"]:
        assert len(decoded(item)) == item["size"] > 0
    assert body["timings"]["total_ms"] > 0


def test_saved_images_keep_the_callers_subfolder(service: ServiceProcess):
    body = service.post("/predict", json={"workflow": load(RECORDED / "empty_save.json")}).json()
    assert body["images"][0]["subfolder"] == "proto"
    assert body["outputs"]["2"]["images"][0]["subfolder"] == "proto"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_recorded_invalid_workflows_are_400_with_comfyuis_errors(service: ServiceProcess, name: str):
    response = service.post("/predict", json={"workflow": load(RECORDED / name)})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "workflow_invalid"
    assert error["comfyui_error"]["type"] == REFUSED[name]
    assert "node_errors" in error
    if name == "missing_model.json":
        assert error["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"


def test_an_execution_error_is_500_with_node_and_message(service: ServiceProcess):
    body = {
        "workflow": load(RECORDED / "execution_error_loadimage.json"),
        "images": [{"name": "notes.txt", "image": b64(b"this is not an image\n")}],
    }
    response = service.post("/predict", json=body)
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "execution_error"
    assert (error["node_id"], error["node_type"]) == ("1", "LoadImage")
    assert error["exception_message"]
    assert "Traceback" not in response.text


# --- every output kind -----------------------------------------------------------------------

OUTPUT_KINDS = {
    "preview_image.json": ("image/png", "temp"),
    "animated_webp.json": ("image/webp", "output"),
    "animated_png.json": ("image/png", "output"),
    "websocket_image.json": ("image/png", "websocket"),
    "video.json": ("video/mp4", "output"),
    "audio.json": ("audio/flac", "output"),
}


@pytest.mark.parametrize("name", sorted(OUTPUT_KINDS))
def test_every_output_kind_comes_back(service: ServiceProcess, name: str):
    content_type, kind = OUTPUT_KINDS[name]
    body = {"workflow": load(KINDS / name)}
    if name == "audio.json":
        body["images"] = [{"name": "tone.wav", "image": b64((KINDS / "tone.wav").read_bytes())}]
    response = service.post("/predict", json=body)
    assert response.status_code == 200, response.text
    items = response.json()["images"]
    assert items and all((i["content_type"], i["type"]) == (content_type, kind) for i in items), items
    magic = {"image/png": b"\x89PNG", "image/webp": b"RIFF", "audio/flac": b"fLaC"}
    if content_type in magic:
        assert decoded(items[0]).startswith(magic[content_type])
    if content_type == "video/mp4":
        assert decoded(items[0])[4:8] == b"ftyp"


def test_text_outputs_come_back_inline(service: ServiceProcess):
    response = service.post("/predict", json={"workflow": load(KINDS / "text_output.json")})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["3"]["text"] == ["320"]


def test_output_format_and_quality(service: ServiceProcess):
    body = {"workflow": load(RECORDED / "empty_save.json"), "output": {"format": "jpeg", "quality": 60}}
    item = service.post("/predict", json=body).json()["images"][0]
    assert item["content_type"] == "image/jpeg" and item["filename"].endswith(".jpg")
    assert decoded(item)[:2] == b"\xff\xd8"


# --- isolation and concurrency ----------------------------------------------------------------


def invert_graph(prefix: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def test_concurrent_requests_with_the_same_input_name_get_their_own_outputs(service: ServiceProcess):
    colors = [(10 * i, 200 - 10 * i, 7 * i) for i in range(6)]

    def run(color):
        body = {"workflow": invert_graph("same"), "images": [{"name": "in.png", "image": b64(png(color))}]}
        response = service.post("/predict", json=body)
        assert response.status_code == 200, response.text
        (item,) = response.json()["images"]
        with Image.open(io.BytesIO(decoded(item))) as image:
            return image.convert("RGB").getpixel((0, 0))

    with ThreadPoolExecutor(len(colors)) as pool:
        results = list(pool.map(run, colors))
    for got, color in zip(results, colors):
        assert all(abs(g - (255 - c)) <= 2 for g, c in zip(got, color)), (got, color)


def test_request_files_are_cleaned_up(service: ServiceProcess):
    body = {"workflow": invert_graph("cleanup/x"), "images": [{"name": "in.png", "image": b64(png((1, 2, 3)))}]}
    assert service.post("/predict", json=body).status_code == 200
    base = service.state_dir / "comfyui"

    def leftovers() -> list[Path]:
        try:
            found = [p for p in (base / "input").rglob("in.png")]
            return found + [p for p in (base / "output").rglob("*") if "cleanup" in str(p)]
        except FileNotFoundError:  # a folder went away while we looked: look again
            return leftovers()

    # Removal runs right after the answer has been sent.
    wait_until(lambda: leftovers() == [], 5, message=lambda: f"left behind: {leftovers()}")


def test_healthz_answers_at_once_while_a_job_runs(service: ServiceProcess):
    result = {}
    gate = service.gate()
    job = threading.Thread(target=lambda: result.update(r=service.post("/predict", json={"workflow": gate.workflow()})))
    job.start()
    try:
        gate.wait_entered()
        started = time.monotonic()
        health = service.get("/healthz")
        elapsed = time.monotonic() - started
    finally:
        gate.release()
        job.join()
    assert health.status_code == 200 and elapsed < 1.0
    assert result["r"].status_code == 200, result["r"].text


def test_a_timeout_interrupts_comfyui_and_is_504(service: ServiceProcess):
    started = time.monotonic()
    gate = service.gate()  # never released: only the interrupt ends the job
    response = service.post("/predict", json={"workflow": gate.workflow(), "timeout": 0.5})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "timeout"
    # ComfyUI was interrupted, not left busy: the next small job runs promptly.
    after = service.post("/predict", json={"workflow": load(RECORDED / "empty_save.json"), "timeout": 30})
    assert after.status_code == 200, after.text
    assert time.monotonic() - started < 40


# --- bad requests ------------------------------------------------------------------------------


def test_invalid_json_is_400(service: ServiceProcess):
    response = service.post("/predict", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_ui_format_is_400_with_a_hint(service: ServiceProcess):
    response = service.post("/predict", json={"workflow": {"nodes": [], "links": [], "version": 0.4}})
    assert response.status_code == 400 and "Export (API)" in response.json()["error"]["message"]


def test_bad_base64_is_400(service: ServiceProcess):
    body = {"workflow": invert_graph("x"), "images": [{"name": "in.png", "image": "not base64!"}]}
    assert service.post("/predict", json=body).status_code == 400


def test_an_input_name_leaving_the_folder_is_400(service: ServiceProcess):
    body = {"workflow": invert_graph("x"), "images": [{"name": "../../escape.png", "image": b64(png((0, 0, 0)))}]}
    response = service.post("/predict", json=body)
    assert response.status_code == 400 and "not allowed" in response.text
    assert not (service.state_dir / "escape.png").exists()


def test_unknown_routes_are_json_404(service: ServiceProcess):
    response = service.get("/nope")
    assert response.status_code == 404 and response.json()["status"] == "error"


# --- models and info ---------------------------------------------------------------------------


def test_models_lists_folders_as_comfyui_sees_them(service: ServiceProcess):
    body = service.get("/models").json()
    assert {"checkpoints", "loras", "vae"} <= set(body["models"])
    assert service.get("/models/checkpoints").json()["models"] == body["models"]["checkpoints"]
    assert service.get("/models?refresh=true").status_code == 200
    assert service.get("/models/nope").status_code == 404


def test_info_describes_the_service(service: ServiceProcess):
    body = service.get("/").json()
    assert body["comfyui"]["ready"] is True and body["comfyui"]["version"]
    assert "/predict" in body["endpoints"]


# --- limits and readiness (own services) -------------------------------------------------------


def test_a_body_over_the_limit_is_413(comfy_target: ComfyTarget, tmp_path: Path):
    service = start_service(comfy_target, tmp_path / "s", MAX_BODY_BYTES="2000")
    try:
        body = {"workflow": invert_graph("x"), "images": [{"name": "in.png", "image": b64(b"\0" * 4000)}]}
        response = service.post("/predict", json=body)
        assert response.status_code == 413, response.text
    finally:
        service.stop()


def test_not_ready_is_503_with_retry_after(tmp_path: Path):
    # A "ComfyUI" that never starts listening.
    fake = tmp_path / "never"
    fake.mkdir()
    (fake / "main.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    service = ServiceProcess(ComfyTarget("never", fake, "python3", ""), tmp_path / "s").start()
    try:

        def answered():  # a 503 Response is falsy: wrap it
            try:
                return [service.get("/healthz", timeout=2)]
            except requests.RequestException:
                return None

        (health,) = wait_until(answered, 30, message="the service never answered /healthz")
        assert health.status_code == 503 and health.headers["Retry-After"]
        response = service.post("/predict", json={"workflow": load(RECORDED / "empty_save.json")})
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert response.json()["error"]["code"] == "comfyui_unavailable"
    finally:
        service.stop()
