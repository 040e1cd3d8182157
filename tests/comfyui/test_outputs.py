import io

import pytest
from PIL import Image

from handler.comfyui.client import BinaryImage
from handler.comfyui.outputs import FolderOutputs, OutputOptions, collect
from handler.errors import BadRequest, ServiceError


def png_bytes(mode="RGBA", size=(4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else 0).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def folders(tmp_path):
    paths = {kind: tmp_path / kind for kind in ("input", "output", "temp")}
    for path in paths.values():
        path.mkdir()
    (paths["output"] / "rid").mkdir()
    (paths["output"] / "rid" / "save_00001_.png").write_bytes(png_bytes())
    (paths["output"] / "rid" / "clip_00001_.mp4").write_bytes(b"\0\0\0\x18ftypisom")
    (paths["output"] / "rid" / "tone_00001.flac").write_bytes(b"fLaC")
    (paths["temp"] / "ComfyUI_temp_abcde_00001_.png").write_bytes(png_bytes())
    return paths


OUTPUTS = {
    "9": {"images": [{"filename": "save_00001_.png", "subfolder": "rid", "type": "output"}]},
    "10": {"images": [{"filename": "clip_00001_.mp4", "subfolder": "rid", "type": "output"}], "animated": [True]},
    "11": {"audio": [{"filename": "tone_00001.flac", "subfolder": "rid", "type": "output"}]},
    "12": {"images": [{"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"}]},
    "13": {"text": ["320"]},
}


def test_every_kind_is_collected_with_its_content_type(folders):
    files = collect(OUTPUTS, [BinaryImage("5", "image/png", png_bytes())], FolderOutputs(folders), OutputOptions())
    kinds = {(f.node_id, f.output_key, f.type, f.content_type) for f in files}
    assert kinds == {
        ("9", "images", "output", "image/png"),
        ("10", "images", "output", "video/mp4"),
        ("11", "audio", "output", "audio/flac"),
        ("12", "images", "temp", "image/png"),
        ("5", "images", "websocket", "image/png"),
    }


def test_still_images_are_reencoded_but_videos_are_not(folders):
    files = collect(OUTPUTS, [], FolderOutputs(folders), OutputOptions("jpeg", 80))
    by_node = {f.node_id: f for f in files}
    assert by_node["9"].content_type == "image/jpeg" and by_node["9"].filename == "save_00001_.jpg"
    assert by_node["9"].data[:2] == b"\xff\xd8"
    assert by_node["10"].content_type == "video/mp4"
    webp = collect({"9": OUTPUTS["9"]}, [], FolderOutputs(folders), OutputOptions("webp", 50))[0]
    assert webp.data[:4] == b"RIFF" and webp.content_type == "image/webp"


def test_a_missing_file_is_an_error_not_a_silent_drop(folders):
    outputs = {"1": {"images": [{"filename": "gone.png", "subfolder": "", "type": "output"}]}}
    with pytest.raises(ServiceError, match="missing"):
        collect(outputs, [], FolderOutputs(folders), OutputOptions())


@pytest.mark.parametrize(
    ("subfolder", "filename"),
    [("", "../../etc/passwd"), ("../input", "x.png"), ("rid/../..", "x.png"), ("", "/etc/passwd"), ("", ".")],
)
def test_a_reference_outside_the_folders_is_refused(folders, subfolder, filename):
    outputs = {"1": {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}}
    with pytest.raises(ServiceError, match="outside"):
        collect(outputs, [], FolderOutputs(folders), OutputOptions())


def test_discard_removes_the_request_folder_and_listed_temp_files(folders):
    source = FolderOutputs(folders)
    source.discard("rid", [OUTPUTS["12"]["images"][0]])
    assert not (folders["output"] / "rid").exists()
    assert not (folders["temp"] / "ComfyUI_temp_abcde_00001_.png").exists()


@pytest.mark.parametrize("raw", [{"format": "bmp"}, {"quality": 101}, 5])
def test_bad_output_options(raw):
    with pytest.raises(BadRequest):
        OutputOptions.parse(raw)


def test_store_keys_keep_names_and_tell_apart_two_files_of_one_name():
    from handler.comfyui.outputs import OutputFile, store_keys

    def file(node: str, name: str, subfolder: str = "") -> OutputFile:
        return OutputFile(node, name, subfolder, "output", "images", "image/png", b"")

    files = [file("9", "a.png", "rid"), file("12", "a.png", "rid"), file("5", "b.png")]
    assert store_keys("outputs/j/t/", files) == ["outputs/j/t/rid/a.png", "outputs/j/t/12-2-a.png", "outputs/j/t/b.png"]
