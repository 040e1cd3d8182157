import base64

import pytest

from handler.config import Settings
from handler.errors import BadRequest, PayloadTooLarge
from handler.predict_request import parse_predict_body
from tests.fixtures.sections import sections

SETTINGS = Settings.from_env({"MAX_INPUT_BYTES": "1000", "MAX_REQUEST_TIMEOUT_S": "60"})
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def parse(body):
    return parse_predict_body(body, **sections(SETTINGS, "http", "urls", "cloud", "models"))


def test_a_plain_workflow_with_images_options_and_timeout():
    request = parse(
        {
            "workflow": GRAPH,
            "images": [{"name": "in.png", "image": PNG}],
            "timeout": 5,
            "output": {"format": "jpg", "quality": 70},
        }
    )
    assert request.workflow == GRAPH
    assert request.images[0].name == "in.png" and request.images[0].data.startswith(b"\x89PNG")
    assert request.timeout_s == 5.0
    assert (request.output.format, request.output.quality) == ("jpeg", 70)


def test_data_uris_and_the_input_envelope_are_accepted():
    request = parse(
        {"input": {"workflow": GRAPH, "images": [{"name": "a.png", "image": "data:image/png;base64," + PNG}]}}
    )
    assert request.images[0].data.startswith(b"\x89PNG")


def test_each_request_gets_its_own_id():
    assert parse({"workflow": GRAPH}).request_id != parse({"workflow": GRAPH}).request_id


@pytest.mark.parametrize(
    "body, message",
    [
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
        # the declared shapes (handler/body.py) name the field and what it must be
        ({"workflow": GRAPH, "images": {"name": "a.png"}}, "images: .* is not of type 'array'"),
        ({"workflow": GRAPH, "timeout": 0}, "timeout: 0 is less than or equal to the minimum of 0"),
        ({"workflow": GRAPH, "timeout": 61}, "at most 60"),
        (
            {"workflow": GRAPH, "output": {"format": "gif"}},
            "output/format: 'gif' is not one of \\['png', 'jpeg', 'webp'",
        ),
        ({"workflow": GRAPH, "output": {"format": "png", "quality": 0}}, "quality"),
        ({"workflow": GRAPH, "workflow_id": "x"}, "not both"),
        ({"workflow_id": "txt2img"}, "not available"),
    ],
)
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


def test_folder_names_are_unguessable_secrets_of_one_shape():
    import re

    names = {parse({"workflow": GRAPH}).request_id for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"r[0-9a-f]{32}", name) for name in names)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"workflow": GRAPH, "timeout": float("nan")}, "finite"),
        ({"workflow": GRAPH, "timeout": float("inf")}, "finite"),
        ({"workflow": GRAPH, "timeout": 10**400}, "at most"),
        ({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": float("nan")}}}}, "finite"),
        ({"workflow": {"1": {"class_type": "X", "inputs": {"v": [[[[[[[[[[1]]]]]]]]]]}}}}, None),
        (
            {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png [temp]"}}}},
            "shared output or temp",
        ),
        (
            {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png [output]"}}}},
            "shared output or temp",
        ),
        (
            {"workflow": GRAPH, "images": [{"name": "a", "image": PNG}, {"name": "a/b.png", "image": PNG}]},
            "file and a folder",
        ),
        (
            {"workflow": GRAPH, "images": [{"name": "x/a/b.png", "image": PNG}, {"name": "x/a", "image": PNG}]},
            "file and a folder",
        ),
        ({"workflow": GRAPH, "images": [{"name": "é" * 150 + ".png", "image": PNG}]}, "too long"),
        ({"workflow": GRAPH, "images": [{"name": "\ud800.png", "image": PNG}]}, "UTF-8"),
    ],
)
def test_bad_values_are_400s(body, message):
    if message is None:  # ten levels is fine
        parse(body)
        return
    with pytest.raises(BadRequest, match=message):
        parse(body)


def test_deep_bodies_and_long_chains_are_400s():
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(BadRequest, match="nested"):
        parse({"workflow": {"1": {"class_type": "X", "inputs": {"v": deep}}}})
    chain = {"0": {"class_type": "EmptyImage", "inputs": {}}}
    for index in range(1, 1200):
        chain[str(index)] = {"class_type": "ImageInvert", "inputs": {"image": [str(index - 1), 0]}}
    with pytest.raises(BadRequest, match="chain of 1200"):
        parse({"workflow": chain})
