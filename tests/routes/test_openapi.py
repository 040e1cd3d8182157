"""The OpenAPI document: valid OpenAPI 3.1, with every template's parameters."""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema
import pytest
from openapi_spec_validator import validate

from handler.routes import openapi
from handler.templates.registry import Templates
from tests.fixtures.sections import sections

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def templates(tmp_path: Path) -> Templates:
    shutil.copytree(ROOT / "test_resources" / "templates", tmp_path / "workflows")
    return Templates(tmp_path / "workflows", model_type="base")


def test_whole_document_is_valid_openapi(templates):
    doc = openapi.document(templates, version="1.2.3")
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["version"] == "1.2.3"
    for path in (
        "/",
        "/healthz",
        "/models",
        "/predict",
        "/status/{job_id}",
        "/cancel/{job_id}",
        "/workflows",
        "/workflows/{workflow_id}",
        "/openapi.json",
    ):
        assert path in doc["paths"], path


def test_shipped_templates_make_a_valid_document():
    doc = openapi.document(Templates(ROOT / "workflows", model_type="sdxl"))
    validate(doc)
    assert "sdxl-img2img.params" in doc["components"]["schemas"]


def test_without_templates():
    validate(openapi.document(None))


def test_predict_takes_a_raw_workflow_or_any_template(templates):
    doc = openapi.document(templates)
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    refs = [choice["$ref"].rsplit("/", 1)[1] for choice in body["schema"]["oneOf"]]
    assert refs == ["RawPredictRequest", "invert.request", "solid-blur.request", "solid-scale.request"]
    schemas = doc["components"]["schemas"]
    assert schemas["solid-blur.params"] == templates.json_schema("solid-blur")
    assert schemas["invert.request"]["required"] == ["workflow_id", "params"]
    assert set(body["examples"]) == {"raw", "invert", "solid-blur", "solid-scale"}


def test_request_schema_accepts_good_bodies_and_refuses_bad_ones(templates):
    doc = openapi.document(templates)
    # The components sit beside the schema so its "#/components/..." references resolve.
    schema = {
        **doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"],
        "components": doc["components"],
    }
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"workflow_id": "solid-blur", "params": {"width": 64, "color": "random"}})
    assert validator.is_valid({"workflow_id": "invert", "params": {"image": "photo.png"}})
    assert validator.is_valid({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}}})
    assert not validator.is_valid({"workflow_id": "solid-blur", "params": {"width": 3}})
    assert not validator.is_valid({"workflow_id": "invert", "params": {}})
    assert not validator.is_valid({"workflow_id": "nope"})


def test_paths_follow_the_mounted_routes(templates):
    doc = openapi.document(
        templates, present=["/", "/predict", "/workflows", "/outputs/{job_id}/{name:path}", "/tasks/run"]
    )
    assert set(doc["paths"]) == {"/", "/predict", "/workflows", "/outputs/{job_id}/{name}"}
    validate(doc)


def test_template_changes_show_in_the_next_document(templates):
    folder = templates.directory
    (folder / "solid-scale.manifest.json").unlink()
    doc = openapi.document(templates)
    assert "solid-scale.params" not in doc["components"]["schemas"]


def test_priorities_formats_and_queue_limits_come_from_their_declarations():
    from handler.comfyui import outputs
    from handler.routes import openapi
    from handler.taskqueue.base import PRIORITIES
    from handler.taskqueue.cloudtasks import QUEUE_LIMITS

    schemas = openapi.document()["components"]["schemas"]
    priority = schemas["RawPredictRequest"]["properties"]["priority"]
    assert priority["enum"] == list(PRIORITIES)
    for name in PRIORITIES:
        rate, concurrent = QUEUE_LIMITS[name]
        assert f"{name}: up to {rate:g} dispatches/s, {concurrent} at once" in priority["description"]
    assert schemas["Job"]["properties"]["priority"]["enum"] == list(PRIORITIES)
    (as_string, as_object) = schemas["OutputOptions"]["anyOf"]
    assert set(as_string["enum"]) == set(outputs.FORMATS) | {"jpg"} == set(as_object["properties"]["format"]["enum"])
    for name in as_string["enum"]:  # each one is accepted by the parser the service uses
        assert outputs.OutputOptions.parse(name).format in outputs.FORMATS


def test_the_published_body_schema_is_the_one_the_parser_checks(templates):
    """One declaration (handler/body.py): what /openapi.json publishes for the body's fields is
    what a body is checked against; a body the schema refuses is refused by the parser."""
    from handler import body
    from handler.config import Settings
    from handler.errors import BadRequest
    from handler.predict_request import parse_predict_body

    doc = openapi.document(templates)
    published = doc["components"]["schemas"]["RawPredictRequest"]["properties"]
    for name, schema in body.FIELDS.items():
        if name != "priority":  # published with the queue limits added to its description
            assert published[name] == schema, name
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    for field, value in [("timeout", "soon"), ("previews", "yes"), ("output", {"quality": 500}), ("images", [{}])]:
        with pytest.raises(BadRequest, match=field):
            parse_predict_body(
                {"workflow": workflow, field: value}, **sections(Settings(), "http", "urls", "cloud", "models")
            )
