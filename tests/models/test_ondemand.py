"""Models named by URL in a workflow, through the service: which inputs count as model inputs,
the URL forms, the 4xx answers before and after fetching, the cache's routes, and (on a real
ComfyUI, skipped without one) a txt2img whose checkpoint and LoRA are URLs, run twice, fetched once.

On the stand-in, whose model lists stay empty, a fetched model reaches ComfyUI's validation by its
cached name: its `value_not_in_list` error names the cache's file, never the URL."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from handler.config import Settings
from handler.errors import BadRequest, UnsafeURL
from handler.models.refs import ModelRef, PickledModelRefused, check_model_urls, find_uses, hf_to_https, parse_ref
from tests.fixtures.comfy import ComfyTarget, ServiceProcess
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.receiver import SECRET, Receiver
from tests.fixtures.sections import sections

SHA = "ab" * 32


def loader(value: object, class_type: str = "CheckpointLoaderSimple", name: str = "ckpt_name") -> dict:
    return {"1": {"class_type": class_type, "inputs": {name: value}}}


def shown(value: object) -> dict:
    """A loader with an output node after it, so that ComfyUI validates the loader's input."""
    return {**loader(value), "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


# --- which inputs, which forms --------------------------------------------------------------------


def test_model_inputs_are_found_by_node_and_input() -> None:
    workflow = {
        **loader("https://h.example/a/model.safetensors"),
        "2": {
            "class_type": "LoraLoader",
            "inputs": {"lora_name": {"url": "gs://b/x/style.safetensors", "sha256": SHA}},
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "https://not.a.model/x.safetensors"}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": "local.safetensors"}},
        "5": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "hf://o/r@v1/up/4x.pth"}},
    }
    uses = {(u.node_id, u.input): u.ref for u in find_uses(workflow, None)}
    assert set(uses) == {("1", "ckpt_name"), ("2", "lora_name"), ("5", "model_name")}
    assert uses[("1", "ckpt_name")].folder == "checkpoints" and uses[("1", "ckpt_name")].filename == "model.safetensors"
    assert uses[("2", "lora_name")] == ModelRef(
        url="gs://b/x/style.safetensors", folder="loras", filename="style.safetensors", sha256=SHA
    )
    assert uses[("5", "model_name")].url == "https://huggingface.co/o/r/resolve/v1/up/4x.pth"
    assert uses[("5", "model_name")].folder == "upscale_models"


def test_a_custom_loader_counts_when_the_catalogue_lists_files_for_its_input() -> None:
    workflow = loader("https://h.example/l.safetensors", class_type="FancyLoraLoader", name="lora_name")
    assert find_uses(workflow, None) == []  # unknown node, no catalogue: left to ComfyUI
    info = {"FancyLoraLoader": {"input": {"required": {"lora_name": [["a.safetensors"], {}]}}}}
    assert [u.ref.folder for u in find_uses(workflow, info)] == ["loras"]
    info_string = {"FancyLoraLoader": {"input": {"required": {"lora_name": ["STRING", {}]}}}}
    assert find_uses(workflow, info_string) == []


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"url": "https://h.example/m.safetensors", "sha256": "xyz"}, "64 hexadecimal"),
        ({"url": "https://h.example/m.safetensors", "size": 3}, "unknown fields"),
        ({"url": "ftp://h.example/m.safetensors"}, "must start with"),
        ("https://h.example/download?id=3", "model file name"),
        ("hf://only-owner/file.safetensors", "hf://owner/repo"),
    ],
)
def test_bad_model_references_are_400s(value: object, says: str) -> None:
    with pytest.raises(BadRequest) as caught:
        find_uses(loader(value), None)
    assert says in caught.value.message


def test_an_object_where_no_model_loads_is_refused_and_a_filename_names_the_file() -> None:
    with pytest.raises(BadRequest, match="loads no model"):
        find_uses({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": {"url": "https://h.example/a.pt"}}}}, None)
    ref = parse_ref({"url": "https://h.example/download?id=3", "filename": "../My LoRA.safetensors"}, "loras", "x")
    assert ref.filename == "My_LoRA.safetensors"
    assert hf_to_https("hf://o/r/a b.safetensors") == "https://huggingface.co/o/r/resolve/main/a%20b.safetensors"


def test_the_checks_before_fetching_apply_the_url_rules() -> None:
    with pytest.raises(UnsafeURL):
        check_model_urls(
            loader("http://169.254.169.254/m.safetensors"), **sections(Settings(), "models", "urls", "cloud")
        )
    with pytest.raises(UnsafeURL, match="not allowlisted"):
        check_model_urls(loader("gs://private-bucket/m.safetensors"), **sections(Settings(), "models", "urls", "cloud"))
    with pytest.raises(BadRequest, match="does not fetch models"):
        check_model_urls(
            loader("https://h.example/m.safetensors"), **sections(Settings(model_urls=False), "models", "urls", "cloud")
        )
    check_model_urls(
        loader("gs://models/m.safetensors"),
        **sections(Settings(url_allowlist=("gs://models",)), "models", "urls", "cloud"),
    )


@pytest.mark.parametrize("name", ["m.ckpt", "m.pt", "m.pth", "m.bin", "m.pkl", "m.pt2"])
def test_pickled_model_files_by_url_are_refused_unless_allowed(name: str) -> None:
    local = Settings(url_allowlist=("127.0.0.1",))
    workflow = loader(f"http://127.0.0.1/{name}")
    with pytest.raises(PickledModelRefused, match="pickled model format") as refused:
        check_model_urls(workflow, **sections(local, "models", "urls", "cloud"))
    assert refused.value.status_code == 400 and refused.value.to_dict()["error"]["code"] == "model_format_refused"
    allowing = Settings(url_allowlist=("127.0.0.1",), model_urls_safetensors_only=False)
    check_model_urls(workflow, **sections(allowing, "models", "urls", "cloud"))
    for allowed in ("m.safetensors", "m.sft", "m.gguf"):
        check_model_urls(loader(f"http://127.0.0.1/{allowed}"), **sections(local, "models", "urls", "cloud"))
    # The name the file gets in the cache decides how ComfyUI loads it, not the URL's.
    with pytest.raises(PickledModelRefused):
        check_model_urls(
            loader({"url": "http://127.0.0.1/m.safetensors", "filename": name}),
            **sections(local, "models", "urls", "cloud"),
        )


# --- through the service on the stand-in ------------------------------------------------------------


@pytest.fixture
def od_service(tmp_path: Path) -> Iterator[ServiceProcess]:
    import sys

    from tests.fixtures.comfy import STANDIN

    target = ComfyTarget("standin", STANDIN, sys.executable, "")
    env = {
        "URL_ALLOWLIST": "127.0.0.1",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_BACKOFF_S": "0.2",
        "MODEL_CACHE_BYTES": str(1024 * 1024),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    service = ServiceProcess(target, tmp_path / "state", env=env).start().wait_ready()
    yield service
    service.stop()


def test_a_model_url_is_fetched_once_and_comfyui_sees_the_cached_name(
    od_service: ServiceProcess, model_server: ModelServer, tmp_path: Path
) -> None:
    data = b"weights" * 1000
    model_server.files["m.safetensors"] = data
    url = model_server.url("plain", "m.safetensors")
    for _ in range(2):
        answer = od_service.post(
            "/predict", json={"workflow": shown({"url": url, "sha256": hashlib.sha256(data).hexdigest()})}
        )
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "workflow_invalid", answer.text
        text = json.dumps(answer.json())
        assert "m.safetensors" in text and "127.0.0.1" not in text and str(tmp_path) not in text
    assert model_server.requests["/plain/m.safetensors"] == 1
    listing = od_service.get("/models").json()["cache"]
    (entry,) = listing["files"]
    assert (
        entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["verified"] and entry["folder"] == "checkpoints"
    )
    assert entry["source"] == url and listing["budget_bytes"] == 1024 * 1024
    assert (tmp_path / "cache" / "checkpoints" / entry["file"]).read_bytes() == data
    assert entry["file"] in text  # what ComfyUI was asked to load


@pytest.mark.parametrize(
    ("path", "size", "sha", "status", "code"),
    [
        ("/plain/missing.safetensors", 0, None, 400, "model_not_found"),
        ("/plain/m.safetensors", 100, "0" * 64, 400, "checksum_mismatch"),
        ("/plain/big.safetensors", 2 * 1024 * 1024, None, 413, "model_too_large"),
        ("/nolength/big.safetensors", 2 * 1024 * 1024, None, 413, "model_too_large"),
    ],
)
def test_models_that_cannot_be_used_get_clear_4xx_and_leave_nothing(
    od_service: ServiceProcess,
    model_server: ModelServer,
    tmp_path: Path,
    path: str,
    size: int,
    sha: str | None,
    status: int,
    code: str,
) -> None:
    if size:
        model_server.files[path.rsplit("/", 1)[1]] = b"x" * size
    value = {"url": f"http://127.0.0.1:{model_server.port}{path}", **({"sha256": sha} if sha else {})}
    answer = od_service.post("/predict", json={"workflow": loader(value)})
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
    assert od_service.get("/models").json()["cache"]["files"] == []
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != "index.json"]
    assert left == []


def test_a_refused_url_is_never_fetched(od_service: ServiceProcess) -> None:
    answer = od_service.post("/predict", json={"workflow": loader("http://10.1.2.3/m.safetensors")})
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "unsafe_url"), answer.text
    for mode in ("plain", "nolength"):  # a pickled file by URL: a 400 before anything is asked
        pickled = f"http://127.0.0.1:9/{mode}/m.ckpt"
        answer = od_service.post("/predict", json={"workflow": loader(pickled)})
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "model_format_refused"), answer.text
        fetch = od_service.post("/models/fetch", json={"url": pickled, "folder": "checkpoints"})
        assert (fetch.status_code, fetch.json()["error"]["code"]) == (400, "model_format_refused"), fetch.text


def test_a_civitai_model_is_a_400_naming_the_setting_unless_the_operator_allows_it(
    od_service: ServiceProcess,
) -> None:
    for value in ("civitai://4242", "https://civitai.com/api/download/models/4242"):
        answer = od_service.post("/predict", json={"workflow": loader(value)})
        assert answer.status_code == 400 and "CIVITAI_MODELS" in answer.json()["error"]["message"], answer.text
        fetch = od_service.post("/models/fetch", json={"url": value, "folder": "loras"})
        assert fetch.status_code == 400 and "CIVITAI_MODELS" in fetch.json()["error"]["message"], fetch.text


def test_fetch_ahead_list_and_evict(od_service: ServiceProcess, model_server: ModelServer) -> None:
    model_server.files["l.safetensors"] = b"lora" * 100
    url = model_server.url("plain", "l.safetensors")
    fetched = od_service.post("/models/fetch", json={"url": url, "folder": "loras"})
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["fetched"] and fetched.json()["size"] == 400
    again = od_service.post("/models/fetch", json={"url": url, "folder": "loras"})
    assert not again.json()["fetched"] and model_server.requests["/plain/l.safetensors"] == 1
    bad = od_service.post("/models/fetch", json={"url": url, "folder": "../etc"})
    assert bad.status_code == 400
    # A folder that is not a string (found by the schema fuzzer: it was a 500).
    odd = od_service.post("/models/fetch", json={"url": "", "folder": {}, "sha256": "", "filename": ""})
    assert odd.status_code == 400 and odd.json()["error"]["code"] == "bad_request", odd.text
    key = fetched.json()["key"]
    assert requests.delete(f"{od_service.url}/models/cache/{key}", timeout=30).status_code == 200
    assert od_service.get("/models").json()["cache"]["files"] == []
    assert requests.delete(f"{od_service.url}/models/cache/{key}", timeout=30).status_code == 404


def test_an_async_job_whose_model_cannot_be_fetched_fails_with_the_reason(
    od_service: ServiceProcess, model_server: ModelServer
) -> None:
    refused = od_service.post("/predict", json={"workflow": shown("http://10.1.2.3/m.safetensors"), "async": True})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsafe_url"  # checked on submit
    receiver = Receiver()
    try:
        url = model_server.url("plain", "gone.safetensors")
        body = {"workflow": shown(url), "async": True, "webhook": {"url": receiver.url}}
        accepted = od_service.post("/predict", json=body)
        assert accepted.status_code == 202, accepted.text  # fetching is the worker's part
        job_id = accepted.json()["job_id"]
        deadline = time.monotonic() + 60
        while True:
            job = od_service.get(f"/status/{job_id}").json()
            if job["state"] == "failed" and job.get("webhook", {}).get("delivered_at"):
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["error"]["code"] == "model_not_found" and job["attempts"] == 1, job
        (delivery,) = receiver.received
        assert delivery["verified"] and delivery["payload"]["type"] == "job.failed"
        assert "model_not_found" in json.dumps(delivery["payload"])
    finally:
        receiver.close()


def test_a_template_string_parameter_may_name_the_checkpoint_by_url(
    od_service: ServiceProcess, model_server: ModelServer
) -> None:
    model_server.files["t.safetensors"] = b"template weights" * 100
    url = model_server.url("plain", "t.safetensors")
    body = {"workflow_id": "sd15-txt2img", "params": {"prompt": "a lighthouse", "checkpoint": url}}
    answer = od_service.post("/predict", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "workflow_invalid", answer.text
    (entry,) = od_service.get("/models").json()["cache"]["files"]
    assert entry["source"] == url and entry["file"] in answer.text  # ComfyUI was asked for the cached file
    assert model_server.requests["/plain/t.safetensors"] == 1


# --- progress while models download, and downloads resumed after a kill --------------------------------


def events(response: requests.Response) -> Iterator[tuple[str, dict]]:
    kind = ""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


def held_model(server: ModelServer, name: str, size: int = 600 * 1024) -> tuple[str, bytes]:
    """A model whose server sends half of it, then waits for `server.release`."""
    data = bytes(i % 251 for i in range(size))
    server.files[name] = data
    return server.url("held", name), data


def test_a_predict_stream_shows_its_models_downloading(od_service: ServiceProcess, model_server: ModelServer) -> None:
    url, data = held_model(model_server, "sse.safetensors")
    seen: list[tuple[str, dict]] = []
    with requests.post(
        f"{od_service.url}/predict",
        json={"workflow": shown(url)},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=60,
    ) as answer:
        assert answer.status_code == 200, answer.text
        for kind, data_ in events(answer):
            seen.append((kind, data_))
            if kind == "download" and data_["bytes_done"] >= len(data) // 2:
                model_server.release.set()  # seen half-way: let the rest come
    kinds = [kind for kind, _ in seen]
    downloads = [d for kind, d in seen if kind == "download"]
    assert kinds[0] == "download" and kinds[-1] == "error", kinds  # the stand-in lists no such model
    assert "queued" not in kinds[: len(downloads)], kinds  # all of them before the prompt went to ComfyUI
    half = next(d for d in downloads if d["bytes_done"] >= len(data) // 2)
    assert half["stage"] == "downloading models" and half["file"] == "sse.safetensors"
    assert half["bytes_total"] == len(data) and half["percent"] < 100 and half["source"] == url
    assert downloads[-1]["bytes_done"] == len(data) and len(downloads) <= 10


def test_status_and_dashboard_show_a_jobs_models_downloading(
    od_service: ServiceProcess, model_server: ModelServer
) -> None:
    url, data = held_model(model_server, "job.safetensors")
    accepted = od_service.post("/predict", json={"workflow": shown(url), "async": True})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    deadline = time.monotonic() + 60
    while True:
        job = od_service.get(f"/status/{job_id}").json()
        progress = job.get("progress") or {}
        if progress.get("stage") == "downloading models" and progress["bytes_done"] >= len(data) // 2:
            break
        assert time.monotonic() < deadline and job["state"] in ("queued", "placed"), job
        time.sleep(0.05)
    assert job["state"] == "placed"  # claimed by a run; its prompt goes to ComfyUI once the model is here
    assert progress["file"] == "job.safetensors" and progress["bytes_total"] == len(data), progress
    assert progress["folder"] == "checkpoints" and progress["model"] == progress["models"] == 1
    (row,) = [r for r in od_service.get("/dashboard/data").json()["running"] if r["job_id"] == job_id]
    assert row["state"] == "downloading" and row["download"]["file"] == "job.safetensors", row
    assert row["download"]["bytes_total"] == len(data)
    model_server.release.set()
    while od_service.get(f"/status/{job_id}").json()["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not [r for r in od_service.get("/dashboard/data").json()["running"] if r["job_id"] == job_id]


def test_a_download_killed_with_the_service_resumes_after_the_restart(
    od_service: ServiceProcess, model_server: ModelServer, tmp_path: Path
) -> None:
    import os
    import signal
    import threading

    url, data = held_model(model_server, "k.safetensors")

    def first_fetch() -> None:
        try:
            od_service.post("/models/fetch", json={"url": url, "folder": "loras"}, timeout=60)
        except requests.RequestException:
            pass  # the service is killed under it

    threading.Thread(target=first_fetch, daemon=True).start()
    partial = tmp_path / "cache" / ".partial"
    deadline = time.monotonic() + 30
    while not (list(partial.glob("*.json")) and sum(p.stat().st_size for p in partial.glob("*.part")) >= 300_000):
        assert time.monotonic() < deadline, od_service.log()[-2000:]
        time.sleep(0.05)
    comfy = od_service.comfy_pid()
    assert od_service.process is not None
    od_service.process.kill()  # SIGKILL: no cleanup of any kind
    od_service.process.wait()
    if comfy is not None:
        os.kill(comfy, signal.SIGKILL)
    (kept,) = [p.stat().st_size for p in partial.glob("*.part")]
    model_server.release.set()
    again = ServiceProcess(od_service.target, tmp_path / "state2", env=od_service.env).start().wait_ready()
    try:
        fetched = again.post("/models/fetch", json={"url": url, "folder": "loras"})
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["sha256"] == hashlib.sha256(data).hexdigest() and fetched.json()["size"] == len(data)
        assert fetched.json()["resumed_from"] == kept
        assert model_server.headers[-1].get("Range") == f"bytes={kept}-"
        assert not list(partial.iterdir())
    finally:
        again.stop()
