"""A graph that names a model file ComfyUI does not have is refused with the files it has.

`graph.check` marks a file's `value_not_in_list` with `installed` (the input's options: the files
in that folder); `WorkflowInvalid` lists them under `missing_files` and says the first in its
message. A value that is not a file name (an enum) gets no such list. ComfyUI's own refusal, which
leaves the list out past 20 options, gets the files from the catalogue (`refusals.with_installed`)
where our check confirms the file is missing, and is otherwise passed on as it came.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from handler.comfyui import graph, refusals
from handler.errors import WorkflowInvalid

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "test_resources" / "comfy" / "object_info.json").read_text())
SD15 = json.loads((ROOT / "workflows" / "sd15-txt2img.json").read_text())


def with_checkpoints(names: list[str]) -> dict:
    info = copy.deepcopy(RECORDED)
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = names
    return info


def refusal(workflow: dict, info: dict) -> WorkflowInvalid:
    with pytest.raises(WorkflowInvalid) as caught:
        graph.check(workflow, info).raise_for_errors()
    return caught.value


def test_a_missing_checkpoint_is_answered_with_the_installed_ones():
    error = refusal(SD15, with_checkpoints(["tiny-sd15.safetensors", "dreamshaper_8.safetensors"]))
    body = error.to_dict()["error"]
    assert body["code"] == "workflow_invalid" and error.status_code == 400
    assert "'v1-5-pruned-emaonly.safetensors' is not installed" in body["message"]
    assert "tiny-sd15.safetensors, dreamshaper_8.safetensors" in body["message"]
    assert "GET /models" in body["message"]
    (missing,) = body["missing_files"]
    assert missing == {
        "node": "1",
        "class_type": "CheckpointLoaderSimple",
        "input": "ckpt_name",
        "value": "v1-5-pruned-emaonly.safetensors",
        "installed": ["tiny-sd15.safetensors", "dreamshaper_8.safetensors"],
    }
    # ComfyUI's own words stay as they are (the same body whether we or ComfyUI refuse)
    (node_error,) = body["node_errors"]["1"]["errors"]
    assert node_error["details"].startswith("ckpt_name: 'v1-5-pruned-emaonly.safetensors' not in [")


def test_a_long_folder_is_listed_in_the_body_and_cut_in_the_message():
    names = [f"model-{i:02}.safetensors" for i in range(30)]
    body = refusal(SD15, with_checkpoints(names)).to_dict()["error"]
    assert body["missing_files"][0]["installed"] == names
    assert "model-19.safetensors and 10 more" in body["message"] and "model-20" not in body["message"]


def test_no_checkpoint_at_all_says_none():
    body = refusal(SD15, with_checkpoints([])).to_dict()["error"]
    assert "the files there are: none" in body["message"], body["message"]


def test_a_wrong_enum_value_gets_no_file_list():
    workflow = copy.deepcopy(SD15)
    workflow["5"]["inputs"]["sampler_name"] = "no-such-sampler"
    body = refusal(workflow, with_checkpoints(["v1-5-pruned-emaonly.safetensors"])).to_dict()["error"]
    assert "missing_files" not in body and "not installed" not in body["message"]


def comfyuis_refusal(names: list[str], value: str, input_name: str = "ckpt_name") -> WorkflowInvalid:
    """What ComfyUI itself answers past 20 options: no list, only its length (execution.py)."""
    error = {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": f"{input_name}: '{value}' not in (list of length {len(names)})",
        "extra_info": {"input_name": input_name, "input_config": None, "received_value": value},
    }
    node_errors = {"1": {"errors": [error], "dependent_outputs": ["7"], "class_type": "CheckpointLoaderSimple"}}
    return WorkflowInvalid(
        "ComfyUI refused the workflow: Prompt outputs failed validation",
        comfyui_error={"type": "prompt_outputs_failed_validation"},
        node_errors=node_errors,
    )


def test_comfyuis_own_refusal_gets_the_files_it_left_out():
    names = [f"model-{i:02}.safetensors" for i in range(30)]
    enriched = refusals.with_installed(comfyuis_refusal(names, "absent.safetensors"), SD15, with_checkpoints(names))
    body = enriched.to_dict()["error"]
    assert body["missing_files"][0]["installed"] == names
    assert "'absent.safetensors' is not installed, the files there are: model-00.safetensors" in body["message"]
    assert body["node_errors"]["1"]["errors"][0]["details"].endswith("(list of length 30)")  # ComfyUI's words


def test_a_refusal_our_catalogue_does_not_confirm_stays_comfyuis():
    names = ["v1-5-pruned-emaonly.safetensors"]
    # our (older) catalogue has the file: nothing is added, ComfyUI's answer goes out as it came
    refusal = comfyuis_refusal(["other.safetensors"], "v1-5-pruned-emaonly.safetensors")
    assert refusals.with_installed(refusal, SD15, with_checkpoints(names)) is refusal
    assert refusals.with_installed(refusal, SD15, {}) is refusal
