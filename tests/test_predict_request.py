import base64

import pytest

from handler.config import Settings
from handler.errors import BadRequest, PayloadTooLarge
from handler.predict_request import parse_predict_body

SETTINGS = Settings.from_env({"MAX_INPUT_BYTES": "1000", "MAX_REQUEST_TIMEOUT_S": "60"})
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def parse(body):
    return parse_predict_body(body, SETTINGS)


def test_a_plain_workflow_with_images_options_and_timeout():
    request = parse({"workflow": GRAPH, "images": [{"name": "in.png", "image": PNG}],
                     "timeout": 5, "output": {"format": "jpg", "quality": 70}})
    assert request.workflow == GRAPH
    assert request.images[0].name == "in.png" and request.images[0].data.startswith(b"\x89PNG")
    assert request.timeout_s == 5.0
    assert (request.output.format, request.output.quality) == ("jpeg", 70)


def test_data_uris_and_the_input_envelope_are_accepted():
    request = parse({"input": {"workflow": GRAPH, "images": [{"name": "a.png", "image": "data:image/png;base64," + PNG}]}})
    assert request.images[0].data.startswith(b"\x89PNG")


def test_each_request_gets_its_own_id():
    assert parse({"workflow": GRAPH}).request_id != parse({"workflow": GRAPH}).request_id


@pytest.mark.parametrize("body, message", [
    ([], "JSON object"),
    ({}, "needs a workflow"),
    ({"workflow": {"nodes": [], "links": []}}, "Export \\(API\\)"),
    ({"workflow": {"1": {"inputs": {}}}}, "class_type"),
    ({"workflow": "x"}, "API format"),
    ({"workflow": GRAPH, "images": [{"name": "a.png", "image": "%%%"}]}, "base64"),
    ({"workflow": GRAPH, "images": [{"name": "../etc/passwd", "image": PNG}]}, "not allowed"),
    ({"workflow": GRAPH, "images": [{"name": "sub/../../a.png", "image": PNG}]}, "not allowed"),
    ({"workflow": GRAPH, "images": [{"name": "/etc/a.png", "image": PNG}]}, "not allowed"),
    ({"workflow": GRAPH, "images": [{"name": "a\\..\\b.png", "image": PNG}]}, "not allowed"),
    ({"workflow": GRAPH, "images": [{"name": ".hidden", "image": PNG}]}, "not allowed"),
    ({"workflow": GRAPH, "images": [{"name": "a.png", "image": PNG}, {"name": "a.png", "image": PNG}]}, "twice"),
    ({"workflow": GRAPH, "images": {"name": "a.png"}}, "must be a list"),
    ({"workflow": GRAPH, "timeout": 0}, "positive"),
    ({"workflow": GRAPH, "timeout": 61}, "at most 60"),
    ({"workflow": GRAPH, "output": {"format": "gif"}}, "png, jpeg, webp"),
    ({"workflow": GRAPH, "output": {"format": "png", "quality": 0}}, "quality"),
    ({"workflow": GRAPH, "workflow_id": "x"}, "not both"),
    ({"workflow_id": "txt2img"}, "not available"),
])
def test_bad_bodies_say_what_is_wrong(body, message):
    with pytest.raises(BadRequest, match=message):
        parse(body)


def test_an_image_over_the_limit_is_413():
    big = base64.b64encode(b"x" * 5000).decode()
    with pytest.raises(PayloadTooLarge):
        parse({"workflow": GRAPH, "images": [{"name": "a.png", "image": big}]})


def test_names_may_have_subfolders():
    request = parse({"workflow": GRAPH, "images": [{"name": "proto_upload/test_input.png", "image": PNG}]})
    assert request.images[0].name == "proto_upload/test_input.png"
