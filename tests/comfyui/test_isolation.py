"""Attacks on request isolation that pass values through links or name folders, replayed over
HTTP against the service with the stand-in and, when one is given, a real ComfyUI.

ComfyUI checks a COMBO value against its options only when the value is a literal; a linked value
is used as computed (docs/security.md). Each test builds the value inside the graph, as an
attacker would, and expects the node policy's 400 before anything runs, or, for what runs, no
file of another request in the answer and no file left behind. A "victim" file is put where
another request's input or output would be, in the folders the service gave its ComfyUI.
"""

from __future__ import annotations

import base64
import io
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.fixtures.attached import attached_comfyui
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess, start_service

FOLDER_NAME = re.compile(r"r[0-9a-f]{32}")


def png_bytes(color: tuple[int, int, int] = (200, 10, 10), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def comfy_dir(service: ServiceProcess, kind: str) -> Path:
    base = service.state_dir / "comfyui"
    return base / "temp" / "temp" if kind == "temp" else base / kind


def plant_victim(service: ServiceProcess, kind: str, name: str) -> Path:
    """A file where another caller's would be: under a request folder (input) or at the root."""
    path = comfy_dir(service, kind) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes((1, 2, 3)))
    return path


def concat(a: str, b: str) -> dict:
    return {"class_type": "StringConcatenate", "inputs": {"string_a": a, "string_b": b, "delimiter": ""}}


def switch(source: str) -> dict:
    """A value passed on unchanged, typed as whatever its input needs (`*`): how a string reaches
    a COMBO input past ComfyUI's type check of links."""
    return {
        "class_type": "ComfySwitchNode",
        "inputs": {"switch": True, "on_true": [source, 0], "on_false": [source, 0]},
    }


def empty_image() -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}


def predict(service: ServiceProcess, workflow: dict, **body) -> requests.Response:
    response = service.post("/predict", json={"workflow": workflow, **body}, timeout=120)
    assert response.status_code != 500, response.text
    assert not FOLDER_NAME.search(response.text), "an answer names a request folder"
    return response


def refused_by_policy(response: requests.Response, *words: str) -> None:
    assert response.status_code == 400, response.text[:400]
    message = response.json()["error"]["message"]
    for word in words:
        assert word in message, message


def test_a_folder_made_by_a_link_lists_no_other_callers_inputs(service: ServiceProcess) -> None:
    victim = plant_victim(service, "input", f"r{secrets.token_hex(16)}/victim.png")
    workflow = {
        "1": concat(".", ""),
        "4": switch("1"),
        "2": {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": ["4", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "loot"}},
    }
    refused_by_policy(predict(service, workflow), "LoadImageTextDataSetFromFolder")
    assert victim.exists()


@pytest.mark.parametrize("kind", ["output", "temp"])
def test_a_shared_folder_reference_made_by_a_link_is_refused(service: ServiceProcess, kind: str) -> None:
    name = f"victim-{secrets.token_hex(4)}.png"
    plant_victim(service, kind, name)
    workflow = {
        "1": concat(name + " [", kind + "]"),
        "4": switch("1"),
        "2": {"class_type": "LoadImage", "inputs": {"image": ["4", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "loot"}},
    }
    refused_by_policy(predict(service, workflow), "'image'", "link")


@pytest.mark.parametrize("kind", ["output", "temp"])
def test_a_painter_mask_made_by_a_link_is_refused(service: ServiceProcess, kind: str) -> None:
    """Painter checks no file list at all: on ComfyUI 0.33.0 this read the shared folder."""
    name = f"victim-{secrets.token_hex(4)}.png"
    plant_victim(service, kind, name)
    workflow = {
        "1": concat(name + " [", kind + "]"),
        "2": {"class_type": "Painter", "inputs": {"mask": ["1", 0], "width": 64, "height": 64, "bg_color": "#000000"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "loot"}},
    }
    refused_by_policy(predict(service, workflow), "'mask'", "link")


def test_a_filename_prefix_made_by_a_link_is_refused(service: ServiceProcess) -> None:
    folder = f"shared_by_link_{secrets.token_hex(4)}"
    workflow = {
        "1": empty_image(),
        "2": concat(folder + "/", "out"),
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": ["2", 0]}},
    }
    refused_by_policy(predict(service, workflow), "'filename_prefix'", "link")
    assert not (comfy_dir(service, "output") / folder).exists()


def test_nodes_that_write_a_folder_are_off_by_default(service: ServiceProcess) -> None:
    folder = f"dataset_{secrets.token_hex(4)}"
    workflow = {
        "1": empty_image(),
        "2": {
            "class_type": "SaveImageDataSetToFolder",
            "inputs": {"images": ["1", 0], "folder_name": folder, "filename_prefix": "image", "mode": "overwrite"},
        },
    }
    refused_by_policy(predict(service, workflow), "SaveImageDataSetToFolder", "ALLOW_FOLDER_NODES")
    assert not (comfy_dir(service, "output") / folder).exists()


def test_nodes_that_read_the_shared_output_folder_are_off_by_default(service: ServiceProcess) -> None:
    name = f"victim-{secrets.token_hex(4)}.png"
    plant_victim(service, "output", name)
    workflow = {
        "1": {"class_type": "LoadImageOutput", "inputs": {"image": name + " [output]"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loot"}},
    }
    response = predict(service, workflow)
    assert response.status_code == 400, response.text[:400]


@pytest.mark.parametrize("node", ["MaskPreview", "Painter"])
def test_previews_are_kept_in_the_requests_own_temp_folder(service: ServiceProcess, node: str) -> None:
    """Previews land in the prompt's temp folder, where the service reads them from: a file in
    ComfyUI's shared temp folder would be a 500 here (it reads `<temp>/<request folder>/...`)."""
    if not service.target.is_real:
        pytest.skip(f"the stand-in does not implement {node}")
    preview = {"class_type": "MaskPreview", "inputs": {"mask": ["1", 0]}}
    if node == "Painter":
        preview = {"class_type": "Painter", "inputs": {"mask": "", "width": 64, "height": 64, "bg_color": "#102030"}}
    workflow = {"1": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 8, "height": 8}}, "2": preview}
    if node == "Painter":
        workflow["3"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "painted"}}
    response = predict(service, workflow)
    assert response.status_code == 200, response.text[:400]
    temps = [image for image in response.json()["images"] if image["type"] == "temp"]
    assert temps and all(image["subfolder"] == "" for image in temps), response.json()["images"]
    assert not list(comfy_dir(service, "temp").glob("ComfyUI_temp_*"))  # no preview at the shared root


def png_texts(data: bytes) -> dict[str, str]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return {key: str(value) for key, value in image.info.items() if isinstance(value, str)}


@pytest.mark.parametrize("prefix", ["meta/out", "plain"])
def test_png_metadata_names_no_request_folder(service: ServiceProcess, prefix: str) -> None:
    workflow = {
        "1": empty_image(),
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }
    response = predict(service, workflow)
    assert response.status_code == 200, response.text[:400]
    (image,) = response.json()["images"]
    texts = png_texts(base64.b64decode(image["image"]))
    assert "prompt" in texts  # ComfyUI's metadata is kept, only our folder name is not in it
    assert not FOLDER_NAME.search(" ".join(texts.values())), texts["prompt"][:300]
    assert prefix in texts["prompt"]


@pytest.mark.parametrize("prefix", ["", ".", "/", "a/.."])
def test_a_prefix_that_names_no_file_does_not_show_the_request_folder(service: ServiceProcess, prefix: str) -> None:
    workflow = {
        "1": empty_image(),
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }
    response = predict(service, workflow)  # checks that no answer names a request folder
    assert response.status_code in (200, 400), response.text[:400]
    if response.status_code == 200:
        for image in response.json()["images"]:
            assert not FOLDER_NAME.search(image["filename"] + image["subfolder"])


def test_request_folders_left_by_a_hard_kill_are_removed_at_boot(tmp_path: Path) -> None:
    """What a `kill -9` leaves (a request's folders in input, output and temp) is gone once the
    service is ready again; the operator's own files stay."""
    state = tmp_path / "service"
    leftovers = [
        state / "comfyui" / "input" / f"r{secrets.token_hex(16)}" / "in.png",
        state / "comfyui" / "output" / f"r{secrets.token_hex(16)}" / "sub" / "out_00001_.png",
        state / "comfyui" / "temp" / "temp" / f"r{secrets.token_hex(16)}" / "p.png",
    ]
    kept = state / "comfyui" / "input" / "example.png"
    for path in [*leftovers, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes())
    service = ServiceProcess(ComfyTarget("standin", STANDIN, sys.executable, ""), state).start()
    try:
        service.wait_ready()
        for path in leftovers:
            folder = next(p for p in path.parents if FOLDER_NAME.fullmatch(p.name))
            assert not folder.exists(), folder
        assert kept.exists()
    finally:
        service.stop()


def test_a_prompt_sees_only_its_own_inputs(service: ServiceProcess) -> None:
    """A name the request did not send is not found, even when ComfyUI's input folder has it."""
    name = f"shared-{secrets.token_hex(4)}.png"
    plant_victim(service, "input", name)
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loot"}},
    }
    response = predict(service, workflow)
    assert response.status_code == 400, response.text[:400]
    sent = {"name": name, "image": base64.b64encode(png_bytes((9, 9, 9))).decode()}
    own = predict(service, workflow, images=[sent])  # the same name, sent with the request: its own file
    assert own.status_code == 200, own.text[:400]
    (image,) = own.json()["images"]
    with Image.open(io.BytesIO(base64.b64decode(image["image"]))) as loaded:
        assert loaded.convert("RGB").getpixel((0, 0)) == (9, 9, 9)


def test_each_request_writes_into_its_own_folder_when_the_graph_repeats(service: ServiceProcess) -> None:
    """ComfyUI keeps node instances between prompts (SaveImage keeps its output folder): the
    same graph sent twice must still write each time into that request's own folder."""
    for color in (0x010203, 0x0A0B0C):
        workflow = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "same"}},
        }
        response = predict(service, workflow)
        assert response.status_code == 200, response.text[:400]
        (image,) = response.json()["images"]
        with Image.open(io.BytesIO(base64.b64decode(image["image"]))) as loaded:
            assert loaded.convert("RGB").getpixel((0, 0)) == tuple(color.to_bytes(3, "big"))


def test_a_folder_node_the_operator_allows_sees_only_the_requests_folder(
    comfy_target: ComfyTarget, tmp_path: Path
) -> None:
    if not comfy_target.is_real:
        pytest.skip("the stand-in does not implement LoadImageDataSetFromFolder")
    allowed = "LoadImageDataSetFromFolder,SaveImageDataSetToFolder"
    service = start_service(comfy_target, tmp_path / "service", ALLOW_FOLDER_NODES=allowed)
    try:
        plant_victim(service, "input", "sub/victim.png")  # the same subfolder name, at the root
        plant_victim(service, "input", f"r{secrets.token_hex(16)}/sub/victim.png")  # another request's
        workflow = {
            "1": {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": "sub"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "own"}},
        }
        # Twice, as two callers would: the node has no file hash in its cache key, so the second
        # caller must not get the first one's images from ComfyUI's cache.
        for color in ((9, 9, 9), (7, 7, 7)):
            sent = [{"name": "sub/a.png", "image": base64.b64encode(png_bytes(color)).decode()}]
            response = predict(service, workflow, images=sent)
            assert response.status_code == 200, response.text[:400]
            images = response.json()["images"]
            assert len(images) == 1
            with Image.open(io.BytesIO(base64.b64decode(images[0]["image"]))) as loaded:
                assert loaded.convert("RGB").getpixel((0, 0)) == color
        # A folder writer's files are in no answer (`"images": []`), and still go with the run.
        writer = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {
                "class_type": "SaveImageDataSetToFolder",
                "inputs": {
                    "images": ["1", 0],
                    "folder_name": "dataset",
                    "filename_prefix": "image",
                    "mode": "overwrite",
                },
            },
        }
        assert predict(service, writer).status_code == 200
        deadline = time.monotonic() + 10
        while files_under(comfy_dir(service, "output")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert files_under(comfy_dir(service, "output")) == []  # every run's files went with it
    finally:
        service.stop()


def files_under(folder: Path) -> list[str]:
    # os.walk, not rglob: the service removes a run's folders while this looks, and a folder
    # that vanishes mid-walk is skipped instead of raising.
    return sorted(str((Path(root) / name).relative_to(folder)) for root, _, names in os.walk(folder) for name in names)


@pytest.fixture
def remote(comfy_target: ComfyTarget, tmp_path: Path) -> Iterator[tuple[ServiceProcess, Path]]:
    """A ComfyUI with the isolation extension installed by its operator, on "another machine":
    the service gets only its URL (uploads through /upload/image, outputs through /view)."""
    with attached_comfyui(comfy_target, tmp_path, extension=True) as attached:
        yield attached


def test_a_remote_comfyui_keeps_no_files_of_a_request(remote: tuple[ServiceProcess, Path]) -> None:
    service, base = remote
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kept/out"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    sent = [{"name": "in.png", "image": base64.b64encode(png_bytes((9, 9, 9))).decode()}]
    response = predict(service, workflow, images=sent)
    assert response.status_code == 200, response.text[:400]
    assert len(response.json()["images"]) == 2
    assert sorted(image["subfolder"] for image in response.json()["images"]) == ["", "kept"]
    deadline = time.monotonic() + 10  # removed right after the answer has been sent
    while any(files_under(base / name) for name in ("input", "output", "temp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name in ("input", "output", "temp"):
        assert files_under(base / name) == [], name
