"""The second adversarial pass on request isolation (issue 20): node classes and tricks the first
pass did not list, replayed over HTTP against the service with the stand-in and, when one is
given, a real ComfyUI (skipped without one, saying why).

Found here: a file name nested inside a structured literal. `Load3D.image` is a dict
(`{"image", "mask", "normal", "recording", ...}`) whose names ComfyUI 0.33.0 opens through
`folder_paths.get_annotated_filepath`, so `"x.png [output]"` inside it read ComfyUI's shared output
folder wherever ComfyUI runs without the isolation extension: the service's literal check looked
only at top-level strings. docs/security.md ("Second pass") lists this attack and the ones that
failed.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.fixtures.comfy import ComfyTarget, ServiceProcess, free_port

SHARED_COLOUR = (1, 2, 3)


def png_bytes(color: tuple[int, int, int], size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def load3d(name: str) -> dict:
    """Load3D whose `image` widget value (a dict) names the picture to load, and a SaveImage."""
    widget = {"image": name, "mask": name, "normal": name, "recording": "", "camera_info": {}}
    return {
        "1": {"class_type": "Load3D", "inputs": {"model_file": "none", "width": 8, "height": 8, "image": widget}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loot"}},
    }


@pytest.mark.parametrize("kind", ["output", "temp", "OUTPUT"])
@pytest.mark.parametrize("nesting", ["dict", "list in dict"])
def test_a_shared_folder_reference_nested_in_a_literal_is_refused(
    service: ServiceProcess, kind: str, nesting: str
) -> None:
    name = f"victim-{secrets.token_hex(4)}.png [{kind}]"
    workflow = load3d(name)
    if nesting == "list in dict":
        workflow["1"]["inputs"]["image"]["model_3d_info"] = [{"file": name}]
        workflow["1"]["inputs"]["image"]["image"] = "own.png"
    response = service.post("/predict", json={"workflow": workflow}, timeout=120)
    assert response.status_code == 400, response.text[:400]
    assert "shared output or temp folder" in response.json()["error"]["message"]


@pytest.fixture
def without_extension(comfy_target: ComfyTarget, tmp_path: Path) -> Iterator[tuple[ServiceProcess, Path]]:
    """A real ComfyUI attached by URL whose operator did not install the isolation extension: the
    service falls back to rewriting names (docs/security.md, layer 1's fallback)."""
    if not comfy_target.is_real:
        pytest.skip("the stand-in does not implement Load3D")
    base = tmp_path / "comfy"
    for name in ("input", "output", "temp", "user"):
        (base / name).mkdir(parents=True)
    port = free_port()
    args = [comfy_target.python, "main.py", "--listen", "127.0.0.1", "--port", str(port)]
    args += ["--input-directory", str(base / "input"), "--output-directory", str(base / "output")]
    args += ["--temp-directory", str(base / "temp"), "--disable-auto-launch", *comfy_target.args.split()]
    args += ["--user-directory", str(base / "user"), "--database-url", "sqlite:///:memory:"]
    with open(tmp_path / "comfy.log", "wb") as log:
        comfy = subprocess.Popen(
            args,
            cwd=comfy_target.path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 120
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}/system_stats", timeout=1)
            break
        except requests.RequestException:
            assert comfy.poll() is None and time.monotonic() < deadline, (tmp_path / "comfy.log").read_text()[-3000:]
            time.sleep(0.1)
    env = {"COMFYUI_URL": f"http://127.0.0.1:{port}", "COMFYUI_PATH": ""}
    service = ServiceProcess(comfy_target, tmp_path / "service", env=env).start().wait_ready()
    yield service, base
    service.stop()
    comfy.terminate()
    comfy.wait(10)


def test_load3d_reads_no_shared_output_without_the_extension(without_extension: tuple[ServiceProcess, Path]) -> None:
    """On ComfyUI 0.33.0 without the extension, this answered the shared output file's pixels."""
    service, base = without_extension
    assert "isolation extension" in service.log()  # the fallback this test is about
    name = f"victim-{secrets.token_hex(4)}.png"
    (base / "output" / name).write_bytes(png_bytes(SHARED_COLOUR))
    response = service.post("/predict", json={"workflow": load3d(name + " [output]")}, timeout=120)
    if response.status_code == 200:
        for image in response.json()["images"]:
            with Image.open(io.BytesIO(base64.b64decode(image["image"]))) as loaded:
                assert loaded.convert("RGB").getpixel((0, 0)) != SHARED_COLOUR, "read the shared output folder"
    assert response.status_code == 400, response.text[:400]
