"""Raw workflows from callers who are not admins run only where ComfyUI keeps each prompt in its
own folders (issue 20's last gap). On a ComfyUI attached without comfyrun's isolation extension,
nodes a graph creates while it runs (node expansion) are out of the node policy's sight and see
ComfyUI's shared folders, so a caller whose key allows raw workflows could read, list or write
what belongs to others there. Such a caller is refused with a 403 that says why and how to fix
it, on every path (sync, streamed, async), before anything reaches ComfyUI; admins and named
workflows run as before; with the extension, the same key runs its raw workflows. Stand-in and,
when one is given, real ComfyUI."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.fixtures.attached import attached_comfyui
from tests.fixtures.comfy import ComfyTarget, ServiceProcess
from tests.fixtures.expander import expand, expander_args
from tests.fixtures.keys import make_key

ROOT = Path(__file__).resolve().parents[2]
NAMED = {"workflow_id": "solid-blur", "params": {"width": 32, "height": 32, "blur_radius": 2}}
SHARED_COLOUR = (1, 2, 3)
RAW = json.loads((ROOT / "test_resources/comfy/workflows/empty_save.json").read_text())


@dataclass(frozen=True)
class Attached:
    service: ServiceProcess
    comfyui_url: str
    base: Path  # the attached ComfyUI's folders (input, output, temp)
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
    with attached_comfyui(comfy_target, root, extension=extension, env=env) as (service, base):
        yield Attached(service, service.env["COMFYUI_URL"], base, admin, raw)


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


@pytest.fixture(scope="module")
def unisolated_expanding(comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attached]:
    if not comfy_target.is_real:
        pytest.skip("the stand-in does not expand nodes")
    root = tmp_path_factory.mktemp("unisolated-expanding")
    target = dataclasses.replace(comfy_target, args=f"{comfy_target.args} {expander_args(root)}")
    yield from attach(target, root, extension=False)


def test_node_expansion_reads_shared_files_there_so_only_admins_may(unisolated_expanding: Attached) -> None:
    """The way around the node policy itself, on the real ComfyUI without the extension: a
    `LoadImage` that a node creates while the graph runs is judged by no policy and opens
    ComfyUI's shared output folder. An admin (trusted with every caller's files) still can;
    a caller whose key allows raw workflows got the file before this and is refused now."""
    attached = unisolated_expanding
    (attached.base / "output" / "someone-elses.png").write_bytes(png_bytes(SHARED_COLOUR))
    read = expand([{"id": "a", "class_type": "LoadImage", "inputs": {"image": "someone-elses.png [output]"}}], "a")
    admin = attached.post(attached.admin, {"workflow": read})
    assert admin.status_code == 200, admin.text[:400]
    assert colour_of(admin) == SHARED_COLOUR  # the escape is real: no policy saw the LoadImage
    assert_refused_for_isolation(attached.post(attached.raw, {"workflow": read}))


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def colour_of(response: requests.Response) -> tuple[int, int, int]:
    (image,) = response.json()["images"]
    with Image.open(io.BytesIO(base64.b64decode(image["image"]))) as loaded:
        return loaded.convert("RGB").getpixel((0, 0))
