"""Named workflow templates: loading, parameters, hot reload, broken manifests, shipped templates."""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import time
from pathlib import Path

import jsonschema
import pytest

from handler.comfyui import graph
from handler.config import Settings
from handler.errors import InvalidParameter, NotFound
from handler.templates.loading import load_template
from handler.templates.registry import Templates
from tests.fixtures.sections import sections

ROOT = Path(__file__).resolve().parents[2]
TEST_TEMPLATES = ROOT / "test_resources" / "templates"
SHIPPED = ROOT / "workflows"
OBJECT_INFO = ROOT / "test_resources" / "comfy" / "object_info.json"
PNG = (ROOT / "test_resources" / "comfy" / "test_input.png").read_bytes()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "workflows"
    shutil.copytree(TEST_TEMPLATES, target)
    return target


@pytest.fixture
def templates(folder: Path) -> Templates:
    return Templates(folder, **sections(Settings(), "urls", "cloud"))


@pytest.fixture(scope="module")
def object_info() -> dict:
    return json.loads(OBJECT_INFO.read_text())


def write(path: Path, data) -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    path.write_text(text)
    # Make sure the change is visible even on file systems with coarse timestamps.
    stamp = time.time_ns() + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def invalid(templates: Templates, workflow_id: str, params) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as info:
        templates.render(workflow_id, params)
    assert info.value.status_code == 422
    return info.value


# --- listing and schemas -------------------------------------------------------------------------


def test_lists_the_test_templates(templates):
    assert [t["id"] for t in templates.list()] == ["invert", "solid-blur", "solid-scale"]
    assert templates.errors() == {}
    assert all(t["model_type"] is None for t in templates.list())


def test_schemas_are_valid_json_schema(templates):
    for summary in templates.list():
        schema = templates.json_schema(summary["id"])
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False


def test_schema_shows_shared_definitions_local_overrides_and_graph_defaults(templates):
    props = templates.json_schema("solid-blur")["properties"]
    assert props["width"] == {
        "type": "integer",
        "minimum": 8,
        "maximum": 2048,
        "multipleOf": 8,
        "description": "Image width in pixels.",
        "default": 64,
    }  # default from the graph
    assert props["color"]["default"] == 16711680  # the manifest overrides the shared definition
    assert {"const": "random"} in props["color"]["anyOf"]
    assert props["prefix"]["maxLength"] == 64
    schema = templates.json_schema("invert")
    assert schema["required"] == ["image"]
    assert "default" not in schema["properties"]["image"]


def test_unknown_template_is_404(templates):
    with pytest.raises(NotFound) as info:
        templates.render("nope", {})
    assert info.value.status_code == 404
    with pytest.raises(NotFound):
        templates.describe("nope")


# --- rendering -----------------------------------------------------------------------------------


def test_render_fills_values_into_a_copy(templates):
    before = json.dumps(templates.get("solid-blur").graph, sort_keys=True)
    workflow, images = templates.render("solid-blur", {"width": 128, "blur_radius": 3, "sigma": 2})
    assert images == []
    assert workflow["1"]["inputs"]["width"] == 128
    assert workflow["1"]["inputs"]["height"] == 48
    assert workflow["2"]["inputs"]["blur_radius"] == 3
    assert workflow["2"]["inputs"]["sigma"] == 2
    assert workflow["3"]["inputs"]["filename_prefix"] == "tests/template"  # shared default
    assert workflow["2"]["inputs"]["image"] == ["1", 0]
    workflow["1"]["inputs"]["width"] = 1
    assert json.dumps(templates.get("solid-blur").graph, sort_keys=True) == before


def test_one_parameter_feeds_several_inputs(templates):
    workflow, _ = templates.render("solid-scale", {"size": 96, "method": "bicubic"})
    assert workflow["2"]["inputs"]["width"] == workflow["2"]["inputs"]["height"] == 96
    assert workflow["2"]["inputs"]["upscale_method"] == "bicubic"


def test_null_means_default(templates):
    workflow, _ = templates.render("solid-scale", {"size": None})
    assert workflow["2"]["inputs"]["width"] == 64


def test_integral_floats_become_integers(templates):
    workflow, _ = templates.render("solid-blur", {"width": 96.0})
    assert workflow["1"]["inputs"]["width"] == 96 and isinstance(workflow["1"]["inputs"]["width"], int)


def test_random(templates):
    seen = {templates.render("solid-blur", {"color": "random"}).workflow["1"]["inputs"]["color"] for _ in range(5)}
    assert all(isinstance(v, int) and 0 <= v <= 16777215 for v in seen)
    assert len(seen) > 1
    error = invalid(templates, "solid-blur", {"width": "random"})
    assert error.details["param"] == "width"


@pytest.mark.parametrize(
    ("params", "name", "words"),
    [
        ({"width": 4}, "width", "less than the minimum of 8"),
        ({"width": 4096}, "width", "greater than the maximum of 2048"),
        ({"width": 100}, "width", "not a multiple of 8"),
        ({"width": "128"}, "width", "is not of type 'integer'"),
        ({"width": True}, "width", "is not of type 'integer'"),
        ({"width": 64.5}, "width", "is not of type 'integer'"),
        ({"sigma": 0}, "sigma", "less than the minimum of 0.1"),
        ({"sigma": "soft"}, "sigma", "is not of type 'number'"),
        ({"color": -1}, "color", "less than the minimum of 0"),
        ({"color": "blue"}, "color", "'blue'"),
        ({"prefix": "x" * 65}, "prefix", "is too long"),
        ({"prefix": 5}, "prefix", "is not of type 'string'"),
        ({"widht": 64}, "widht", "unknown parameter 'widht'"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(templates, params, name, words):
    error = invalid(templates, "solid-blur", params)
    assert error.details["param"] == name
    assert name in error.message and words in error.message, error.message
    assert error.to_dict()["error"]["code"] == "invalid_parameter"


def test_enum_values(templates):
    error = invalid(templates, "solid-scale", {"method": "sharpest"})
    assert error.details["param"] == "method"
    assert "is not one of" in error.message


def test_required_parameter(templates):
    error = invalid(templates, "invert", {})
    assert error.message == "parameter 'image' is required"
    assert error.details["param"] == "image"


def test_params_must_be_an_object(templates):
    error = invalid(templates, "solid-blur", ["width", 64])
    assert "params must be an object" in error.message


def test_every_problem_is_listed(templates):
    error = invalid(templates, "solid-blur", {"width": 1, "height": 1})
    assert [e["param"] for e in error.details["errors"]] == ["width", "height"]


# --- image parameters ----------------------------------------------------------------------------


def test_image_from_base64_becomes_an_input_image(templates):
    encoded = base64.b64encode(PNG).decode()
    for value in (encoded, f"data:image/png;base64,{encoded}"):
        workflow, images = templates.render("invert", {"image": value})
        assert workflow["1"]["inputs"]["image"] == "param-image.png"
        assert [(i.name, i.data) for i in images] == [("param-image.png", PNG)]


def test_image_without_settings_uses_the_defaults(folder):
    encoded = base64.b64encode(PNG).decode()
    _, images = Templates(folder).render("invert", {"image": encoded})
    assert images[0].data == PNG


def test_image_by_name_refers_to_the_request_images(templates):
    workflow, images = templates.render("invert", {"image": "photo.png"})
    assert workflow["1"]["inputs"]["image"] == "photo.png"
    assert images == []


def test_image_by_url_goes_through_the_url_guard(folder):
    url = "http://127.0.0.1:9/in.png"
    error = invalid(Templates(folder, **sections(Settings(), "urls", "cloud")), "invert", {"image": url})
    assert error.details["param"] == "image"
    allowed = Templates(folder, **sections(Settings(url_allowlist=("127.0.0.1",)), "urls", "cloud"))
    _, images = allowed.render("invert", {"image": url})
    assert [(i.name, i.url) for i in images] == [("param-image.png", url)]


@pytest.mark.parametrize("value", ["not base64 !!", "", 12])
def test_bad_image_values(templates, value):
    error = invalid(templates, "invert", {"image": value})
    assert error.details["param"] == "image"


# --- hot reload ----------------------------------------------------------------------------------


def test_add_edit_and_remove_without_restart(templates, folder):
    assert templates.describe("solid-blur")["title"] == "Solid colour, blurred"

    shutil.copy(folder / "solid-blur.json", folder / "copy.json")
    manifest = json.loads((folder / "solid-blur.manifest.json").read_text())
    write(folder / "copy.manifest.json", {**manifest, "title": "A copy"})
    assert "copy" in [t["id"] for t in templates.list()]
    assert templates.render("copy", {"width": 24}).workflow["1"]["inputs"]["width"] == 24

    manifest["params"]["width"]["min"] = 32
    write(folder / "copy.manifest.json", {**manifest, "title": "A wider copy"})
    assert templates.describe("copy")["title"] == "A wider copy"
    assert invalid(templates, "copy", {"width": 24}).details["param"] == "width"

    graph_data = json.loads((folder / "copy.json").read_text())
    graph_data["1"]["inputs"]["height"] = 16
    write(folder / "copy.json", graph_data)  # the graph alone changing counts too
    assert templates.json_schema("copy")["properties"]["height"]["default"] == 16

    (folder / "copy.manifest.json").unlink()
    with pytest.raises(NotFound):
        templates.render("copy", {})


def test_editing_shared_params_reaches_every_template(templates, folder):
    shared = json.loads((folder / "_params.json").read_text())
    shared["params"]["width"]["max"] = 512
    write(folder / "_params.json", shared)
    assert templates.json_schema("solid-blur")["properties"]["width"]["maximum"] == 512


def test_missing_folder_is_empty(tmp_path):
    templates = Templates(tmp_path / "nothing")
    assert templates.list() == [] and templates.errors() == {}
    (tmp_path / "nothing").mkdir()
    for name in ("_params.json", "invert.json"):
        shutil.copy(TEST_TEMPLATES / name, tmp_path / "nothing")
    shutil.copy(TEST_TEMPLATES / "invert.manifest.json", tmp_path / "nothing")
    assert [t["id"] for t in templates.list()] == ["invert"]


# --- broken manifests ----------------------------------------------------------------------------

BLUR_GRAPH = json.loads((TEST_TEMPLATES / "solid-blur.json").read_text())


@pytest.mark.parametrize(
    ("manifest", "graph_data", "words"),
    [
        ("{not json", BLUR_GRAPH, "broken.manifest.json is not valid JSON"),
        (
            {"params": {"w": {"type": "integer", "to": "9.width"}}},
            BLUR_GRAPH,
            "parameter 'w' points at node '9', which broken.json does not have",
        ),
        (
            {"params": {"w": {"type": "integer", "to": "1.widht"}}},
            BLUR_GRAPH,
            "parameter 'w' points at input 'widht' of node 1 (EmptyImage), which has no such input",
        ),
        ({"params": {"w": {"type": "integer", "to": "2.image"}}}, BLUR_GRAPH, "which is a link to node '1'"),
        ({"params": {"w": {"type": "integer", "to": "1.width"}}}, {"nodes": [], "links": []}, "UI format"),
        ({"params": {"w": {"type": "integer", "to": "1.width"}}}, None, "broken.json does not exist"),
        ({"params": {"nope": {"to": "1.width"}}}, BLUR_GRAPH, "_params.json defines no 'nope'"),
        (
            {"params": {"a": {"type": "integer", "to": "1.width"}, "b": {"type": "integer", "to": "1.width"}}},
            BLUR_GRAPH,
            "parameters 'a' and 'b' both set 1.width",
        ),
        (
            {"params": {"w": {"type": "integer", "default": "big", "to": "1.width"}}},
            BLUR_GRAPH,
            "the default 'big' is not valid",
        ),
        (
            {"params": {"w": {"type": "integer", "required": True, "default": 3, "to": "1.width"}}},
            BLUR_GRAPH,
            "a required parameter cannot have a default",
        ),
        (
            {"params": {"w": {"type": "integer", "min": 9, "max": 3, "to": "1.width"}}},
            BLUR_GRAPH,
            "min 9 is larger than max 3",
        ),
        ({"params": {"w": {"type": "enum", "to": "1.width"}}}, BLUR_GRAPH, "an enum needs a non-empty list"),
        ({"params": {"w": {"type": "colour", "to": "1.width"}}}, BLUR_GRAPH, "at params/w/type"),
        ({"params": {"w": {"type": "integer"}}}, BLUR_GRAPH, "'to' is a required property"),
        (
            {"params": {"w": {"type": "integer", "to": "1.width", "minimum": 3}}},
            BLUR_GRAPH,
            "Additional properties are not allowed ('minimum' was unexpected)",
        ),
        (
            {"params": {"w": {"type": "string", "random": True, "to": "3.filename_prefix"}}},
            BLUR_GRAPH,
            "only integer parameters can be random",
        ),
    ],
)
def test_broken_manifest_is_refused_and_others_keep_working(templates, folder, manifest, graph_data, words):
    if graph_data is not None:
        write(folder / "broken.json", graph_data)
    write(folder / "broken.manifest.json", manifest)
    errors = templates.errors()
    assert list(errors) == ["broken"]
    assert words in errors["broken"], errors["broken"]
    assert [t["id"] for t in templates.list()] == ["invert", "solid-blur", "solid-scale"]
    assert templates.render("solid-blur", {"width": 16}).workflow["1"]["inputs"]["width"] == 16
    with pytest.raises(NotFound) as info:
        templates.render("broken", {})
    assert "refused" in info.value.message


def test_broken_shared_params_only_take_down_templates_that_use_them(templates, folder):
    write(
        folder / "standalone.manifest.json",
        {"workflow": "solid-blur.json", "params": {"w": {"type": "integer", "to": "1.width"}}},
    )
    write(folder / "_params.json", {"params": {"width": {"type": "integer", "min": 10, "max": 1}}})
    errors = templates.errors()
    assert "min 10 is larger than max 1" in errors["_params.json"]
    assert "was refused" in errors["solid-blur"]
    assert set(errors) == {"_params.json", "invert", "solid-blur", "solid-scale"}
    assert [t["id"] for t in templates.list()] == ["standalone"]


def test_refusals_are_logged(folder, caplog):
    write(folder / "broken.manifest.json", "{")
    with caplog.at_level("ERROR", logger="handler.templates.registry"):
        Templates(folder).list()
    assert "workflow template broken refused" in caplog.text


def test_a_manifest_may_name_its_graph_file(folder):
    write(
        folder / "other.manifest.json",
        {"workflow": "solid-blur.json", "params": {"w": {"type": "integer", "to": "1.width"}}},
    )
    template = load_template(folder / "other.manifest.json", {})
    assert template.params["w"].default == 64


# --- the test templates and the shipped ones against ComfyUI's recorded object_info ---------------


def _render_defaults(templates: Templates, workflow_id: str) -> dict:
    schema = templates.json_schema(workflow_id)
    required = {name: "example.png" for name in schema.get("required", [])}
    return templates.render(workflow_id, required).workflow


def test_test_templates_pass_the_graph_check(templates, object_info):
    for summary in templates.list():
        report = graph.check(_render_defaults(templates, summary["id"]), object_info)
        assert report.clean, (summary["id"], report.messages())


def shipped_ids() -> list[str]:
    return sorted(p.name[: -len(".manifest.json")] for p in SHIPPED.glob("*.manifest.json"))


def test_shipped_templates_all_load():
    templates = Templates(SHIPPED)
    assert templates.errors() == {}
    assert [t["id"] for t in templates.list()] == shipped_ids()


@pytest.mark.parametrize("workflow_id", shipped_ids())
def test_shipped_template_passes_the_graph_check(workflow_id, object_info):
    # The recorded object_info comes from a machine without models: model-file lists are not checked.
    templates = Templates(SHIPPED)
    workflow = _render_defaults(templates, workflow_id)
    report = graph.check(workflow, object_info, check_files=False)
    assert report.clean, report.messages()
    jsonschema.Draft202012Validator.check_schema(templates.json_schema(workflow_id))


MODEL_INPUTS = {
    "ckpt_name": "checkpoints",
    "unet_name": "unet",
    "clip_name": "clip",
    "clip_name1": "clip",
    "clip_name2": "clip",
    "clip_name3": "clip",
    "vae_name": "vae",
    "lora_name": "loras",
}


def model_files_of(workflow: dict) -> set[str]:
    files = set()
    for node in workflow.values():
        for key, value in node["inputs"].items():
            if key in MODEL_INPUTS and isinstance(value, str) and value != "pixel_space":
                files.add(f"{MODEL_INPUTS[key]}/{value}")
    return files


@pytest.mark.parametrize("workflow_id", shipped_ids())
def test_shipped_template_uses_the_models_of_its_model_type(workflow_id):
    models_txt = ROOT / "models.txt"
    if not models_txt.exists():
        pytest.skip("models.txt is not in the repository yet")
    templates = Templates(SHIPPED)
    model_type = templates.get(workflow_id).model_type
    assert model_type, "a shipped template names the MODEL_TYPE whose models it needs"
    listed = models_by_type(models_txt.read_text())
    assert model_type in listed, f"models.txt has no MODEL_TYPE {model_type!r}"
    template = templates.get(workflow_id)
    graph = copy.deepcopy(template.graph)
    for param in template.params.values():
        for target in param.targets if param.required else ():
            graph[target.node]["inputs"].pop(target.input)  # a placeholder: the caller names the file
    missing = model_files_of(graph) - listed[model_type]
    assert not missing, f"not in models.txt for {model_type}: {sorted(missing)}"


def models_by_type(text: str) -> dict[str, set[str]]:
    from handler import models

    listed: dict[str, set[str]] = {}
    for entry in models.parse_models_text(text):
        for model_type in entry.types:
            listed.setdefault(model_type, set()).add(entry.dest)
    return listed


@pytest.mark.parametrize("workflow_id", shipped_ids())
def test_shipped_parameter_limits_fit_the_nodes(workflow_id, object_info):
    """Every allowed value, and both ends of every range, makes a graph ComfyUI accepts."""
    templates = Templates(SHIPPED)
    template = templates.get(workflow_id)
    base = {name: "example.png" for name, p in template.params.items() if p.required}
    for name, param in template.params.items():
        trials = list(param.values or ())
        for bound in (param.min, param.max):
            if bound is not None:
                value = bound if param.type == "number" else int(bound)
                if param.multiple_of:
                    value -= value % param.multiple_of
                    value = value if param.min is None or value >= param.min else value + param.multiple_of
                trials.append(value)
        for value in trials:
            workflow = templates.render(workflow_id, {**base, name: value}).workflow
            report = graph.check(workflow, object_info, check_files=False)
            assert report.clean, (name, value, report.messages())
