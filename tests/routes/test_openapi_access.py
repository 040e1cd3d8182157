"""The OpenAPI document declares the access layer's answers per operation (docs/security.md,
"Access"): 401 where a caller is needed, 403 where a role decides, 429 (with `Retry-After`) where a
key's limits count, 431 everywhere (the header cap). Checked on the document, then against a
service with keys: what each documented operation answers a caller without a key, or with a
caller key on an admin route, is among its declared answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate

from handler.routes import openapi
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess
from tests.fixtures.keys import make_key

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"get", "post", "put", "delete", "patch"}
ADMIN_ONLY = {("/dashboard", "get"), ("/dashboard/data", "get"), ("/system", "get")}
ADMIN_ONLY |= {("/models/fetch", "post"), ("/models/cache/{key}", "delete")}


def operations(doc: dict) -> dict[tuple[str, str], dict]:
    return {
        (path, method): op for path, item in doc["paths"].items() for method, op in item.items() if method in METHODS
    }


def test_every_operation_declares_the_access_answers_that_apply() -> None:
    doc = openapi.document(None)
    validate(doc)
    ops = operations(doc)
    assert ops
    for (path, method), op in ops.items():
        answers = op["responses"]
        assert "431" in answers, (path, method)
        if path == "/healthz":
            assert "401" not in answers and op["security"] == []  # Cloud Run's probes need no key
        else:
            assert "401" in answers, (path, method)
        assert ("403" in answers) == ((path, method) in ADMIN_ONLY or path == "/predict"), (path, method)
        assert ("429" in answers) == (path == "/predict"), (path, method)
    assert "Retry-After" in ops[("/predict", "post")]["responses"]["429"]["headers"]
    assert ops[("/predict", "post")]["responses"]["200"]  # what the route declared itself is kept


def test_what_the_service_answers_for_access_is_declared(tmp_path: Path) -> None:
    file = tmp_path / "keys.jsonl"
    caller = make_key(file, "--role", "caller")
    target = ComfyTarget("standin", STANDIN, sys.executable, "")
    service = ServiceProcess(target, tmp_path / "svc", env={"API_KEYS_FILE": str(file)}).start().wait_ready()
    try:
        doc = service.get("/openapi.json", headers={"X-API-Key": caller}).json()
        for (path, method), op in operations(doc).items():
            url = service.url + path.replace("{", "x").replace("}", "")
            answers = [requests.request(method, url, timeout=30)]
            if (path, method) in ADMIN_ONLY or path == "/predict":
                body = {"workflow": {}} if path == "/predict" else None
                answers.append(requests.request(method, url, json=body, headers={"X-API-Key": caller}, timeout=30))
            for answer in answers:
                if answer.status_code >= 400:
                    assert str(answer.status_code) in op["responses"], (path, method, answer.status_code, answer.text)
            if path != "/healthz":
                assert answers[0].status_code == 401, (path, method)
    finally:
        service.stop()


@pytest.mark.parametrize("path", ["/predict", "/models"])
def test_the_header_cap_is_declared_where_it_answers(path: str) -> None:
    ops = operations(openapi.document(None))
    method = "post" if path == "/predict" else "get"
    assert ops[(path, method)]["responses"]["431"]["description"]
