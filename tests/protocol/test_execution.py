"""Prompts running in the stand-in, against what a real ComfyUI 0.33.0 does: the websocket sequence
and the output files, counters and subfolders, the execution cache, LoadImage and masks, errors
at run time, latents, previews and animated outputs, binary frames in the old and new formats,
and the project's media workflows."""

from __future__ import annotations

import copy
import json
import struct
import uuid

import pytest

from tests.fixtures.standin import (
    REPO,
    RESOURCES,
    WS,
    Image,
    run,
    types,
    workflow,
)


def test_success_sequence_and_output_file(standin, ws):
    prompt = workflow("empty_save")
    prompt["1"]["inputs"]["color"] = 0x123456
    prompt_id, frames = run(standin, ws, prompt)
    assert types(frames) == [
        "status",
        "status",
        "execution_start",
        "execution_cached",
        "progress_state",
        "executing",
        "progress_state",
        "progress_state",
        "executing",
        "executed",
        "progress_state",
        "execution_success",
        "status",
        "executing",
    ]
    executed = next(f for f in frames if f["type"] == "executed")["data"]
    image = executed["output"]["images"][0]
    assert image["subfolder"] == "proto" and image["type"] == "output"
    assert image["filename"].startswith("empty_") and image["filename"].endswith("_.png")
    path = standin.output / "proto" / image["filename"]
    with Image.open(path) as png:
        assert png.size == (512, 512)
        assert png.getpixel((0, 0)) == (0x12, 0x34, 0x56)
        assert json.loads(png.text["prompt"])["1"]["class_type"] == "EmptyImage"
    entry = standin.history(prompt_id)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["outputs"] == {"2": executed["output"]}
    assert entry["meta"]["2"] == {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    view = standin.http.get(f"{standin.url}/view", params=image)
    assert view.status_code == 200 and view.content == path.read_bytes()
    assert view.headers["Content-Type"] == "image/png"


def test_counter_continues_and_prefix_subfolders(standin, ws):
    folder = standin.output / "counter" / "deep"
    folder.mkdir(parents=True)
    (folder / "shot_00041_.png").write_bytes(b"x")
    prompt = workflow("empty_save")
    prompt["1"]["inputs"].update(width=8, height=8, batch_size=2, color=7)
    prompt["2"]["inputs"]["filename_prefix"] = "counter/deep/shot"
    _, frames = run(standin, ws, prompt)
    images = next(f for f in frames if f["type"] == "executed")["data"]["output"]["images"]
    assert [i["filename"] for i in images] == ["shot_00042_.png", "shot_00043_.png"]
    assert {i["subfolder"] for i in images} == {"counter/deep"}


def test_cache_full_and_partial_resubmission(standin, ws):
    prompt = workflow("empty_save")
    prompt["1"]["inputs"]["color"] = 4242
    prompt["2"]["inputs"]["filename_prefix"] = "cache/a"
    _, first = run(standin, ws, prompt)
    name = next(f for f in first if f["type"] == "executed")["data"]["output"]["images"][0]["filename"]
    files = sorted(p.name for p in (standin.output / "cache").iterdir())

    second_id, second = run(standin, ws, copy.deepcopy(prompt))
    assert types(second) == [
        "status",
        "status",
        "execution_start",
        "execution_cached",
        "executed",
        "progress_state",
        "execution_success",
        "status",
        "executing",
    ]
    data = {f["type"]: f["data"] for f in second if isinstance(f, dict)}
    assert data["execution_cached"]["nodes"] == ["1", "2"]
    assert data["executed"]["output"]["images"][0]["filename"] == name
    assert sorted(p.name for p in (standin.output / "cache").iterdir()) == files, "no new file"
    assert standin.history(second_id)["outputs"]["2"]["images"][0]["filename"] == name

    prompt["2"]["inputs"]["filename_prefix"] = "cache/b"
    _, third = run(standin, ws, prompt)
    assert next(f for f in third if f["type"] == "execution_cached")["data"]["nodes"] == ["1"]
    assert [f["data"]["node"] for f in third if f["type"] == "executing"] == ["2", None]

    # An input the node does not declare is ignored by execution but is part of the cache key.
    prompt["1"]["inputs"]["note"] = "ignored by the node"
    _, fourth = run(standin, ws, prompt)
    assert next(f for f in fourth if f["type"] == "execution_cached")["data"]["nodes"] == []


def test_loadimage_subfolder_mask_preview_and_reupload_changes_cache_key(standin, ws):
    (standin.input / "job").mkdir(parents=True, exist_ok=True)
    (standin.input / "job" / "in.png").write_bytes((RESOURCES / "test_input.png").read_bytes())
    prompt = workflow("loadimage_invert_save")
    prompt["1"]["inputs"]["image"] = "job/in.png"
    prompt_id, frames = run(standin, ws, prompt)
    outputs = {f["data"]["node"]: f["data"]["output"] for f in frames if f["type"] == "executed"}
    preview = outputs["5"]["images"][0]
    assert preview["type"] == "temp" and preview["subfolder"] == ""
    assert preview["filename"].startswith("ComfyUI_temp_") and preview["filename"].endswith("_00001_.png")
    assert len(preview["filename"].split("_")[2]) == 5
    with Image.open(standin.temp / preview["filename"]) as png:
        assert png.size == (64, 48)
    saved = outputs["3"]["images"][0]
    with (
        Image.open(standin.output / saved["subfolder"] / saved["filename"]) as png,
        Image.open(RESOURCES / "test_input.png") as source,
    ):
        assert png.size == source.size
        r, g, b = png.convert("RGB").getpixel((5, 5))
        sr, sg, sb = source.convert("RGB").getpixel((5, 5))
        # 8-bit values are truncated from floats, as in ComfyUI, so allow one step
        assert all(abs(x - (255 - y)) <= 1 for x, y in zip((r, g, b), (sr, sg, sb)))

    _, cached = run(standin, ws, prompt)
    assert next(f for f in cached if f["type"] == "execution_cached")["data"]["nodes"] == ["1", "2", "3", "4", "5"]
    Image.new("RGB", (10, 12), (1, 2, 3)).save(standin.input / "job" / "in.png")
    _, changed = run(standin, ws, prompt)
    assert next(f for f in changed if f["type"] == "execution_cached")["data"]["nodes"] == []


def test_execution_error_for_a_non_image_file(standin, ws):
    (standin.input / "notes.txt").write_text("hello")
    prompt_id, frames = run(standin, ws, workflow("execution_error_loadimage"))
    assert types(frames)[-4:] == ["executing", "execution_error", "status", "executing"]
    error = next(f for f in frames if f["type"] == "execution_error")["data"]
    assert error["node_id"] == "1" and error["node_type"] == "LoadImage" and error["executed"] == []
    assert error["exception_type"] == "av.error.InvalidDataError"
    assert error["exception_message"].startswith("[Errno 1094995529] Invalid data found when processing input: '")
    assert error["exception_message"].endswith("notes.txt'\n")
    assert error["current_inputs"] == {"image": ["notes.txt"]}
    assert sorted(error["current_outputs"]) == ["1", "2", "3"] and isinstance(error["traceback"], list)
    entry = standin.history(prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {} and entry["meta"] == {}
    assert entry["status"]["messages"][-1][0] == "execution_error"


def test_latent_save_and_view(standin, ws):
    _, frames = run(standin, ws, workflow("latent_save"))
    latent = next(f for f in frames if f["type"] == "executed")["data"]["output"]["latents"][0]
    assert latent["subfolder"] == "proto/latents" and latent["filename"].endswith("_.latent")
    view = standin.http.get(f"{standin.url}/view", params=latent)
    assert view.headers["Content-Type"] == "application/octet-stream"
    (length,) = struct.unpack("<Q", view.content[:8])
    header = json.loads(view.content[8 : 8 + length])
    assert header["latent_tensor"]["shape"] == [1, 4, 96, 96]
    assert len(view.content) == 8 + length + 4 * 96 * 96 * 4


def test_text_preview_image_size_and_animated_outputs(standin, ws):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 320, "height": 200, "batch_size": 3, "color": 99}},
        "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "4": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": "anim/w",
                "fps": 6.0,
                "lossless": True,
                "quality": 80,
                "method": "default",
            },
        },
        "5": {
            "class_type": "SaveAnimatedPNG",
            "inputs": {"images": ["1", 0], "filename_prefix": "anim/p", "fps": 6.0, "compress_level": 4},
        },
    }
    _, frames = run(standin, ws, prompt)
    outputs = {
        f["data"]["node"]: f["data"]["output"] for f in frames if isinstance(f, dict) and f["type"] == "executed"
    }
    assert outputs["3"] == {"text": ["320"]}
    assert outputs["4"]["animated"] == [True] and outputs["4"]["images"][0]["filename"].endswith("_.webp")
    assert outputs["5"]["animated"] == [True] and outputs["5"]["images"][0]["filename"].endswith("_.png")
    text = next(f for f in frames if isinstance(f, bytes) and struct.unpack(">I", f[:4])[0] == 3)
    (id_length,) = struct.unpack(">I", text[4:8])
    assert text[8 : 8 + id_length] == b"2"
    assert text[8 + id_length :].decode() == "width: 320, height: 200\n batch size: 3"


def test_websocket_binary_frames_old_and_new_format(standin):
    prompt = workflow("websocket_save")
    old = WS(standin, client_id=str(uuid.uuid4()))
    _, frames = run(standin, old, prompt)
    sequence = types(frames)
    assert sequence.count("binary:1") == 2
    first = sequence.index("binary:1")
    assert sequence[first - 1] == "progress", "type 1 comes right after its progress message"
    png = next(f for f in frames if isinstance(f, bytes))
    assert struct.unpack(">II", png[:8]) == (1, 2) and png[8:16] == b"\x89PNG\r\n\x1a\n"
    old.close()

    new = WS(standin, client_id=str(uuid.uuid4()), feature_flags={"supports_preview_metadata": True})
    flags = new.wait_for(lambda f: isinstance(f, dict) and f["type"] == "feature_flags")
    assert flags["data"]["supports_preview_metadata"] is True
    prompt_id, frames = run(standin, new, prompt)
    sequence = types(frames)
    assert sequence.count("binary:4") == 2 and "binary:1" not in sequence
    first = sequence.index("binary:4")
    assert sequence[first + 1] == "progress", "type 4 comes before its progress message"
    frame = next(f for f in frames if isinstance(f, bytes))
    (length,) = struct.unpack(">I", frame[4:8])
    meta = json.loads(frame[8 : 8 + length])
    assert meta == {
        "node_id": "2",
        "prompt_id": prompt_id,
        "display_node_id": "2",
        "parent_node_id": None,
        "real_node_id": "2",
        "image_type": "image/png",
    }
    assert frame[8 + length : 16 + length] == b"\x89PNG\r\n\x1a\n"
    assert "execution_cached" in sequence and next(
        f for f in frames if isinstance(f, dict) and f["type"] == "execution_cached"
    )["data"]["nodes"] == ["1"]
    new.close()


def test_project_media_workflows(standin, ws):
    """The model-free workflows in test_resources/workflows, with the output shapes seen on a real ComfyUI."""
    project = REPO / "test_resources" / "workflows"
    if not (project / "video.json").exists():
        pytest.skip("test_resources/workflows is not there yet")
    tone = (project / "tone.wav").read_bytes()
    uploaded = standin.http.post(f"{standin.url}/upload/image", files={"image": ("tone.wav", tone, "audio/wav")})
    assert uploaded.json() == {"name": "tone.wav", "subfolder": "", "type": "input"}

    _, frames = run(standin, ws, json.loads((project / "video.json").read_text()))
    video = next(f for f in frames if f["type"] == "executed")["data"]["output"]
    assert video["animated"] == [True] and video["images"][0]["subfolder"] == "wf"
    name = video["images"][0]["filename"]
    assert name.startswith("video_") and name.endswith("_.mp4")
    view = standin.http.get(f"{standin.url}/view", params=video["images"][0])
    assert view.headers["Content-Type"] == "video/mp4" and view.content[4:12] == b"ftypisom"

    _, frames = run(standin, ws, json.loads((project / "audio.json").read_text()))
    audio = next(f for f in frames if f["type"] == "executed")["data"]["output"]
    (entry,) = audio["audio"]
    assert entry["subfolder"] == "wf" and entry["type"] == "output"
    assert entry["filename"].startswith("audio_") and entry["filename"].endswith(".flac")
    assert not entry["filename"].endswith("_.flac"), "audio names have no trailing underscore"
    view = standin.http.get(f"{standin.url}/view", params=entry)
    assert view.headers["Content-Type"] == "audio/flac" and view.content[:4] == b"fLaC"

    prompt = {
        "1": {"class_type": "EmptyAudio", "inputs": {"duration": 0.5, "sample_rate": 8000, "channels": 2}},
        "2": {"class_type": "PreviewAudio", "inputs": {"audio": ["1", 0]}},
    }
    _, frames = run(standin, ws, prompt)
    (preview,) = next(f for f in frames if f["type"] == "executed")["data"]["output"]["audio"]
    assert preview["type"] == "temp" and preview["filename"].startswith("ComfyUI_temp_")
    assert (standin.temp / preview["filename"]).read_bytes()[:4] == b"fLaC"

    for name, key in (("animated_webp", ".webp"), ("animated_png", ".png")):
        _, frames = run(standin, ws, json.loads((project / f"{name}.json").read_text()))
        output = next(f for f in frames if f["type"] == "executed")["data"]["output"]
        assert output["animated"] == [True] and output["images"][0]["filename"].endswith(f"_{key}")
