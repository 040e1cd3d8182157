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

from handler import workflows_api
from handler.config import Settings
from handler.errors import ServiceError
from handler.templates import Templates

ROOT = Path(__file__).resolve().parent.parent


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
    services = SimpleNamespace(settings=settings, templates=Templates.from_settings(settings))
    stub = Route("/predict", lambda request: JSONResponse({}), methods=["POST"])
    app = Starlette(routes=[stub, *workflows_api.routes(services)],
                    exception_handlers={ServiceError: _service_error})
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
    assert body["id"] == "solid-scale" and body["available"] is True
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
    if workflows_api._HAS_SWAGGER_UI:
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            response = requests.get(f"{base_url}{workflows_api.ASSETS}/{asset}", timeout=10)
            assert response.status_code == 200 and len(response.content) > 10_000, asset


def test_listing_reports_unavailable_model_types(base_url, folder):
    manifest = json.loads((folder / "solid-blur.manifest.json").read_text())
    (folder / "solid-blur.manifest.json").write_text(json.dumps({**manifest, "model_type": "sdxl"}))
    listed = {w["id"]: w for w in requests.get(f"{base_url}/workflows", timeout=10).json()["workflows"]}
    assert listed["solid-blur"]["available"] is False and listed["solid-blur"]["model_type"] == "sdxl"
    assert listed["invert"]["available"] is True
