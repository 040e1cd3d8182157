"""API keys with roles (issue 20), on a real service over real sockets: keys made with the CLI
(`python -m handler.access.cli`, which prints the secret once and stores its hash), sent as
`Authorization: Bearer` or `X-API-Key`; `admin` sees everything, `caller` runs named workflows
(raw ones only when its key allows) and sees its own jobs; per-key rate and cap answer 429 with
`Retry-After`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess
from tests.fixtures.keys import make_key

ROOT = Path(__file__).resolve().parents[2]
STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")
FINAL = {"succeeded", "failed", "cancelled"}
NAMED = {"workflow_id": "solid-blur", "params": {"width": 32, "height": 32, "blur_radius": 2}}


@dataclass
class Keys:
    svc: ServiceProcess
    file: Path
    admin: str
    templates_only: str
    raw: str
    other: str
    slow: str  # two /predict a minute
    capped: str  # one run at once

    def call(self, method: str, path: str, key: str | None, body: Any = None, header: str = "bearer"):
        headers = {}
        if key is not None:
            headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}
        return requests.request(method, self.svc.url + path, json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    root = tmp_path_factory.mktemp("keys")
    file = root / "keys.jsonl"
    made = Keys(
        svc=None,  # type: ignore[arg-type]
        file=file,
        admin=make_key(file, "--role", "admin", "--name", "ops"),
        templates_only=make_key(file, "--role", "caller"),
        raw=make_key(file, "--role", "caller", "--workflows"),
        other=make_key(file, "--role", "caller", "--workflows"),
        slow=make_key(file, "--role", "caller", "--rate-per-minute", "2"),
        capped=make_key(file, "--role", "caller", "--workflows", "--max-jobs", "1"),
    )
    env = {"API_KEYS_FILE": str(file), "WORKFLOWS_DIR": str(ROOT / "test_resources" / "templates")}
    made.svc = ServiceProcess(STANDIN_TARGET, root / "svc", env=env).start().wait_ready()
    yield made
    made.svc.stop()


def quick(color: int) -> dict[str, Any]:
    wf = json.loads((ROOT / "test_resources/comfy/workflows/empty_save.json").read_text())
    wf["1"]["inputs"].update(width=32, height=32, color=color)
    return wf


def wait_final(keys: Keys, key: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = keys.call("GET", f"/status/{job_id}", key).json()
        if view.get("state") in FINAL:
            return dict(view)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_the_key_file_holds_hashes_never_the_secrets(keys):
    text = keys.file.read_text()
    for secret in (keys.admin, keys.templates_only, keys.raw):
        assert secret not in text and secret[len("crk_") + 9 :] not in text  # nor its random part
    assert {json.loads(line)["role"] for line in text.splitlines()} == {"admin", "caller"}


def test_without_a_valid_key_only_the_probes_answer(keys):
    for path in ("/predict", "/status/0123456789abcdef0123456789abcdef", "/dashboard/data", "/workflows"):
        method = "POST" if path == "/predict" else "GET"
        for key in (None, "crk_00000000_" + "A" * 43, keys.admin[:-2] + "xx", "not-a-key"):
            answer = keys.call(method, path, key, body={"workflow": quick(1)})
            assert answer.status_code == 401, (path, key, answer.text)
            assert answer.json()["error"]["code"] == "unauthorized"
    assert keys.call("GET", "/healthz", None).status_code == 200


def test_a_caller_key_runs_named_workflows_and_raw_ones_only_when_allowed(keys):
    refused = keys.call("POST", "/predict", keys.templates_only, {"workflow": quick(2)})
    assert refused.status_code == 403 and "workflow_id" in refused.json()["error"]["message"]
    assert keys.call("POST", "/predict", keys.templates_only, {"input": {"workflow": quick(2)}}).status_code == 403
    named = keys.call("POST", "/predict", keys.templates_only, NAMED, header="x-api-key")
    assert named.status_code == 200, named.text
    assert keys.call("POST", "/predict", keys.raw, {"workflow": quick(3)}).status_code == 200


def test_the_dashboard_and_system_are_for_admin_keys(keys):
    for path in ("/dashboard", "/dashboard/data", "/system"):
        assert keys.call("GET", path, keys.raw).status_code == 403
        assert keys.call("GET", path, keys.admin, header="x-api-key").status_code == 200


def test_the_model_cache_is_filled_and_emptied_by_admins_only(keys):
    fetch = {"url": "https://models.example/x.safetensors", "folder": "checkpoints"}
    assert keys.call("POST", "/models/fetch", keys.raw, fetch).status_code == 403
    assert keys.call("DELETE", "/models/cache/abc", keys.raw).status_code == 403
    # An admin gets past the role check, to what the cache makes of the request.
    assert keys.call("POST", "/models/fetch", keys.admin, fetch).status_code not in (401, 403)
    assert keys.call("DELETE", "/models/cache/abc", keys.admin).status_code == 404


def test_a_key_sees_and_cancels_its_own_jobs_only(keys):
    job_id = keys.call("POST", "/predict", keys.raw, {"workflow": quick(4), "async": True}).json()["job_id"]
    assert wait_final(keys, keys.raw, job_id)["state"] == "succeeded"
    assert keys.call("GET", f"/status/{job_id}", keys.other).status_code == 404
    assert keys.call("POST", f"/cancel/{job_id}", keys.other).status_code == 404
    assert keys.call("GET", f"/status/{job_id}", keys.admin).status_code == 200


def test_a_keys_rate_is_answered_429_with_retry_after(keys):
    answers = [keys.call("POST", "/predict", keys.slow, NAMED) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [200, 200], answers[0].text
    assert answers[2].status_code == 429 and answers[2].json()["error"]["code"] == "too_many_requests"
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 30


def test_a_keys_cap_of_runs_at_once_is_answered_429_until_its_job_ends(keys):
    gate = keys.svc.gate()
    held = keys.call("POST", "/predict", keys.capped, {"workflow": gate.workflow(), "async": True})
    assert held.status_code == 202, held.text
    gate.wait_entered()
    try:
        for body in ({"workflow": quick(5), "async": True}, {"workflow": quick(6)}):
            refused = keys.call("POST", "/predict", keys.capped, body)
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1, refused.text
        other = keys.call("POST", "/predict", keys.raw, {"workflow": quick(7), "async": True})
        assert other.status_code == 202  # another key's cap is its own
    finally:
        gate.release()
    wait_final(keys, keys.capped, held.json()["job_id"])
    assert keys.call("POST", "/predict", keys.capped, {"workflow": quick(8)}).status_code == 200


def test_a_streamed_run_holds_its_place_under_the_cap_while_it_streams(keys):
    gate = keys.svc.gate()
    headers = {"Authorization": f"Bearer {keys.capped}", "Accept": "text/event-stream"}
    with requests.post(
        keys.svc.url + "/predict", json={"workflow": gate.workflow()}, headers=headers, stream=True, timeout=60
    ) as streamed:
        assert streamed.status_code == 200
        gate.wait_entered()
        try:
            refused = keys.call("POST", "/predict", keys.capped, {"workflow": quick(9), "async": True})
            assert refused.status_code == 429, refused.text
        finally:
            gate.release()
        assert b"event: result" in streamed.content
    deadline = time.monotonic() + 10
    while (answer := keys.call("POST", "/predict", keys.capped, {"workflow": quick(10)})).status_code == 429:
        assert time.monotonic() < deadline, "the ended stream still holds its place"
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text


def test_a_key_added_to_the_file_works_without_a_restart(keys):
    fresh = make_key(keys.file, "--role", "caller")
    deadline = time.monotonic() + 5
    while keys.call("GET", "/workflows", fresh).status_code != 200:
        assert time.monotonic() < deadline, "the new key was not picked up"
        time.sleep(0.1)


def test_a_key_file_that_is_not_one_stops_the_boot_naming_the_line(tmp_path):
    from handler.access.keys import KeyRing
    from handler.config import ConfigError

    bad = tmp_path / "keys.jsonl"
    bad.write_text('# comment\n{"id": "a", "sha256": "short", "role": "caller"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        KeyRing(path=bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        KeyRing(path=tmp_path / "missing.jsonl")
