from handler.pipeline import REQUEST_MARKER, prepare_graph

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "proto/save"}},
    "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    "4": {"class_type": "MyCustomSave", "inputs": {"images": ["1", 0]}},
}


def test_outputs_go_to_the_request_subfolder_and_are_marked():
    graph = prepare_graph(GRAPH, "rid", frozenset({"MyCustomSave"}))
    assert graph["2"]["inputs"]["filename_prefix"] == "rid/proto/save"
    assert graph["2"]["inputs"][REQUEST_MARKER] == "rid"
    assert graph["3"]["inputs"][REQUEST_MARKER] == "rid"
    assert graph["4"]["inputs"][REQUEST_MARKER] == "rid"
    assert REQUEST_MARKER not in graph["1"]["inputs"]


def test_the_callers_graph_is_left_untouched():
    prepare_graph(GRAPH, "rid", frozenset())
    assert GRAPH["2"]["inputs"]["filename_prefix"] == "proto/save"
    assert REQUEST_MARKER not in GRAPH["3"]["inputs"]


def test_the_json_answer_splices_base64_and_knows_its_length():
    import json
    import os

    from handler.outputs import OutputFile
    from handler.pipeline import PredictResult

    for sizes in ([], [0], [1000, 1001, 1002], [3 * 10**6, 5, 4 * 10**6 + 1]):
        files = [OutputFile("9", f"{n}.png", "", "output", "images", "image/png", os.urandom(n)) for n in sizes]
        result = PredictResult("p", files, {"9": {"text": ['a "quoted" caption']}}, {"total_ms": 1.5})
        length, parts = result.json_parts()
        body = b"".join(parts)
        assert length == len(body)
        assert json.loads(body) == result.to_response()
