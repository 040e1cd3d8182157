"""The node policy (handler/comfyui/policy.py) judged against the recorded catalogue of ComfyUI
0.33.0: links into inputs that name files, folders or choices are refused, folder nodes are off
unless allowed, and ordinary graphs (the bundled templates) pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handler.comfyui import policy
from handler.errors import BadRequest

ROOT = Path(__file__).resolve().parents[2]
INFO = json.loads((ROOT / "test_resources" / "comfy" / "object_info.json").read_text())
TEXT = {"class_type": "StringConcatenate", "inputs": {"string_a": "a", "string_b": "b", "delimiter": ""}}


def linked(class_type: str, name: str, **literals: object) -> dict:
    return {"1": TEXT, "2": {"class_type": class_type, "inputs": {name: ["1", 0], **literals}}}


@pytest.mark.parametrize(
    ("class_type", "name"),
    [
        ("LoadImage", "image"),  # a COMBO with an upload widget
        ("Painter", "mask"),  # a STRING with an upload widget
        ("LoadLatent", "latent"),  # a COMBO of files, no upload widget
        ("CheckpointLoaderSimple", "ckpt_name"),  # a model list
        ("KSampler", "sampler_name"),  # any choice: ComfyUI checks it only as a literal
        ("SaveImage", "filename_prefix"),
        ("SaveLoRA", "prefix"),  # an output node's prefix names its files
        ("SaveVideo", "filename_prefix"),
    ],
)
def test_a_link_into_an_input_that_names_a_file_or_a_choice_is_refused(class_type: str, name: str) -> None:
    with pytest.raises(BadRequest, match=f"input '{name}'.*literal value, not a link"):
        policy.check(linked(class_type, name), INFO)


@pytest.mark.parametrize("info", [INFO, {}], ids=["catalogue", "no catalogue"])
def test_file_inputs_of_common_nodes_are_known_without_a_catalogue(info: dict) -> None:
    for class_type, name in [("LoadImage", "image"), ("SaveImage", "filename_prefix"), ("Painter", "mask")]:
        with pytest.raises(BadRequest):
            policy.check(linked(class_type, name), info)


def test_links_into_text_and_numbers_are_fine() -> None:
    policy.check(linked("CLIPTextEncode", "text", clip=["9", 0]), INFO)
    policy.check(linked("AddTextPrefix", "prefix"), INFO)  # not an output node: text, not a file name
    policy.check({"1": TEXT, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}, INFO)


@pytest.mark.parametrize(
    "class_type",
    [
        "LoadImageTextDataSetFromFolder",
        "LoadImageDataSetFromFolder",
        "SaveImageDataSetToFolder",
        "SaveImageTextDataSetToFolder",
        "LoadImageOutput",
    ],
)
def test_folder_nodes_are_off_unless_the_operator_allows_them(class_type: str) -> None:
    graph = {"1": {"class_type": class_type, "inputs": {}}}
    with pytest.raises(BadRequest, match="ALLOW_FOLDER_NODES"):
        policy.check(graph, INFO)
    with pytest.raises(BadRequest, match="ALLOW_FOLDER_NODES"):
        policy.check(graph, {})  # known by name as well
    policy.check(graph, INFO, allowed_folder_nodes=(class_type,))


@pytest.mark.parametrize("class_type", ["LoadTrainingDataset", "SaveTrainingDataset"])
def test_folder_nodes_on_comfyuis_shared_datasets_folder_are_off_even_when_allowed(class_type: str) -> None:
    graph = {"1": {"class_type": class_type, "inputs": {}}}
    for info in (INFO, {}):
        with pytest.raises(BadRequest, match="datasets folder"):
            policy.check(graph, info, allowed_folder_nodes=(class_type,))


def test_a_node_with_a_folder_input_is_a_folder_node() -> None:
    info = {"ThirdPartyExport": {"input": {"required": {"directory": ["STRING", {}]}}, "output_node": True}}
    with pytest.raises(BadRequest, match="ThirdPartyExport"):
        policy.check({"1": {"class_type": "ThirdPartyExport", "inputs": {"directory": "x"}}}, info)


def test_allowing_a_folder_node_does_not_allow_links_into_its_folder() -> None:
    graph = linked("SaveImageDataSetToFolder", "folder_name", images=["9", 0])
    with pytest.raises(BadRequest, match="'folder_name'"):
        policy.check(graph, INFO, allowed_folder_nodes=("SaveImageDataSetToFolder",))


def test_the_bundled_templates_pass() -> None:
    for path in sorted((ROOT / "workflows").glob("*.json")):
        if path.name.endswith(".manifest.json") or path.name.startswith("_"):
            continue
        policy.check(json.loads(path.read_text()), INFO)


def test_nodes_that_read_files_without_a_hash_run_again_for_every_request() -> None:
    """Their cache key holds the name, not the bytes: a cached output may be another caller's file."""
    graph = {
        str(i): {"class_type": class_type, "inputs": {}}
        for i, class_type in enumerate(
            [
                "LoadVideo",  # keyed by the file's mtime
                "Load3D",  # no fingerprint at all
                "LoadImageDataSetFromFolder",  # a folder by name
                "LoadImage",  # sha256 of the bytes: its cache is the same file's
                "LoadAudio",
                "CheckpointLoaderSimple",  # models are the operator's, the same for everyone
                "KSampler",
            ]
        )
    }
    assert policy.fresh_each_run(graph, INFO) == {"LoadVideo", "Load3D", "LoadImageDataSetFromFolder"}


def test_the_isolation_extension_is_loaded_whatever_custom_nodes_the_operator_disables() -> None:
    from handler.comfyui.supervisor import with_isolation_whitelisted

    assert with_isolation_whitelisted(("--cpu",)) == ["--cpu"]
    assert with_isolation_whitelisted(("--disable-all-custom-nodes",)) == [
        "--disable-all-custom-nodes",
        "--whitelist-custom-nodes",
        "comfyrun_isolation",
    ]
    assert with_isolation_whitelisted(("--disable-all-custom-nodes", "--whitelist-custom-nodes", "mine")) == [
        "--disable-all-custom-nodes",
        "--whitelist-custom-nodes",
        "comfyrun_isolation",
        "mine",
    ]
