"""What a run leaves on a ComfyUI attached by URL without the isolation extension (issue 20: "uploads
and outputs deleted from a remote ComfyUI"). ComfyUI's API deletes nothing, so the service
empties every file of the run it knows of once the answer is out (`POST /upload/image` with
`overwrite`, in the file's own folder): its uploaded inputs, its outputs and its previews keep
their names and lose their bytes, and nothing outside the run's folder is touched. With the
extension the run's folders go whole (tests/comfyui/test_isolation.py). Stand-in and, when one
is given, real ComfyUI."""

from __future__ import annotations

import base64
import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures.attached import attached_comfyui
from tests.fixtures.comfy import ComfyTarget, ServiceProcess

FOLDER = re.compile(r"r[0-9a-f]{32}")


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def attached(
    comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, Path]]:
    with attached_comfyui(comfy_target, tmp_path_factory.mktemp("attached-cleanup"), extension=False) as found:
        yield found


def run_files(base: Path) -> dict[Path, int]:
    """Every file inside a request folder of the attached ComfyUI, and its size."""
    found = {}
    for kind in ("input", "output", "temp"):
        for root, _, names in os.walk(base / kind):
            relative = Path(root).relative_to(base / kind)
            if relative.parts and FOLDER.fullmatch(relative.parts[0]):
                found.update({Path(root, name): Path(root, name).stat().st_size for name in names})
    return found


def test_a_runs_inputs_outputs_and_previews_are_emptied_on_the_attached_comfyui(
    attached: tuple[ServiceProcess, Path],
) -> None:
    service, base = attached
    bystander = base / "output" / "operators-own.png"  # a file of the ComfyUI's own operator
    bystander.write_bytes(png_bytes((7, 7, 7)))
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "kept/out"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    images = [{"name": "photo.png", "image": base64.b64encode(png_bytes((200, 10, 10))).decode()}]
    response = service.post("/predict", json={"workflow": workflow, "images": images}, timeout=120)
    assert response.status_code == 200, response.text[:400]
    answered = {image["type"] for image in response.json()["images"]}
    assert answered == {"output", "temp"}, response.text[:400]  # the answer had the files' bytes first
    deadline = time.monotonic() + 15
    while any(run_files(base).values()) and time.monotonic() < deadline:
        time.sleep(0.1)  # emptied once the answer is on its way
    left = run_files(base)
    kinds = {path.relative_to(base).parts[0] for path in left}
    # The run's files were there, under its folder (without the extension, previews are saved in
    # the run's output folder and answered as temp files).
    assert kinds == {"input", "output"} and len(left) == 3, left
    assert not any(left.values()), {str(path.relative_to(base)): size for path, size in left.items() if size}
    assert bystander.read_bytes() == png_bytes((7, 7, 7))
