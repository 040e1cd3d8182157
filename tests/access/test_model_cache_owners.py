"""Models fetched by URL for one caller are not another caller's to use by name (issue 20, the
second adversarial pass).

The model cache is shared: a file fetched for a request sits in ComfyUI's model lists as
`<key>/<filename>`. A URL may carry a credential only its caller has (a token in the query, a
signed link); before this, another caller read the cached name from `GET /models` (or from its own
error's options) and loaded the file by that name, without the URL. Now a cached file is reached
by its URL only, and the cache's listing is for admins. Run on the stand-in (whose model lists
stay empty: a name it does not know is ComfyUI's `value_not_in_list`) and, when one is given, on
a real ComfyUI with the tiny SD1.5 checkpoint (tests/fixtures/tiny_model.py), where bob's run by
name succeeded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.comfy import ComfyTarget, ServiceProcess
from tests.fixtures.keys import make_key
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.tiny_model import NAME, build_tiny_checkpoint, txt2img

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Callers:
    svc: ServiceProcess
    admin: str
    alice: str
    bob: str
    real: bool

    def predict(self, key: str, checkpoint: object) -> requests.Response:
        headers = {"X-API-Key": key}
        return requests.post(
            self.svc.url + "/predict",
            json={"workflow": txt2img(checkpoint, seed=7, steps=1, prefix="od")},
            headers=headers,
            timeout=300,
        )

    def models(self, key: str) -> dict[str, Any]:
        answer = requests.get(self.svc.url + "/models", headers={"X-API-Key": key}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def callers(
    comfy_target: ComfyTarget, model_server: ModelServer, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callers]:
    if comfy_target.is_real:
        tiny = build_tiny_checkpoint(comfy_target.path, comfy_target.python)
        model_server.files[NAME] = tiny.path
    else:
        model_server.files[NAME] = b"weights" * 1000
    file = tmp_path / "keys.jsonl"
    admin = make_key(file, "--role", "admin")
    alice = make_key(file, "--role", "caller", "--workflows", "--name", "alice")
    bob = make_key(file, "--role", "caller", "--workflows", "--name", "bob")
    (tmp_path / "models").mkdir()
    env = {
        "API_KEYS_FILE": str(file),
        "URL_ALLOWLIST": "127.0.0.1",
        "MODELS_DIR": str(tmp_path / "models"),  # nothing to load but the cache
        "MODEL_CACHE_BYTES": str(2 * 1024**3),
    }
    svc = ServiceProcess(comfy_target, tmp_path / "state", env=env).start().wait_ready(300)
    yield Callers(svc, admin, alice, bob, comfy_target.is_real)
    svc.stop()


def test_a_model_one_caller_fetched_is_not_anothers_by_its_cached_name(
    callers: Callers, model_server: ModelServer
) -> None:
    url = model_server.url("plain", NAME)  # stands for a URL only alice can fetch
    first = callers.predict(callers.alice, url)
    assert first.status_code == (200 if callers.real else 400), first.text[:2000]
    (cached,) = callers.models(callers.admin)["cache"]["files"]
    name = cached["file"]
    assert "files" not in callers.models(callers.bob).get("cache", {})  # what others fetched: admins only

    by_name = callers.predict(callers.bob, name)
    assert by_name.status_code == 400, by_name.text[:2000]  # on ComfyUI 0.33.0 this was a 200
    error = by_name.json()["error"]
    assert error["code"] == "bad_request" and "by its URL" in error["message"], error
    assert url not in by_name.text and "127.0.0.1" not in by_name.text
    for spelling in (f"./{name}", name.replace("/", "\\")):
        other = callers.predict(callers.bob, spelling)
        assert other.status_code == 400, other.text[:2000]

    by_url = callers.predict(callers.bob, url)  # naming the URL works, from the cache
    assert by_url.status_code == (200 if callers.real else 400), by_url.text[:2000]
    if not callers.real:
        assert by_url.json()["error"]["code"] == "workflow_invalid" and name in by_url.text
    assert model_server.requests[f"/plain/{NAME}"] == 1
