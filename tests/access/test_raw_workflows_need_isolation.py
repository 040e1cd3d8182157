"""Raw workflows from callers who are not admins run only where ComfyUI keeps each prompt in its
own folders (issue 20's last gap). On a ComfyUI attached without comfyrun's isolation extension,
nodes a graph creates while it runs (node expansion) are out of the node policy's sight and see
ComfyUI's shared folders, so a caller whose key allows raw workflows could read, list or write
what belongs to others there. Such a caller is refused with a 403 that says why and how to fix
it, on every path (sync, streamed, async), before anything reaches ComfyUI; admins and named
workflows run as before; with the extension, the same key runs its raw workflows. Stand-in and,
when one is given, real ComfyUI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.attached import attached_comfyui
from tests.fixtures.comfy import ComfyTarget, ServiceProcess
from tests.fixtures.keys import make_key

ROOT = Path(__file__).resolve().parents[2]
NAMED = {"workflow_id": "solid-blur", "params": {"width": 32, "height": 32, "blur_radius": 2}}
RAW = json.loads((ROOT / "test_resources/comfy/workflows/empty_save.json").read_text())


@dataclass(frozen=True)
class Attached:
    service: ServiceProcess
    comfyui_url: str
    admin: str
    raw: str  # a caller key that may send raw workflows

    def post(self, key: str, body: dict[str, Any], **headers: str) -> requests.Response:
        return requests.post(
            self.service.url + "/predict", json=body, headers={"X-API-Key": key, **headers}, timeout=120
        )

    def isolated(self) -> bool:
        """What the service tells its operator (GET /system, admin only)."""
        system = requests.get(self.service.url + "/system", headers={"X-API-Key": self.admin}, timeout=30)
        assert system.status_code == 200, system.text[:400]
        return bool(system.json()["comfyui"]["isolated"])

    def prompts_seen(self) -> int:
        """How many prompts the attached ComfyUI has run (its own history)."""
        return len(requests.get(self.comfyui_url + "/history", timeout=10).json())


def attach(comfy_target: ComfyTarget, root: Path, *, extension: bool) -> Iterator[Attached]:
    keys = root / "keys.jsonl"
    admin = make_key(keys, "--role", "admin")
    raw = make_key(keys, "--role", "caller", "--workflows")
    env = {"API_KEYS_FILE": str(keys), "WORKFLOWS_DIR": str(ROOT / "test_resources" / "templates")}
    with attached_comfyui(comfy_target, root, extension=extension, env=env) as (service, _):
        yield Attached(service, service.env["COMFYUI_URL"], admin, raw)


@pytest.fixture(scope="module")
def unisolated(comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attached]:
    yield from attach(comfy_target, tmp_path_factory.mktemp("unisolated"), extension=False)


@pytest.fixture(scope="module")
def isolated(comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attached]:
    yield from attach(comfy_target, tmp_path_factory.mktemp("isolated"), extension=True)


def assert_refused_for_isolation(response: requests.Response) -> None:
    assert response.status_code == 403, response.text[:400]
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    # What the caller and the operator need to know, and no path of this machine.
    assert "isolation extension" in error["message"] and "admin" in error["message"], error
    assert "/" not in error["message"].replace("docs/security.md", ""), error


def test_a_callers_raw_workflow_is_refused_where_comfyui_does_not_isolate(unisolated: Attached) -> None:
    assert not unisolated.isolated()
    before = unisolated.prompts_seen()
    assert_refused_for_isolation(unisolated.post(unisolated.raw, {"workflow": RAW}))
    assert_refused_for_isolation(unisolated.post(unisolated.raw, {"input": {"workflow": RAW}}))
    streamed = unisolated.post(unisolated.raw, {"workflow": RAW}, Accept="text/event-stream")
    assert_refused_for_isolation(streamed)  # an HTTP error before the stream starts, not an event
    assert_refused_for_isolation(unisolated.post(unisolated.raw, {"workflow": RAW, "async": True}))
    time.sleep(0.5)
    assert unisolated.prompts_seen() == before  # nothing of them reached ComfyUI


def test_admins_and_named_workflows_still_run_there(unisolated: Attached) -> None:
    admin = unisolated.post(unisolated.admin, {"workflow": RAW})
    assert admin.status_code == 200 and admin.json()["images"], admin.text[:400]
    named = unisolated.post(unisolated.raw, NAMED)
    assert named.status_code == 200 and named.json()["images"], named.text[:400]


def test_the_same_key_sends_raw_workflows_where_the_extension_runs(isolated: Attached) -> None:
    assert isolated.isolated()
    answer = isolated.post(isolated.raw, {"workflow": RAW})
    assert answer.status_code == 200 and answer.json()["images"], answer.text[:400]
