"""The stand-in as a process and an HTTP API, against what a real ComfyUI 0.33.0 does: started like
ComfyUI and stopped cleanly by SIGTERM and SIGINT, its read-only endpoints, uploads and /view,
and the errors of /prompt and of prompt validation, body for body."""

from __future__ import annotations

import io
import signal
import uuid

from tests.fixtures.standin import (
    RESOURCES,
    Image,
    StandIn,
    run,
    types,
    workflow,
)


def test_starts_like_comfyui_and_stops_cleanly_on_sigterm(tmp_path):
    server = StandIn(tmp_path)
    try:
        assert (tmp_path / "temp" / "temp").is_dir(), "--temp-directory X puts temp files in X/temp"
        stats = server.http.get(f"{server.url}/api/system_stats").json()
        assert stats["system"]["comfyui_version"] == "0.33.0"
        assert stats["devices"][0]["type"] == "cpu"
    finally:
        assert server.stop() == 0
    assert any("To see the GUI go to: http://127.0.0.1:" in line for line in server.lines)


def test_disable_api_nodes_hides_the_api_node_package(tmp_path):
    server = StandIn(tmp_path, ("--disable-api-nodes",))
    try:
        nodes = server.http.get(f"{server.url}/object_info").json()
        assert len(nodes) == 604 and "EmptyImage" in nodes
        assert not any(n["python_module"].startswith("comfy_api_nodes") for n in nodes.values())
    finally:
        assert server.stop() == 0


def test_sigint_stops_and_removes_temp_files(tmp_path):
    server = StandIn(tmp_path)
    (server.temp / "leftover.png").write_bytes(b"x")
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(15) == 0
    assert not server.temp.exists()


def test_read_only_endpoints(standin):
    get = lambda path: standin.http.get(standin.url + path)  # noqa: E731
    assert get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert get("/embeddings").json() == []
    assert "checkpoints" in get("/models").json()
    assert get("/models/checkpoints").json() == []
    assert get("/models/no_such_folder").status_code == 404
    assert get("/features").json()["supports_preview_metadata"] is True
    assert get("/object_info/NoSuchNode").json() == {}
    empty = get("/api/object_info/EmptyImage").json()["EmptyImage"]
    assert empty["input"]["required"]["width"][1]["min"] == 1
    full = get("/object_info").json()
    assert full.pop("TestGate")["python_module"] == "custom_nodes.comfyrun_test_gate"  # STANDIN_TEST_GATE=1
    assert len(full) == 849 and full["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == []
    for body in (None, {}, {"prompt_id": str(uuid.uuid4())}):
        response = (
            standin.http.post(standin.url + "/interrupt", json=body)
            if body is not None
            else standin.http.post(standin.url + "/interrupt")
        )
        assert response.status_code == 200 and response.content == b""
    assert standin.http.post(standin.url + "/free", json={"unload_models": True}).status_code == 200


def test_prompt_request_errors(standin):
    post = lambda **kw: standin.http.post(standin.url + "/prompt", **kw)  # noqa: E731
    response = post(json={"client_id": "x"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "no_prompt"
    response = post(json={"prompt": workflow("empty_save"), "prompt_id": "not-a-uuid"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_prompt_id"
    response = post(data="{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 500 and response.headers["Content-Type"].startswith("text/plain")
    response = post(json={"prompt": {}})
    assert response.status_code == 400 and response.json()["error"]["type"] == "prompt_no_outputs"


def test_validation_errors_match_comfyui(standin, ws):
    response = standin.post_prompt(workflow("bad_values"), ws.client_id)
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = {e["type"]: e for e in body["node_errors"]["1"]["errors"]}
    assert errors["invalid_input_type"]["details"] == "height, abc, invalid literal for int() with base 10: 'abc'"
    assert errors["value_smaller_than_min"]["message"] == "Value 0 smaller than min of 1"
    assert (
        body["node_errors"]["2"]["errors"][0]["details"]
        == "upscale_method: 'no-such-method' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']"
    )
    assert body["node_errors"]["1"]["dependent_outputs"] == ["3"]

    body = standin.post_prompt(workflow("missing_model"), ws.client_id).json()
    assert body["node_errors"]["1"]["errors"][0]["details"] == "ckpt_name: 'does_not_exist.safetensors' not in []"

    body = standin.post_prompt(workflow("missing_required_input"), ws.client_id).json()
    assert body["error"]["details"] == "Required input is missing: images"
    assert body["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"

    body = standin.post_prompt(workflow("missing_input_file"), ws.client_id).json()
    error = body["node_errors"]["1"]["errors"][0]
    assert (error["type"], error["details"]) == (
        "custom_validation_failed",
        "image - Invalid image file: no_such_file.png",
    )

    body = standin.post_prompt(workflow("invalid_node_class"), ws.client_id).json()
    assert body == {
        "error": {
            "type": "missing_node_type",
            "message": "Node 'NoSuchNodeClass' not found. The custom node may not be installed.",
            "details": "Node ID '#2'",
            "extra_info": {"node_id": "2", "class_type": "NoSuchNodeClass", "node_title": "NoSuchNodeClass"},
        },
        "node_errors": {},
    }
    assert standin.post_prompt(workflow("no_outputs"), ws.client_id).json()["error"]["type"] == "prompt_no_outputs"

    mismatch = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    body = standin.post_prompt(mismatch, ws.client_id).json()
    assert body["node_errors"]["2"]["errors"][0]["type"] == "return_type_mismatch"
    too_big = workflow("empty_save")
    too_big["1"]["inputs"]["color"] = 0x1000000
    assert (
        standin.post_prompt(too_big, ws.client_id).json()["node_errors"]["1"]["errors"][0]["type"]
        == "value_bigger_than_max"
    )
    # Then one accepted prompt: its frames come in order after anything the refused ones sent. Before
    # its execution_start there are only the connect status and the status of its own put and get.
    marker = workflow("empty_save")
    marker["1"]["inputs"].update(width=8, height=8, color=4242)
    marker_id, _ = run(standin, ws, marker)
    start = next(i for i, f in enumerate(ws.frames) if isinstance(f, dict) and f["type"] == "execution_start")
    assert ws.frames[start]["data"]["prompt_id"] == marker_id
    assert types(ws.frames[:start]) == ["status"] * 3, "validation errors send no WebSocket message"


def test_upload_and_view(standin):
    png = (RESOURCES / "test_input.png").read_bytes()
    upload = lambda data, name="up.png", **form: standin.http.post(  # noqa: E731
        f"{standin.url}/upload/image", files={"image": (name, data, "image/png")}, data=form
    )
    assert upload(png).json() == {"name": "up.png", "subfolder": "", "type": "input"}
    assert upload(png).json()["name"] == "up.png", "same content is not duplicated"
    other = io.BytesIO()
    Image.new("RGB", (3, 3)).save(other, format="PNG")
    assert upload(other.getvalue()).json()["name"] == "up (1).png"
    assert upload(other.getvalue(), overwrite="true").json()["name"] == "up.png"
    assert upload(png, subfolder="sub", overwrite="true").json() == {
        "name": "up.png",
        "subfolder": "sub",
        "type": "input",
    }
    assert upload(png, name="t.png", type="temp").json()["type"] == "temp"
    assert upload(png, name="../evil.png").status_code == 400
    assert upload(png, subfolder="../../etc").status_code == 400
    assert standin.http.post(f"{standin.url}/upload/image", files={"file": ("a.png", png)}).status_code == 400
    assert upload(b"hello", name="notes2.txt").status_code == 200
    view = lambda **params: standin.http.get(f"{standin.url}/view", params=params)  # noqa: E731
    assert view(filename="up.png", subfolder="sub", type="input").content == png
    assert view(filename="up.png", type="input", preview="webp;50").headers["Content-Type"] == "image/webp"
    assert view(filename="up.png", type="input", channel="a").headers["Content-Type"] == "image/png"
    assert view(filename="nope.png", type="input").status_code == 404
    assert view(filename="up.png", type="bogus").status_code == 400
    assert view(filename="../x", type="input").status_code == 400
    assert view(type="input").status_code == 404
    listed = standin.http.get(f"{standin.url}/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][
        0
    ]
    assert "up.png" in listed and "notes2.txt" not in listed
