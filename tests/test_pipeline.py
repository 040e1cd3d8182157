from handler.comfyui.prepare import REQUEST_MARKER, prepare_graph

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "proto/save"}},
    "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    "4": {"class_type": "MyCustomSave", "inputs": {"images": ["1", 0]}},
}


def test_outputs_go_to_the_request_subfolder_and_are_marked():
    graph = prepare_graph(GRAPH, "rid", frozenset({"MyCustomSave"}), marker="rid")
    assert graph["2"]["inputs"]["filename_prefix"] == "rid/proto/save"
    assert graph["2"]["inputs"][REQUEST_MARKER] == "rid"
    assert graph["3"]["inputs"][REQUEST_MARKER] == "rid"
    assert graph["4"]["inputs"][REQUEST_MARKER] == "rid"
    assert REQUEST_MARKER not in graph["1"]["inputs"]


def test_the_callers_graph_is_left_untouched():
    prepare_graph(GRAPH, "rid", frozenset(), marker="rid")
    assert GRAPH["2"]["inputs"]["filename_prefix"] == "proto/save"
    assert REQUEST_MARKER not in GRAPH["3"]["inputs"]


def test_the_json_answer_splices_base64_and_knows_its_length():
    import json
    import os

    from handler.comfyui.outputs import OutputFile
    from handler.pipeline import PredictResult

    for sizes in ([], [0], [1000, 1001, 1002], [3 * 10**6, 5, 4 * 10**6 + 1]):
        files = [OutputFile("9", f"{n}.png", "", "output", "images", "image/png", os.urandom(n)) for n in sizes]
        result = PredictResult("p", files, {"9": {"text": ['a "quoted" caption']}}, {"total_ms": 1.5})
        length, parts = result.json_parts()
        body = b"".join(parts)
        assert length == len(body)
        assert json.loads(body) == result.to_response()


def test_prefixes_are_normalised_inside_the_request_folder():
    from handler.comfyui.prepare import request_prefix

    assert request_prefix("a/../b/out", "rid") == "rid/b/out"
    assert request_prefix("/abs/out", "rid") == "rid/abs/out"
    assert request_prefix("dir/", "rid") == "rid/dir/"


def test_prefixes_that_leave_the_request_folder_are_400s():
    import pytest

    from handler.comfyui.prepare import request_prefix
    from handler.errors import BadRequest

    # "", "." and "a/..": ComfyUI would name the files after the request's folder, a secret.
    for prefix in ("../x", "a/../../x", "..", "a\\..\\x", "x" * 300, "", ".", "a/.."):
        with pytest.raises(BadRequest):
            request_prefix(prefix, "rid")
    with pytest.raises(BadRequest):
        prepare_graph(
            {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "../x"}}}, "rid", frozenset(), marker="m"
        )


def test_deep_values_are_shared_not_copied():
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "deep": deep}}}
    graph = prepare_graph(workflow, "rid", frozenset(), marker="m")
    assert graph["1"]["inputs"]["deep"] is deep
    assert "filename_prefix" in workflow["1"]["inputs"] and workflow["1"]["inputs"]["filename_prefix"] == "x"


def test_previews_are_saved_in_the_requests_own_folder_and_shown_as_temp():
    """PreviewImage would write to ComfyUI's one shared temp folder under its own names: the
    request's graph saves them into the request's folder instead, and callers still see `temp`."""
    from handler.comfyui.prepare import prepare_graph, preview_nodes
    from handler.pipeline import public_outputs

    rid = "r" + "ab" * 16
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "keep"}},
    }
    graph = prepare_graph(workflow, rid, frozenset({"SaveImage", "PreviewImage"}), marker="m")
    assert graph["2"]["class_type"] == "SaveImage"
    assert graph["2"]["inputs"]["filename_prefix"] == f"{rid}/ComfyUI_temp"
    assert workflow["2"]["class_type"] == "PreviewImage"  # the caller's graph is untouched
    outputs = {
        "2": {"images": [{"filename": "ComfyUI_temp_00001_.png", "subfolder": rid, "type": "output"}]},
        "3": {"images": [{"filename": "keep_00001_.png", "subfolder": rid, "type": "output"}]},
    }
    public = public_outputs(outputs, rid, preview_nodes(workflow))
    assert public["2"]["images"][0] == {"filename": "ComfyUI_temp_00001_.png", "subfolder": "", "type": "temp"}
    assert public["3"]["images"][0]["type"] == "output"
