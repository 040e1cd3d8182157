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
