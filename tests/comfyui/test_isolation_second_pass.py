"""The second adversarial pass on request isolation (issue 20): node classes and tricks the first
pass did not list, replayed over HTTP against the service with the stand-in and, when one is
given, a real ComfyUI (skipped without one, saying why).

Found here: a file name nested inside a structured literal, and the request folder's name in the
metadata of outputs other than PNG. `Load3D.image` is a dict
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
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.fixtures.attached import attached_comfyui
from tests.fixtures.comfy import ComfyTarget, ServiceProcess, start_service
from tests.fixtures.expander import expand, expander_args

SHARED_COLOUR = (1, 2, 3)
FOLDER_NAME = re.compile(r"r[0-9a-f]{32}")


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


@pytest.fixture(scope="module")
def without_extension(
    comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, Path]]:
    """A ComfyUI attached by URL whose operator did not install the isolation extension: the
    service falls back to rewriting names (docs/security.md, layer 1's fallback)."""
    with attached_comfyui(comfy_target, tmp_path_factory.mktemp("without-extension"), extension=False) as attached:
        yield attached


def test_load3d_reads_no_shared_output_without_the_extension(without_extension: tuple[ServiceProcess, Path]) -> None:
    """On ComfyUI 0.33.0 without the extension, this answered the shared output file's pixels."""
    service, base = without_extension
    if not service.target.is_real:
        pytest.skip("the stand-in does not implement Load3D")
    assert "isolation extension" in service.log()  # the fallback this test is about
    name = f"victim-{secrets.token_hex(4)}.png"
    (base / "output" / name).write_bytes(png_bytes(SHARED_COLOUR))
    response = service.post("/predict", json={"workflow": load3d(name + " [output]")}, timeout=120)
    if response.status_code == 200:
        for image in response.json()["images"]:
            with Image.open(io.BytesIO(base64.b64decode(image["image"]))) as loaded:
                assert loaded.convert("RGB").getpixel((0, 0)) != SHARED_COLOUR, "read the shared output folder"
    assert response.status_code == 400, response.text[:400]


# --- node expansion: nodes a graph creates while it runs ------------------------------------------


@pytest.fixture(scope="module")
def expanding(comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    if not comfy_target.is_real:
        pytest.skip("the stand-in does not expand nodes")
    root = tmp_path_factory.mktemp("expander")
    args = f"{comfy_target.args} {expander_args(root)}"
    service = ServiceProcess(comfy_target, root / "service", env={"COMFYUI_ARGS": args}).start().wait_ready()
    yield service
    service.stop()


def colours(response: requests.Response) -> set[tuple[int, int, int]]:
    found = set()
    for image in response.json().get("images", []) if response.status_code == 200 else []:
        with Image.open(io.BytesIO(base64.b64decode(image["image"]))) as loaded:
            found.add(loaded.convert("RGB").getpixel((0, 0)))
    return found


def test_expanded_nodes_see_only_the_requests_folders(expanding: ServiceProcess) -> None:
    """The expanded nodes are out of the node policy's sight (a folder node, names the service
    never checked); the isolation extension still confines them to the request's folders."""
    service = expanding
    state = service.state_dir / "comfyui"
    other = f"r{secrets.token_hex(16)}"
    for path in (
        state / "input" / other / "victim.png",
        state / "input" / "rootvictim.png",
        state / "output" / "rootvictim.png",
        state / "output" / other / "victim.png",
        state / "temp" / "temp" / "rootvictim.png",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(SHARED_COLOUR))
    reads = [
        ("LoadImage", {"image": f"../{other}/victim.png"}),
        ("LoadImage", {"image": "rootvictim.png"}),
        ("LoadImage", {"image": "rootvictim.png [output]"}),
        ("LoadImage", {"image": f"../{other}/victim.png [output]"}),
        ("LoadImage", {"image": "rootvictim.png [temp]"}),
        ("LoadImageOutput", {"image": "rootvictim.png [output]"}),
        ("LoadImageDataSetFromFolder", {"folder": "."}),
        ("LoadImageDataSetFromFolder", {"folder": ".."}),
    ]
    own = [{"name": "own.png", "image": base64.b64encode(png_bytes((9, 9, 9))).decode()}]
    for class_type, inputs in reads:
        workflow = expand([{"id": "a", "class_type": class_type, "inputs": inputs}], "a")
        response = service.post("/predict", json={"workflow": workflow, "images": own}, timeout=120)
        assert response.status_code != 500 or response.json()["error"]["code"] == "execution_error", response.text
        assert SHARED_COLOUR not in colours(response), f"{class_type} {inputs} read another's file"
        assert not FOLDER_NAME.search(response.text.replace(other, "")), response.text[:400]
    # A folder lister sees the request's own inputs: it works, on the request's files only.
    folder = expand([{"id": "a", "class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": "."}}], "a")
    listed = service.post("/predict", json={"workflow": folder, "images": own}, timeout=120)
    assert listed.status_code == 200 and colours(listed) == {(9, 9, 9)}, listed.text[:400]
    # Writers: a prefix out of the request's folder is refused by ComfyUI, a folder writer writes
    # inside the request's folder, which goes with the run.
    planted = sorted([f"{other}/victim.png", "rootvictim.png"])  # what the output folder holds but runs
    for writer, inputs in [
        ("SaveImage", {"filename_prefix": f"../{other}/planted"}),
        ("SaveImage", {"filename_prefix": str(state / "output" / "planted")}),
        ("SaveImageDataSetToFolder", {"folder_name": f"../{other}", "filename_prefix": "planted"}),
        ("SaveImageDataSetToFolder", {"folder_name": "..", "filename_prefix": "planted"}),
    ]:
        nodes = [
            {"id": "a", "class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            {"id": "b", "class_type": writer, "inputs": {"images": ["a", 0], **inputs}},
        ]
        response = service.post("/predict", json={"workflow": expand(nodes, "a")}, timeout=120)
        assert response.status_code in (200, 500), response.text[:400]
    deadline = time.monotonic() + 10
    while files_under(state / "output") != planted and time.monotonic() < deadline:
        time.sleep(0.05)  # each run's own folder goes with it, right after its answer
    assert files_under(state / "output") == planted  # nothing written at the root or in another's folder


def files_under(folder: Path) -> list[str]:
    return sorted(str((Path(root) / name).relative_to(folder)) for root, _, names in os.walk(folder) for name in names)


# --- metadata of outputs other than PNG -----------------------------------------------------------


def saver(class_type: str) -> dict:
    nodes = {
        "SaveAnimatedWEBP": ({"fps": 6.0, "lossless": False, "quality": 80, "method": "default"}, "images"),
        "SaveLatent": ({}, "samples"),
    }
    extra, source = nodes[class_type]
    first = empty_image(2) if source == "images" else latent()
    return {
        "1": first,
        "2": {"class_type": class_type, "inputs": {source: ["1", 0], "filename_prefix": "meta/out", **extra}},
    }


def empty_image(batch: int = 1) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": batch, "color": 0}}


def latent() -> dict:
    return {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}


@pytest.mark.parametrize("class_type", ["SaveAnimatedWEBP", "SaveLatent"])
def test_metadata_of_other_formats_names_no_request_folder(
    without_extension: tuple[ServiceProcess, Path], class_type: str
) -> None:
    """Without the extension the graph ComfyUI runs carries the rewritten prefix
    (`<request folder>/meta/out`), and ComfyUI writes that graph into WebP EXIF and a latent's
    safetensors header as it does into PNG text, which alone was scrubbed."""
    service, _ = without_extension
    response = service.post("/predict", json={"workflow": saver(class_type)}, timeout=120)
    assert response.status_code == 200, response.text[:400]
    (output,) = response.json()["images"]
    data = base64.b64decode(output["image"])
    assert b"meta/out" in data  # ComfyUI's metadata is kept, only the folder's name is not in it
    assert not FOLDER_NAME.search(data.decode("latin-1")), "the output's metadata names the request folder"
    if class_type == "SaveAnimatedWEBP":
        with Image.open(io.BytesIO(data)) as loaded:  # still a picture, its EXIF still readable
            loaded.load()
            assert "meta/out" in str(loaded.getexif().get(0x0110))


# --- folder nodes whose folder no request owns ----------------------------------------------------


@pytest.fixture(scope="module")
def datasets_allowed(comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    allowed = "LoadTrainingDataset,SaveTrainingDataset,LoadImageDataSetFromFolder"
    service = start_service(comfy_target, tmp_path_factory.mktemp("datasets"), ALLOW_FOLDER_NODES=allowed)
    yield service
    service.stop()


@pytest.mark.parametrize("node", ["LoadTrainingDataset", "SaveTrainingDataset"])
def test_training_dataset_nodes_are_refused_even_when_allowed(datasets_allowed: ServiceProcess, node: str) -> None:
    """Load/SaveTrainingDataset read and write ComfyUI's `datasets` folder (under ComfyUI's own
    directory), which the isolation extension does not give each request: allowed, one caller's
    saved dataset was every caller's to load, and the loader's options listed every saved one."""
    workflow: dict = {"1": {"class_type": "LoadTrainingDataset", "inputs": {"folder_name": "victim_dataset"}}}
    workflow["2"] = {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "loot"}}
    if node == "SaveTrainingDataset":
        workflow = {
            "1": latent(),
            "2": {
                "class_type": "SaveTrainingDataset",
                "inputs": {"latents": ["1", 0], "conditioning": ["1", 0], "folder_name": "shared", "shard_size": 1},
            },
        }
    response = datasets_allowed.post("/predict", json={"workflow": workflow}, timeout=120)
    assert response.status_code == 400, response.text[:400]
    message = response.json()["error"]["message"]
    assert node in message and "datasets" in message, message
    # The other allowed folder node still runs (on the request's own folder).
    if datasets_allowed.target.is_real:
        own = [{"name": "sub/a.png", "image": base64.b64encode(png_bytes((9, 9, 9))).decode()}]
        lister = {
            "1": {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": "sub"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "own"}},
        }
        listed = datasets_allowed.post("/predict", json={"workflow": lister, "images": own}, timeout=120)
        assert listed.status_code == 200, listed.text[:400]


# --- file references a node echoes into its ui --------------------------------------------------


@pytest.mark.parametrize("kind", ["output", "input", "temp"])
@pytest.mark.parametrize("where", ["another request's folder", "the root"])
def test_a_file_reference_echoed_by_a_node_reads_and_removes_nothing_of_anothers(
    service: ServiceProcess, kind: str, where: str
) -> None:
    """Preview3D puts its `camera_info` into its ui as it came; the service took any dict there
    with a `filename` for a file of the run: on ComfyUI 0.33.0 it answered the named file (another
    request's, by its folder, or one at ComfyUI's root) and then deleted it."""
    other = f"r{secrets.token_hex(16)}"
    name = f"victim-{secrets.token_hex(4)}.png"
    victim = comfy_dir(service, kind) / (f"{other}/{name}" if where != "the root" else name)
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(png_bytes(SHARED_COLOUR))
    refs = [{"filename": name, "subfolder": f"../{other}" if where != "the root" else "..", "type": kind}]
    if where == "the root":
        refs.append({"filename": f"../{name}", "subfolder": "", "type": kind})
    for ref in refs:
        workflow = {"1": {"class_type": "Preview3D", "inputs": {"model_file": "x.glb", "camera_info": ref}}}
        response = service.post("/predict", json={"workflow": workflow}, timeout=120)
        assert response.status_code == 200, response.text[:400]
        assert SHARED_COLOUR not in colours(response), "read another's file"
        assert response.json()["images"] == []
    time.sleep(0.5)  # the run's files are removed right after the answer
    assert victim.exists(), "removed another's file"


def comfy_dir(service: ServiceProcess, kind: str) -> Path:
    base = service.state_dir / "comfyui"
    return base / "temp" / "temp" if kind == "temp" else base / kind


@pytest.mark.parametrize(
    "ref",
    [{"filename": "x.png", "type": "elsewhere"}, {"filename": "x.png", "subfolder": ["a"]}, {"filename": ""}],
)
def test_an_echoed_reference_of_no_known_shape_is_no_file_and_no_500(service: ServiceProcess, ref: dict) -> None:
    workflow = {"1": {"class_type": "Preview3D", "inputs": {"model_file": "x.glb", "camera_info": ref}}}
    response = service.post("/predict", json={"workflow": workflow}, timeout=120)
    assert response.status_code == 200, response.text[:400]  # was a 500: "an output of unknown type"
    assert response.json()["images"] == []


@pytest.mark.parametrize("kind", ["output", "input", "temp"])
def test_an_echoed_reference_reads_nothing_of_anothers_without_the_extension(
    without_extension: tuple[ServiceProcess, Path], kind: str
) -> None:
    """Without the extension the run's files are `<type>/<request folder>/…` too (prefixes and
    inputs are rewritten there): a reference to the root, or to another request's folder, is
    no file of the run. At the temp root too, where MaskPreview leaves another request's previews
    under a guessable name (`ComfyUI_temp_` and five letters)."""
    service, base = without_extension
    other, name = f"r{secrets.token_hex(16)}", f"ComfyUI_temp_{secrets.token_hex(3)[:5]}_00001_.png"
    victims = [base / kind / name, base / kind / other / name]
    for victim in victims:
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_bytes(png_bytes(SHARED_COLOUR))
    for ref in ({"filename": name, "type": kind}, {"filename": name, "subfolder": other, "type": kind}):
        workflow = {"1": {"class_type": "Preview3D", "inputs": {"model_file": "x.glb", "camera_info": ref}}}
        response = service.post("/predict", json={"workflow": workflow}, timeout=120)
        assert response.status_code == 200, response.text[:400]
        assert response.json()["images"] == []
    time.sleep(0.5)
    assert all(victim.read_bytes() == png_bytes(SHARED_COLOUR) for victim in victims)  # neither removed nor emptied


@pytest.mark.parametrize("kind", ["output", "temp"])
def test_an_echoed_reference_to_no_file_is_comfyuis_fault_not_a_500(service: ServiceProcess, kind: str) -> None:
    """A node's ui naming a file of the run that is not there (a caller can make Preview3D echo
    any name): ComfyUI's report was wrong, a 502 that says so, not the service's own 500."""
    ref = {"filename": f"nothing-{secrets.token_hex(4)}.png", "subfolder": "", "type": kind}
    workflow = {"1": {"class_type": "Preview3D", "inputs": {"model_file": "x.glb", "camera_info": ref}}}
    response = service.post("/predict", json={"workflow": workflow}, timeout=120)
    assert response.status_code != 500, response.text[:400]
    if response.status_code != 200:
        assert response.status_code == 502 and response.json()["error"]["code"] == "output_missing", response.text
