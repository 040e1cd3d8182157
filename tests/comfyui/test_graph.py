"""graph.check against the recorded object_info, compared with what the real ComfyUI answered."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from handler.comfyui import graph, graphshape
from handler.errors import WorkflowInvalid

RESOURCES = Path(__file__).resolve().parents[2] / "test_resources" / "comfy"


@pytest.fixture(scope="module")
def object_info() -> dict:
    return json.loads((RESOURCES / "object_info.json").read_text())


def workflow(name: str) -> dict:
    return json.loads((RESOURCES / "workflows" / f"{name}.json").read_text())


def only_error(report: graph.Report, node_id: str) -> dict:
    errors = report.node_errors[node_id]["errors"]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize(
    "name",
    [
        "empty_save",
        "empty_blur_invert_scale_save",
        "latent_save",
        "loadimage_invert_save",
        "preview_only",
        "websocket_save",
        "long_running",
        "execution_error_loadimage",
    ],
)
def test_recorded_valid_workflows_pass(object_info, name):
    report = graph.check(workflow(name), object_info)
    assert report.clean, report.messages()


def test_bad_values_match_comfyui(object_info):
    report = graph.check(workflow("bad_values"), object_info)
    assert not report.ok
    assert report.error["type"] == "prompt_outputs_failed_validation"
    by_type = {e["type"]: e for e in report.node_errors["1"]["errors"]}
    assert by_type["invalid_input_type"]["details"].startswith("height, abc, invalid literal for int()")
    assert by_type["value_smaller_than_min"]["message"] == "Value 0 smaller than min of 1"
    assert by_type["value_smaller_than_min"]["extra_info"]["input_name"] == "width"
    not_in_list = only_error(report, "2")
    assert not_in_list["details"] == (
        "upscale_method: 'no-such-method' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']"
    )
    assert report.node_errors["1"]["dependent_outputs"] == ["3"]
    assert report.node_errors["2"]["class_type"] == "ImageScale"


def test_unknown_class_is_a_top_level_error(object_info):
    report = graph.check(workflow("invalid_node_class"), object_info)
    assert report.error["type"] == "missing_node_type"
    assert report.error["message"] == "Node 'NoSuchNodeClass' not found. The custom node may not be installed."
    assert report.error["extra_info"]["node_id"] == "2"
    assert report.node_errors == {}


def test_missing_required_input(object_info):
    report = graph.check(workflow("missing_required_input"), object_info)
    assert report.error["details"] == "Required input is missing: images"
    assert only_error(report, "2") == {
        "type": "required_input_missing",
        "message": "Required input is missing",
        "details": "images",
        "extra_info": {"input_name": "images"},
    }


def test_no_outputs(object_info):
    report = graph.check(workflow("no_outputs"), object_info)
    assert report.error["type"] == "prompt_no_outputs"


def test_model_files_checked_only_when_asked(object_info):
    wf = workflow("missing_model")
    strict = graph.check(wf, object_info)
    assert only_error(strict, "1")["details"] == "ckpt_name: 'does_not_exist.safetensors' not in []"
    assert graph.check(wf, object_info, check_files=False).clean


def test_without_file_check_other_lists_still_count(object_info):
    wf = workflow("bad_values")
    report = graph.check(wf, object_info, check_files=False)
    assert only_error(report, "2")["type"] == "value_not_in_list"


def test_uploaded_images_are_not_checked_against_the_list(object_info):
    # LoadImage validates by file existence at run time; the file may be written just before.
    wf = workflow("missing_input_file")
    assert graph.check(wf, object_info).clean


def test_links_to_missing_nodes_and_slots(object_info):
    wf = workflow("empty_save")
    wf["2"]["inputs"]["images"] = ["9", 0]
    error = only_error(graph.check(wf, object_info), "2")
    assert (error["type"], error["message"]) == ("bad_linked_input", "Linked node does not exist")

    wf["2"]["inputs"]["images"] = ["1", 3]
    error = only_error(graph.check(wf, object_info), "2")
    assert error["message"] == "Linked output slot does not exist"
    assert "has 1 outputs, not slot 3" in error["details"]

    wf["2"]["inputs"]["images"] = ["1", 0, 1]
    assert only_error(graph.check(wf, object_info), "2")["type"] == "bad_linked_input"


def test_wrong_link_type(object_info):
    wf = workflow("latent_save")
    save = next(n for n in wf.values() if n["class_type"] == "SaveLatent")
    image_node = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    wf["99"] = image_node
    save["inputs"]["samples"] = ["99", 0]
    report = graph.check(wf, object_info)
    (error,) = [e for entry in report.node_errors.values() for e in entry["errors"]]
    assert error["type"] == "return_type_mismatch"
    assert error["details"] == "samples, received_type(IMAGE) mismatch input_type(LATENT)"


def test_upstream_error_is_reported_once_on_the_broken_node(object_info):
    wf = workflow("empty_blur_invert_scale_save")
    first = next(k for k, n in wf.items() if n["class_type"] == "EmptyImage")
    wf[first]["inputs"]["width"] = 10**9
    report = graph.check(wf, object_info)
    assert list(report.node_errors) == [first]
    assert only_error(report, first)["type"] == "value_bigger_than_max"


def test_primitive_conversion_follows_comfyui(object_info):
    wf = workflow("empty_save")
    wf["1"]["inputs"]["width"] = "64"  # ComfyUI converts with int()
    assert graph.check(wf, object_info).clean
    wf["1"]["inputs"]["width"] = None
    assert only_error(graph.check(wf, object_info), "1")["type"] == "invalid_input_type"
    wf["1"]["inputs"]["width"] = {"__value__": 64}
    assert graph.check(wf, object_info).clean


def test_one_good_output_is_enough_but_not_clean(object_info):
    wf = workflow("empty_save")
    wf["3"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}
    report = graph.check(wf, object_info)
    assert report.ok and not report.clean
    assert report.node_errors["3"]["dependent_outputs"] == ["3"]


def test_nodes_not_feeding_an_output_are_ignored(object_info):
    wf = workflow("empty_save")
    wf["7"] = {"class_type": "ImageInvert", "inputs": {}}
    assert graph.check(wf, object_info).clean


def test_cycle(object_info):
    wf = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    report = graph.check(wf, object_info)
    assert not report.ok
    assert {e["type"] for entry in report.node_errors.values() for e in entry["errors"]} == {"dependency_cycle"}


def test_ui_format_is_recognised(object_info):
    ui = {"last_node_id": 2, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}
    assert graphshape.is_ui_format(ui)
    report = graph.check(ui, object_info)
    assert report.error["type"] == "invalid_prompt"
    assert "UI-format" in report.error["message"]
    assert not graphshape.is_ui_format(workflow("empty_save"))


@pytest.mark.parametrize("bad", [[], {}, {"1": "node"}, {"1": {"inputs": {}}}])
def test_malformed_graphs(object_info, bad):
    report = graph.check(bad, object_info)
    assert not report.ok
    assert report.error["type"] in {"invalid_prompt", "missing_node_type"}


def test_dynamic_v3_inputs_are_left_to_comfyui(object_info):
    wf = workflow("empty_save")
    wf["5"] = {
        "class_type": "ResizeImageMaskNode",
        "inputs": {
            "input": ["1", 0],
            "resize_type": "scale by multiplier",
            "resize_type.multiplier": 0.5,
            "scale_method": "area",
        },
    }
    wf["2"]["inputs"]["images"] = ["5", 0]
    if "ResizeImageMaskNode" not in object_info:
        pytest.skip("node not in this object_info")
    report = graph.check(wf, object_info)
    assert report.clean, report.messages()
    wf["5"]["inputs"]["scale_method"] = "sharpest"  # V3 COMBO options are still checked
    assert only_error(graph.check(wf, object_info), "5")["type"] == "value_not_in_list"


def test_raise_for_errors_carries_comfyui_shape(object_info):
    report = graph.check(workflow("bad_values"), object_info)
    with pytest.raises(WorkflowInvalid) as info:
        report.raise_for_errors()
    body = info.value.to_dict()["error"]
    assert body["code"] == "workflow_invalid"
    assert body["node_errors"] == report.node_errors
    assert body["comfyui_error"]["type"] == "prompt_outputs_failed_validation"
    assert body["message"] == "ComfyUI would refuse the workflow: Prompt outputs failed validation"

    graph.check(workflow("empty_save"), object_info).raise_for_errors(strict=True)
    partial = copy.deepcopy(workflow("empty_save"))
    partial["3"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}
    graph.check(partial, object_info).raise_for_errors()
    with pytest.raises(WorkflowInvalid):
        graph.check(partial, object_info).raise_for_errors(strict=True)


def long_chain(length: int, broken_at: int | None = None) -> dict:
    chain = {"0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    for index in range(1, length):
        chain[str(index)] = {"class_type": "ImageInvert", "inputs": {"image": [str(index - 1), 0]}}
    if broken_at is not None:
        chain["0"]["inputs"]["width"] = "wide"
    chain["out"] = {"class_type": "SaveImage", "inputs": {"images": [str(length - 1), 0], "filename_prefix": "x"}}
    return chain


def test_a_chain_of_thousands_is_checked_without_recursion(object_info):
    assert graph.check(long_chain(5000), object_info).clean
    report = graph.check(long_chain(5000, broken_at=0), object_info)
    assert not report.ok and list(report.node_errors) == ["0"]
    assert report.node_errors["0"]["dependent_outputs"] == ["out"]


def test_longest_chain_counts_nodes_on_the_longest_path_and_cuts_cycles():
    assert graphshape.longest_chain(long_chain(3000)) == 3001
    cycle = {"a": {"class_type": "X", "inputs": {"i": ["b", 0]}}, "b": {"class_type": "X", "inputs": {"i": ["a", 0]}}}
    assert graphshape.longest_chain(cycle) == 2
    assert graphshape.longest_chain({"a": {"class_type": "X", "inputs": {"i": [["nested"], 0]}}}) == 1
