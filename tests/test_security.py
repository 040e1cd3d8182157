"""Attacks on isolation between requests and on input handling, replayed against the running service.

Each test sends what an attacker would and checks the answer: a clear 4xx (never a 500), no other
request's folder name, no path of this machine, a bounded size, and a ComfyUI child that holds
none of the service's secrets. Every answer goes through `answer()`, which checks the path and
folder-name rules on all of them.

Kept elsewhere and not repeated here: file names that leave a request's folder
(`tests/test_predict_request.py::test_bad_bodies_say_what_is_wrong`) and the SSRF rules
(`tests/net/test_urlguard.py`); `test_traversal_and_ssrf_are_refused_by_the_service` replays one of each
over HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.fixtures.comfy import ServiceProcess, start_service

FOLDER_NAME = re.compile(r"^r[0-9a-f]{32}$")
ANY_SECRET_NAME = re.compile(r"r[0-9a-f]{32}|[0-9a-f]{32}")


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def save(prefix: str = "sec/out", image_node: str = "1") -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [image_node, 0], "filename_prefix": prefix}}


def empty_image() -> dict:
    return {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": int.from_bytes(os.urandom(3), "big")},
    }


def server_paths(service: ServiceProcess) -> list[str]:
    state = service.state_dir
    return sorted({str(state), str(state.resolve()), str(state.resolve() / "comfyui")})


def answer(service: ServiceProcess, body=None, *, data: bytes | None = None, timeout: float = 120) -> requests.Response:
    """POST /predict; every answer is checked: no server path, no private folder name, no 500."""
    if data is None:
        response = service.post("/predict", json=body, timeout=timeout)
    else:
        response = service.post("/predict", data=data, headers={"Content-Type": "application/json"}, timeout=timeout)
    text = response.text
    for path in server_paths(service):
        assert path not in text, f"the answer names a server path: {text[:2000]}"
    if response.status_code == 200:  # base64 may hold any 32 hex digits: look at the rest
        document = response.json()
        for image in document.get("images", []):
            image.pop("image", None)
        text = json.dumps(document)
    assert not ANY_SECRET_NAME.search(text), f"the answer names a folder: {text[:2000]}"
    assert response.status_code < 500 or response.json()["error"]["code"] == "execution_error", text[:2000]
    return response


def refused(response: requests.Response, code: str = "bad_request", *, contains: str = "") -> dict:
    assert response.status_code == 400, response.text[:2000]
    error = response.json()["error"]
    assert error["code"] == code, error
    assert contains in error["message"], error
    return error


def input_folders(service: ServiceProcess) -> list[str]:
    folder = service.state_dir / "comfyui" / "input"
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())


# --- 1. request folder names ------------------------------------------------------------------


def test_live_requests_folders_are_secret_and_never_listed(service: ServiceProcess):
    gate = service.gate()
    victim_body = {"workflow": gate.workflow(), "images": [{"name": "private.png", "image": png_b64()}]}
    victim: dict = {}
    thread = threading.Thread(target=lambda: victim.update(r=answer(service, victim_body)))
    thread.start()
    try:
        gate.wait_entered()
        folders = [name for name in input_folders(service) if FOLDER_NAME.match(name)]
        assert folders, f"the victim's inputs are not in a folder of the secret shape: {input_folders(service)}"
        # The attack: a dataset loader with a folder that is not there makes ComfyUI list them all.
        attack = {
            "workflow": {
                "1": {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": "nope"}},
                "2": save(image_node="1"),
            }
        }
        response = answer(service, attack)
        if (
            response.status_code == 400
            and "LoadImageDataSetFromFolder" in response.text
            and "not found" in response.text
        ):
            pytest.skip("this ComfyUI has no LoadImageDataSetFromFolder")
        for name in folders:
            assert name not in response.text
        if "ALLOW_FOLDER_NODES" in response.text:  # the node policy refuses it before ComfyUI lists anything
            refused(response)
        else:
            error = refused(response, "workflow_invalid")
            assert "<request>" in json.dumps(error), error  # the listing was there, and scrubbed
    finally:
        gate.release()
        thread.join(120)
    assert victim["r"].status_code == 200, victim["r"].text[:2000]


def test_an_async_jobs_folder_is_not_its_job_id(service: ServiceProcess):
    gate = service.gate()
    body = {"workflow": gate.workflow(), "images": [{"name": "private.png", "image": png_b64()}], "async": True}
    before = set(input_folders(service))  # ComfyUI's own (a real one makes 3d/)
    response = service.post("/predict", json=body)
    assert response.status_code == 202, response.text[:2000]
    job_id = response.json()["job_id"]
    try:
        gate.wait_entered()
        folders = sorted(set(input_folders(service)) - before)
        assert folders and all(FOLDER_NAME.match(name) for name in folders), folders
        assert not any(job_id.replace("-", "") in name.replace("-", "") for name in folders), (job_id, folders)
    finally:
        gate.release()
    status = service.get(f"/status/{job_id}").json()
    for path in server_paths(service):
        assert path not in json.dumps(status)


def test_an_execution_error_names_neither_the_folder_nor_the_path(service: ServiceProcess):
    body = {
        "workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}}, "2": save()},
        "images": [{"name": "broken.png", "image": base64.b64encode(b"not an image at all").decode()}],
    }
    response = answer(service, body)
    assert response.status_code == 500, response.text[:2000]
    error = response.json()["error"]
    assert error["code"] == "execution_error"
    assert "broken.png" in error["message"]  # what the caller named is still there


# --- 3. shared temp and output folders -------------------------------------------------------


@pytest.mark.parametrize(
    "reference", ["ComfyUI_temp_abcde_00001_.png [temp]", "x_00001_.png [output]", "x.png [OUTPUT] "]
)
def test_references_into_the_shared_temp_and_output_folders_are_refused(service: ServiceProcess, reference: str):
    body = {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": reference}}, "2": save()}}
    refused(answer(service, body), contains="shared output or temp folder")


def test_previews_of_one_request_are_not_readable_by_the_next(service: ServiceProcess):
    preview = {"workflow": {"1": empty_image(), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}}
    response = answer(service, preview)
    assert response.status_code == 200, response.text[:2000]
    temp = [image for image in response.json()["images"] if image["type"] == "temp"]
    assert temp, response.json()["images"]
    name = temp[0]["filename"]
    steal = {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": f"{name} [temp]"}}, "2": save()}}
    refused(answer(service, steal), contains="shared output or temp folder")


# --- 4. filename_prefix ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["../x", "a/../../x", "../../../../tmp/x", "/../x"])
def test_a_prefix_that_leaves_the_request_folder_is_refused(service: ServiceProcess, prefix: str):
    output = service.state_dir / "comfyui" / "output"
    before = set(output.iterdir())
    body = {"workflow": {"1": empty_image(), "2": save(prefix)}}
    refused(answer(service, body), contains="filename_prefix")
    assert set(output.iterdir()) == before


def test_a_prefix_that_stays_inside_still_works(service: ServiceProcess):
    body = {"workflow": {"1": empty_image(), "2": save("a/../b/out")}}
    response = answer(service, body)
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["images"][0]["subfolder"] == "b"


# --- 5. non-finite numbers -------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(service: ServiceProcess, raw: str):
    workflow = json.dumps({"1": empty_image(), "2": save()})
    as_timeout = f'{{"workflow": {workflow}, "timeout": {raw}}}'.encode()
    refused(answer(service, data=as_timeout, timeout=10))
    in_graph = workflow.replace('"width": 8', f'"width": {raw}')
    refused(answer(service, data=f'{{"workflow": {in_graph}}}'.encode(), timeout=10))


# --- 6. what used to be 500s -----------------------------------------------------------------


def chain(length: int) -> dict:
    workflow = {"0": empty_image()}
    for index in range(1, length):
        workflow[str(index)] = {"class_type": "ImageInvert", "inputs": {"image": [str(index - 1), 0]}}
    workflow["out"] = save(image_node=str(length - 1))
    return workflow


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def bad_body(what: str) -> bytes:
    small = {"1": empty_image(), "2": save()}
    if what == "JSON nested 5,000 deep":
        return b'{"workflow": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    if what == "a node input nested 900 deep":
        small["1"]["inputs"]["extra"] = nested(900)
        return json.dumps({"workflow": small}).encode()
    if what == "an async chain of 1,200 nodes":
        return json.dumps({"workflow": chain(1200), "async": True}).encode()
    if what == "a sync chain of 1,200 nodes":
        return json.dumps({"workflow": chain(1200)}).encode()
    if what == "an image name over 255 bytes":
        return json.dumps({"workflow": small, "images": [{"name": "é" * 150 + ".png", "image": png_b64()}]}).encode()
    if what == "a file and a folder of one name":
        return json.dumps(
            {"workflow": small, "images": [{"name": "a", "image": png_b64()}, {"name": "a/b.png", "image": png_b64()}]}
        ).encode()
    assert what == "a lone surrogate in an image name"
    return json.dumps({"workflow": small, "images": [{"name": "\ud800.png", "image": png_b64()}]}).encode()


@pytest.mark.parametrize(
    "what",
    [
        "JSON nested 5,000 deep",
        "a node input nested 900 deep",
        "an async chain of 1,200 nodes",
        "a sync chain of 1,200 nodes",
        "an image name over 255 bytes",
        "a file and a folder of one name",
        "a lone surrogate in an image name",
    ],
)
def test_bad_input_is_a_clear_400_and_one_log_line_at_most(service: ServiceProcess, what: str):
    lines_before = len(service.log().splitlines())
    response = answer(service, data=bad_body(what), timeout=60)
    assert response.status_code == 400, f"{what}: {response.status_code} {response.text[:500]}"
    assert response.json()["error"]["message"]
    logged = service.log().splitlines()[lines_before:]
    assert len(logged) <= 1, f"{what} logged {len(logged)} lines: {logged[:5]}"


# --- 7. bounded answers, no paths ------------------------------------------------------------


def test_a_huge_prefix_or_name_makes_a_small_answer(service: ServiceProcess):
    huge = "p" * 1_000_000
    response = answer(service, {"workflow": {"1": empty_image(), "2": save(huge)}})
    refused(response, contains="filename_prefix")
    assert len(response.content) < 20_000, len(response.content)
    response = answer(
        service,
        {"workflow": {"1": empty_image(), "2": save()}, "images": [{"name": huge + ".png", "image": png_b64()}]},
    )
    refused(response)
    assert len(response.content) < 20_000, len(response.content)


def test_traversal_and_ssrf_are_refused_by_the_service(service: ServiceProcess):
    workflow = {"1": empty_image(), "2": save()}
    refused(
        answer(service, {"workflow": workflow, "images": [{"name": "../in.png", "image": png_b64()}]}),
        contains="not allowed",
    )
    refused(
        answer(
            service,
            {"workflow": workflow, "images": [{"name": "in.png", "image": "http://169.254.169.254/latest/meta-data"}]},
        ),
        "unsafe_url",
    )


def test_output_names_no_file_could_have_are_a_404_not_a_500(service: ServiceProcess):
    # Found by the schema fuzzer: a name longer than the filesystem allows made stat() raise.
    for path in (
        "/outputs/" + "é" * 200 + "/x.png",
        "/outputs/job/" + "\U000f8511" * 100 + ".png",
        "/outputs/job/" + "a" * 300 + "/b.png",
    ):
        response = service.get(path)
        assert response.status_code == 404, (path[:40], response.text)
        assert response.json()["error"]["code"] == "not_found"


# --- 11. ComfyUI's environment ---------------------------------------------------------------

SECRETS = {
    "WEBHOOK_SECRET": "whsec-do-not-leak-1",
    "HF_TOKEN": "hf_do_not_leak_2",
    "GOOGLE_APPLICATION_CREDENTIALS": "/do/not/leak/3.json",
    "SOME_VENDOR_API_KEY": "do-not-leak-4",
    "DATABASE_PASSWORD": "do-not-leak-5",
}


def test_comfyui_inherits_none_of_the_services_secrets(comfy_target, tmp_path: Path):
    service = start_service(comfy_target, tmp_path / "service", **SECRETS)
    try:
        pid = service.comfy_pid()
        assert pid, "no ComfyUI child found"
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        assert "PATH" in names  # the allowlist, not an empty environment
        for name, value in SECRETS.items():
            assert name not in names
            assert not any(value.encode() in entry for entry in environ), name
        # The service itself still has them (it signs webhooks with one).
        own = Path(f"/proc/{service.process.pid}/environ").read_bytes()
        assert b"WEBHOOK_SECRET=" in own
        # ... and shows them nowhere: not in answers (settings views included), not in its log.
        job = service.post("/predict", json={"workflow": {"1": empty_image(), "2": save()}, "async": True})
        answers = [
            service.post("/predict", json={"workflow": {"1": empty_image(), "2": save()}}),
            service.post("/predict", json={"workflow": {"1": {"class_type": "Nope", "inputs": {}}}}),
            job,
            service.get(f"/status/{job.json()['job_id']}"),
            service.get("/"),
            service.get("/system"),
            service.get("/metrics"),
            service.get("/dashboard/data"),
        ]
        assert [r.status_code for r in answers[:3]] == [200, 400, 202]
        for name, value in SECRETS.items():
            assert not any(value in r.text for r in answers), name
            assert value not in service.log(), name
    finally:
        service.stop()
