"""GET /workflows, /workflows/{id}, /openapi.json and /docs, served by a real uvicorn."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import uvicorn
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from handler.config import Settings
from handler.errors import ServiceError
from handler.routes import openapi, workflows
from handler.templates.registry import Templates
from tests.fixtures.sections import sections

ROOT = Path(__file__).resolve().parents[2]


async def _service_error(request, exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status_code)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "workflows"
    shutil.copytree(ROOT / "test_resources" / "templates", target)
    return target


@pytest.fixture
def base_url(folder: Path):
    settings = Settings(workflows_dir=folder, model_type="base")
    services = SimpleNamespace(
        settings=settings,
        templates=Templates.from_settings(**sections(settings, "models", "urls", "cloud")),
        comfy=None,  # no ComfyUI and no published catalogue: availability is not known
        published=None,
    )
    stub = Route("/predict", lambda request: JSONResponse({}), methods=["POST"])
    app = Starlette(
        routes=[stub, *workflows.routes(), *openapi.routes()], exception_handlers={ServiceError: _service_error}
    )
    app.state.services = services  # what services_of(request) hands the routes
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_list(base_url):
    body = requests.get(f"{base_url}/workflows", timeout=10).json()
    assert body["model_type"] == "base"
    assert [w["id"] for w in body["workflows"]] == ["invert", "solid-blur", "solid-scale"]
    assert "errors" not in body


def test_one_workflow_with_its_schema(base_url):
    response = requests.get(f"{base_url}/workflows/solid-scale", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "solid-scale" and body["available"] is None
    assert body["params"]["properties"]["size"]["maximum"] == 512


def test_unknown_workflow_is_404(base_url):
    response = requests.get(f"{base_url}/workflows/nope", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_hot_reload_and_broken_manifest_over_http(base_url, folder):
    (folder / "solid-blur.manifest.json").write_text("{ broken")
    body = requests.get(f"{base_url}/workflows", timeout=10).json()
    assert [w["id"] for w in body["workflows"]] == ["invert", "solid-scale"]
    assert "not valid JSON" in body["errors"]["solid-blur"]
    assert requests.get(f"{base_url}/workflows/solid-blur", timeout=10).status_code == 404


def test_openapi_lists_mounted_routes_and_templates(base_url):
    doc = requests.get(f"{base_url}/openapi.json", timeout=10).json()
    validate(doc)
    assert set(doc["paths"]) == {"/predict", "/workflows", "/workflows/{workflow_id}", "/openapi.json"}
    assert "invert.params" in doc["components"]["schemas"]


def test_docs_page_and_its_assets_are_served_locally(base_url):
    page = requests.get(f"{base_url}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        response = requests.get(f"{base_url}{openapi.ASSETS}/{asset}", timeout=10)
        assert response.status_code == 200 and len(response.content) > 10_000, asset


def test_listing_without_a_catalogue_does_not_guess_availability(base_url, folder):
    # What a ComfyUI can run is decided by its catalogue (tests/routes/test_workflows_truth.py):
    # without one, `available` is null, whatever the template's model_type, and none is listed
    # as available.
    manifest = json.loads((folder / "solid-blur.manifest.json").read_text())
    (folder / "solid-blur.manifest.json").write_text(json.dumps({**manifest, "model_type": "sdxl"}))
    listed = {w["id"]: w for w in requests.get(f"{base_url}/workflows", timeout=10).json()["workflows"]}
    assert listed["solid-blur"]["available"] is None and listed["solid-blur"]["model_type"] == "sdxl"
    assert listed["invert"]["available"] is None
    assert requests.get(f"{base_url}/workflows?available=true", timeout=10).json()["workflows"] == []


# --- end to end: templates through `python -m handler` and a ComfyUI (stand-in, and real if given) --


@pytest.fixture(scope="module")
def template_service(comfy_target, tmp_path_factory):
    from tests.fixtures.comfy import start_service

    root = tmp_path_factory.mktemp(f"templates-{comfy_target.name}")
    folder = root / "workflows"
    shutil.copytree(ROOT / "test_resources" / "templates", folder)
    service = start_service(comfy_target, root / "state", WORKFLOWS_DIR=str(folder))
    service.folder = folder
    yield service
    service.stop()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _pixels(data: bytes):
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(data)).convert("RGB")


def test_e2e_solid_blur(template_service):
    import base64

    response = template_service.post(
        "/predict",
        json={
            "workflow_id": "solid-blur",
            "params": {"width": 40, "height": 24, "color": 0x00FF00, "blur_radius": 2},
        },
    )
    assert response.status_code == 200, response.text
    (image,) = response.json()["images"]
    data = base64.b64decode(image["image"])
    assert _png_size(data) == (40, 24)
    assert _pixels(data).getpixel((20, 12)) == (0, 255, 0)


def test_e2e_one_parameter_feeding_two_inputs(template_service):
    import base64

    response = template_service.post("/predict", json={"workflow_id": "solid-scale", "params": {"size": 16}})
    assert response.status_code == 200, response.text
    (image,) = response.json()["images"]
    assert _png_size(base64.b64decode(image["image"])) == (16, 16)


def test_e2e_image_parameter(template_service):
    import base64

    source = (ROOT / "test_resources" / "comfy" / "test_input.png").read_bytes()
    encoded = "data:image/png;base64," + base64.b64encode(source).decode()
    response = template_service.post("/predict", json={"workflow_id": "invert", "params": {"image": encoded}})
    assert response.status_code == 200, response.text
    (image,) = response.json()["images"]
    out = _pixels(base64.b64decode(image["image"]))
    original = _pixels(source)
    assert out.size == original.size
    expected = [255 - c for c in original.getpixel((3, 3))]
    assert all(abs(a - b) <= 1 for a, b in zip(out.getpixel((3, 3)), expected))  # float rounding


def test_e2e_image_parameter_by_name_uses_the_request_images(template_service):
    import base64

    source = (ROOT / "test_resources" / "comfy" / "test_input.png").read_bytes()
    response = template_service.post(
        "/predict",
        json={
            "workflow_id": "invert",
            "params": {"image": "mine.png"},
            "images": [{"name": "mine.png", "image": base64.b64encode(source).decode()}],
        },
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


def test_e2e_errors(template_service):
    missing = template_service.post("/predict", json={"workflow_id": "nope", "params": {}})
    assert missing.status_code == 404
    bad = template_service.post("/predict", json={"workflow_id": "solid-blur", "params": {"width": 5}})
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "width"
    required = template_service.post("/predict", json={"workflow_id": "invert"})
    assert required.status_code == 422
    assert required.json()["error"]["param"] == "image"


def test_e2e_hot_reload(template_service):
    folder = template_service.folder
    graph = json.loads((folder / "solid-blur.json").read_text())
    graph["3"]["inputs"]["filename_prefix"] = "tests/hot"
    (folder / "hot.json").write_text(json.dumps(graph))
    (folder / "hot.manifest.json").write_text(
        json.dumps(
            {
                "title": "Hot",
                "params": {"side": {"type": "integer", "min": 8, "max": 64, "to": ["1.width", "1.height"]}},
            }
        )
    )
    try:
        listed = [w["id"] for w in template_service.get("/workflows").json()["workflows"]]
        assert "hot" in listed
        assert "hot.params" in template_service.get("/openapi.json").json()["components"]["schemas"]
        response = template_service.post("/predict", json={"workflow_id": "hot", "params": {"side": 8}})
        assert response.status_code == 200, response.text
        import base64

        assert _png_size(base64.b64decode(response.json()["images"][0]["image"])) == (8, 8)
    finally:
        (folder / "hot.manifest.json").unlink()
    assert template_service.post("/predict", json={"workflow_id": "hot"}).status_code == 404


def test_e2e_docs_page(template_service):
    assert template_service.get("/docs").status_code == 200
    doc = template_service.get("/openapi.json").json()
    validate(doc)
    info = template_service.get("/").json()
    # Not the API: Cloud Tasks' deliveries, the docs page itself, and the operators' views (README).
    operators = {"/metrics", "/dashboard", "/dashboard/data", "/system"}
    documented = {
        path for path in info["endpoints"] if not path.startswith(("/tasks/", "/docs")) and path not in operators
    }
    assert documented <= {p.replace("{name}", "{name:path}") for p in doc["paths"]} | set(doc["paths"])
    assert "/workflows/{workflow_id}" in doc["paths"]
    if info["async"]:
        assert {"/status/{job_id}", "/cancel/{job_id}"} <= set(doc["paths"])


SHIPPED_IDS = sorted(p.name[: -len(".manifest.json")] for p in (ROOT / "workflows").glob("*.manifest.json"))


@pytest.fixture(scope="module")
def shipped_service(comfy_target, tmp_path_factory):
    from tests.fixtures.comfy import start_service

    root = tmp_path_factory.mktemp(f"shipped-{comfy_target.name}")
    service = start_service(comfy_target, root / "state", WORKFLOWS_DIR=str(ROOT / "workflows"))
    yield service
    service.stop()


@pytest.mark.parametrize("workflow_id", SHIPPED_IDS)
def test_e2e_shipped_templates_lack_nothing_but_model_files(shipped_service, workflow_id):
    """Without model weights, ComfyUI refuses a shipped template for its model files and nothing else."""
    import base64

    params = {"prompt": "a lighthouse"}
    if workflow_id.endswith("img2img"):
        params["image"] = base64.b64encode((ROOT / "test_resources" / "comfy" / "test_input.png").read_bytes()).decode()
    if "lora" in workflow_id:
        params["lora"] = "style.safetensors"
    response = shipped_service.post("/predict", json={"workflow_id": workflow_id, "params": params})
    assert response.status_code == 400, response.text
    node_errors = response.json()["error"]["node_errors"]
    problems = [
        (e["type"], e["extra_info"].get("input_name")) for entry in node_errors.values() for e in entry["errors"]
    ]
    assert problems and all(kind == "value_not_in_list" and name in MODEL_INPUT_NAMES for kind, name in problems), (
        problems
    )


MODEL_INPUT_NAMES = {"ckpt_name", "unet_name", "clip_name1", "clip_name2", "vae_name", "lora_name"}


def test_e2e_async_template_job(template_service):
    if not template_service.get("/").json()["async"]:
        pytest.skip("this service runs no async jobs")
    accepted = template_service.post(
        "/predict",
        json={
            "workflow_id": "solid-scale",
            "params": {"size": 24},
            "async": True,
            "inline": True,
        },
    )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    deadline = time.monotonic() + 60
    while True:
        status = template_service.get(f"/status/{job_id}").json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["state"] == "succeeded", status
    import base64

    (entry,) = status["result"]["files"]
    assert _png_size(base64.b64decode(entry["base64"])) == (24, 24)

    # Parameters are checked before a job is accepted.
    refused = template_service.post(
        "/predict", json={"workflow_id": "solid-scale", "params": {"size": 7}, "async": True}
    )
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "size"
    assert template_service.post("/predict", json={"workflow_id": "nope", "async": True}).status_code == 404
