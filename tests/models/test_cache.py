"""The model cache against a real HTTP server on loopback: downloads with and without
Content-Length, resumed and restarted ones, checksums, the byte budget before and during a
download, LRU eviction that spares pinned files, one download per URL, and the index across a
restart. Nothing half-written is ever left where ComfyUI looks."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from handler.config import Settings
from handler.errors import Cancelled, Conflict, NotFound, ServiceError, Timeout, UnsafeURL
from handler.models.budget import default_budget, memory_limit_bytes
from handler.models.cache import ChecksumMismatch, ModelCache, ModelCacheBusy, ModelTooLarge
from handler.models.download import ModelFetchFailed, ModelNotFound, _headers
from handler.models.refs import ModelRef
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.sections import sections

LOCAL = Settings(url_allowlist=("127.0.0.1",))
KIB = 1024


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def ref(url: str, folder: str = "checkpoints", sha256: str | None = None, name: str = "m.safetensors") -> ModelRef:
    return ModelRef(url=url, folder=folder, filename=name, sha256=sha256)


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def visible(root: Path) -> list[str]:
    """What ComfyUI could list: every file under the model folders (not the root's own)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith((".", "index"))
    )


def make(root: Path, budget: int = 10 * 1024 * KIB, settings: Settings = LOCAL, **kw: object) -> ModelCache:
    return ModelCache(root=root, budget_bytes=budget, **sections(settings, "urls", "jobs", "cloud", "models"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["plain", "nolength", "redirect"])
def test_a_file_is_fetched_once_verified_and_named_for_comfyui(
    tmp_path: Path, model_server: ModelServer, mode: str
) -> None:
    data = blob(300 * KIB)
    model_server.files["a.safetensors"] = data
    cache = make(tmp_path)
    r = ref(model_server.url(mode, "a.safetensors"), sha256=hashlib.sha256(data).hexdigest())
    got = cache.acquire(r, deadline=soon())
    assert got.fetched and got.entry.verified and got.entry.size == len(data)
    assert (tmp_path / "checkpoints" / got.entry.name).read_bytes() == data
    assert got.entry.name == f"{r.key}/m.safetensors"
    again = cache.acquire(r, deadline=soon())
    assert not again.fetched and again.entry.sha256 == got.entry.sha256
    assert sum(model_server.requests.values()) == (2 if mode == "redirect" else 1)
    assert not list((tmp_path / ".partial").iterdir())


def test_without_a_checksum_the_digest_is_recorded(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(10 * KIB, 3)
    model_server.files["b.safetensors"] = data
    got = make(tmp_path).acquire(ref(model_server.url("plain", "b.safetensors")), deadline=soon())
    assert got.entry.sha256 == hashlib.sha256(data).hexdigest() and not got.entry.verified


def test_a_dropped_connection_resumes_with_a_range(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(500 * KIB, 5)
    model_server.files["c.safetensors"] = data
    got = make(tmp_path).acquire(ref(model_server.url("drop", "c.safetensors")), deadline=soon())
    assert got.resumed == 1 and got.entry.sha256 == hashlib.sha256(data).hexdigest()
    ranges = [h.get("Range") for h in model_server.headers]
    assert ranges == [None, f"bytes={len(data) // 2}-"]
    assert model_server.headers[-1].get("If-Range") == model_server.etag(len(data))  # the first answer's


def test_a_server_that_ignores_the_range_is_read_again_from_the_start(
    tmp_path: Path, model_server: ModelServer
) -> None:
    data = blob(400 * KIB, 9)
    model_server.files["d.safetensors"] = data
    got = make(tmp_path).acquire(ref(model_server.url("droprange", "d.safetensors")), deadline=soon())
    assert got.entry.size == len(data) and got.entry.sha256 == hashlib.sha256(data).hexdigest()


def test_a_checksum_mismatch_keeps_nothing(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["e.safetensors"] = blob(50 * KIB)
    cache = make(tmp_path)
    with pytest.raises(ChecksumMismatch) as caught:
        cache.acquire(ref(model_server.url("plain", "e.safetensors"), sha256="0" * 64), deadline=soon())
    assert caught.value.status_code == 400
    assert visible(tmp_path) == [] and cache.entries() == []
    assert not list((tmp_path / ".partial").iterdir())


def test_a_file_larger_than_the_budget_is_refused_before_its_body(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["big.safetensors"] = blob(200 * KIB)
    cache = make(tmp_path, budget=100 * KIB)
    with pytest.raises(ModelTooLarge) as caught:
        cache.acquire(ref(model_server.url("plain", "big.safetensors")), deadline=soon())
    assert caught.value.status_code == 413 and visible(tmp_path) == []


def test_the_budget_holds_while_a_file_without_length_streams(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["big.safetensors"] = blob(3 * 1024 * KIB)
    cache = make(tmp_path, budget=1024 * KIB)
    with pytest.raises(ModelTooLarge):
        cache.acquire(ref(model_server.url("nolength", "big.safetensors")), deadline=soon())
    assert visible(tmp_path) == [] and not list((tmp_path / ".partial").iterdir())
    assert cache.usage()["downloading_bytes"] == 0


def test_the_least_recently_used_unpinned_file_is_evicted(tmp_path: Path, model_server: ModelServer) -> None:
    for name in "abc":
        model_server.files[f"{name}.safetensors"] = blob(40 * KIB, ord(name))
    cache = make(tmp_path, budget=100 * KIB)
    refs = {name: ref(model_server.url("plain", f"{name}.safetensors"), name=f"{name}.safetensors") for name in "abc"}
    a = cache.acquire(refs["a"], deadline=soon())
    b = cache.acquire(refs["b"], deadline=soon())
    cache.release(b.entry.key)  # a stays pinned (a prompt uses it), b is free though newer
    cache.acquire(refs["c"], deadline=soon())
    assert {e.filename for e in cache.entries()} == {"a.safetensors", "c.safetensors"}
    assert not (tmp_path / "checkpoints" / b.entry.key).exists()
    cache.release(a.entry.key)
    model_server.files["d.safetensors"] = blob(40 * KIB, 1)
    cache.acquire(ref(model_server.url("plain", "d.safetensors"), name="d.safetensors"), deadline=soon())
    assert {e.filename for e in cache.entries()} == {"c.safetensors", "d.safetensors"}  # a was least recent


def test_a_budget_held_by_pinned_files_is_a_503_to_retry(tmp_path: Path, model_server: ModelServer) -> None:
    for name in "ab":
        model_server.files[f"{name}.safetensors"] = blob(60 * KIB, ord(name))
    cache = make(tmp_path, budget=100 * KIB)
    cache.acquire(ref(model_server.url("plain", "a.safetensors"), name="a.safetensors"), deadline=soon())
    with pytest.raises(ModelCacheBusy) as caught:
        cache.acquire(ref(model_server.url("plain", "b.safetensors"), name="b.safetensors"), deadline=soon())
    assert caught.value.status_code == 503 and "Retry-After" in caught.value.headers
    assert len(cache.entries()) == 1


def test_one_download_per_url_and_nothing_visible_until_complete(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(256 * KIB, 4)
    model_server.files["h.safetensors"] = data
    cache = make(tmp_path)
    r = ref(model_server.url("held", "h.safetensors"))
    results: list[object] = []

    def get() -> None:
        results.append(cache.acquire(r, deadline=soon(20)))

    threads = [threading.Thread(target=get) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while not list((tmp_path / ".partial").glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list((tmp_path / ".partial").glob("*.part")) and visible(tmp_path) == []
    model_server.release.set()
    for t in threads:
        t.join(20)
    assert len(results) == 3 and model_server.requests["/held/h.safetensors"] == 1
    assert sorted(x.fetched for x in results) == [False, False, True]


def test_the_index_survives_a_restart_and_strays_are_removed(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(20 * KIB, 8)
    model_server.files["k.safetensors"] = data
    r = ref(model_server.url("plain", "k.safetensors"))
    make(tmp_path).acquire(r, deadline=soon())
    (tmp_path / ".partial" / "0123.part").write_bytes(b"half")
    stray = tmp_path / "loras" / ("ab" * 12)
    stray.mkdir(parents=True)
    (stray / "x.safetensors").write_bytes(b"crash between rename and index")
    again = make(tmp_path)
    assert [e.key for e in again.entries()] == [r.key] and not stray.exists()
    assert not (tmp_path / ".partial").exists() or not list((tmp_path / ".partial").iterdir())
    assert not again.acquire(r, deadline=soon()).fetched
    assert model_server.requests["/plain/k.safetensors"] == 1
    smaller = make(tmp_path, budget=10 * KIB)  # a lowered budget is enforced at start
    assert smaller.entries() == []


def test_not_found_slow_and_refused_urls_leave_nothing(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["s.safetensors"] = blob(64 * 100)
    cache = make(tmp_path)
    with pytest.raises(ModelNotFound):
        cache.acquire(ref(model_server.url("plain", "missing.safetensors")), deadline=soon())
    with pytest.raises(Timeout):
        cache.acquire(ref(model_server.url("slow", "s.safetensors")), deadline=soon(0.5))
    with pytest.raises(UnsafeURL):
        make(tmp_path, settings=Settings()).acquire(ref(model_server.url("plain", "s.safetensors")), deadline=soon())
    with pytest.raises(ModelFetchFailed):  # the HF token goes to huggingface.co only, not here
        make(tmp_path, hf_token="hf_secret").acquire(ref(model_server.url("gated", "s.safetensors")), deadline=soon())
    assert not any("Authorization" in h for h in model_server.headers)
    assert visible(tmp_path) == [] and cache.entries() == []


def test_download_time_is_bounded_by_its_own_limit(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["s.safetensors"] = blob(64 * 100)
    cache = make(tmp_path, download_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(Timeout):
        cache.acquire(ref(model_server.url("slow", "s.safetensors")), deadline=soon(30))
    assert time.monotonic() - started < 3


def test_evicting_by_hand_spares_files_in_use(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["v.safetensors"] = blob(KIB)
    cache = make(tmp_path)
    got = cache.acquire(ref(model_server.url("plain", "v.safetensors"), folder="vae"), deadline=soon())
    with pytest.raises(Conflict):
        cache.evict(got.entry.key)
    cache.release(got.entry.key)
    assert cache.evict(got.entry.key).key == got.entry.key
    assert not (tmp_path / "vae" / got.entry.key).exists()
    with pytest.raises(NotFound):
        cache.evict(got.entry.key)
    assert os.listdir(tmp_path / "vae") == []


def test_a_gs_object_is_fetched_from_an_allowlisted_bucket(tmp_path: Path, fake_gcs: Any, gcs_bucket: str) -> None:
    data = blob(200 * KIB, 6)
    fake_gcs.client().bucket(gcs_bucket).blob("models/g.safetensors").upload_from_string(data)
    settings = Settings(url_allowlist=(f"gs://{gcs_bucket}/models",), storage_emulator_host=fake_gcs.url)
    cache = make(tmp_path, settings=settings)
    got = cache.acquire(ref(f"gs://{gcs_bucket}/models/g.safetensors", folder="loras"), deadline=soon(30))
    assert got.fetched and (tmp_path / "loras" / got.entry.name).read_bytes() == data
    assert got.entry.sha256 == hashlib.sha256(data).hexdigest() and got.entry.source.startswith("gs://")
    with pytest.raises(ModelNotFound):
        cache.acquire(ref(f"gs://{gcs_bucket}/models/none.safetensors"), deadline=soon(30))
    with pytest.raises(UnsafeURL):  # outside the allowlisted prefix
        cache.acquire(ref(f"gs://{gcs_bucket}/other/g.safetensors"), deadline=soon(30))
    with pytest.raises(ModelTooLarge):
        make(tmp_path / "small", budget=100 * KIB, settings=settings).acquire(
            ref(f"gs://{gcs_bucket}/models/g.safetensors"), deadline=soon(30)
        )
    assert visible(tmp_path / "small") == []


def test_a_gs_download_reports_its_progress_like_an_https_one(tmp_path: Path, fake_gcs: Any, gcs_bucket: str) -> None:
    """`/status`, SSE and the dashboard show bytes done of the object's size for gs:// models too."""
    data = blob(3 * 1024 * KIB, 7)
    fake_gcs.client().bucket(gcs_bucket).blob("models/p.safetensors").upload_from_string(data)
    settings = Settings(url_allowlist=(f"gs://{gcs_bucket}/models",), storage_emulator_host=fake_gcs.url)
    heard: list[Any] = []
    got = make(tmp_path, settings=settings).acquire(
        ref(f"gs://{gcs_bucket}/models/p.safetensors", folder="loras"), deadline=soon(30), progress=heard.append
    )
    assert got.fetched and got.entry.sha256 == hashlib.sha256(data).hexdigest()
    assert heard and all(p.bytes_total == len(data) for p in heard)
    assert heard[-1].bytes_done == len(data) and heard[-1].percent == 100.0
    assert heard[-1].source.startswith("gs://")


def test_the_hugging_face_token_goes_to_huggingface_co_only() -> None:
    assert (
        _headers("https://huggingface.co/o/r/resolve/main/m.safetensors", 0, "hf_t")["Authorization"] == "Bearer hf_t"
    )
    assert "Authorization" not in _headers("https://cdn-lfs.huggingface.co/x", 0, "hf_t")
    assert "Authorization" not in _headers("https://huggingface.co.evil.example/x", 0, "hf_t")
    assert _headers("https://h.example/x", 10, None)["Range"] == "bytes=10-"


def test_last_use_is_kept_across_a_restart_once_flushed(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["u.safetensors"] = blob(KIB)
    r = ref(model_server.url("plain", "u.safetensors"))
    now = [1000.0]
    cache = make(tmp_path, clock=lambda: now[0])
    cache.release(cache.acquire(r, deadline=soon()).entry.key)
    now[0] = 2000.0
    cache.release(cache.acquire(r, deadline=soon()).entry.key)  # a hit: the index is written later
    assert [e.last_used for e in make(tmp_path).entries()] == [1000.0]
    cache.flush()
    assert [e.last_used for e in make(tmp_path).entries()] == [2000.0]


def test_an_index_entry_that_points_outside_the_cache_is_ignored(tmp_path: Path) -> None:
    root, outside = tmp_path / "cache", tmp_path / "precious"
    (outside / ("ab" * 12)).mkdir(parents=True)
    (outside / ("ab" * 12) / "keep.txt").write_bytes(b"x")
    root.mkdir()
    record = {"key": "ab" * 12, "folder": "../precious", "filename": "keep.txt", "source": "s", "size": 1}
    record |= {"sha256": "0" * 64, "verified": False, "fetched_at": 0.0, "last_used": 0.0}
    (root / "index.json").write_text(json.dumps({"version": 1, "entries": [record]}))
    cache = make(root, budget=0)  # a zero budget would evict whatever the index holds
    assert cache.entries() == [] and (outside / ("ab" * 12) / "keep.txt").exists()


def test_a_cancelled_download_stops_and_another_request_takes_over(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(8 * 1024 * KIB, 2)  # more than a socket buffer: the held half stays in flight
    model_server.files["c.safetensors"] = data
    cache = make(tmp_path, budget=64 * 1024 * KIB)
    r = ref(model_server.url("held", "c.safetensors"))
    cancel, outcome = threading.Event(), {}

    def leader() -> None:
        try:
            cache.acquire(r, deadline=soon(30), cancel=cancel)
        except Exception as exc:  # noqa: BLE001 - the test looks at what it was
            outcome["leader"] = exc

    def follower() -> None:
        outcome["follower"] = cache.acquire(r, deadline=soon(30))

    first = threading.Thread(target=leader)
    first.start()
    deadline = time.monotonic() + 10
    while not list((tmp_path / ".partial").glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=follower)
    second.start()
    time.sleep(0.3)
    cancel.set()
    model_server.release.set()  # the held answer goes on; the leader stops at its next chunk
    first.join(20)
    second.join(30)
    assert isinstance(outcome["leader"], Cancelled)
    assert outcome["follower"].fetched and outcome["follower"].entry.size == len(data)
    assert model_server.requests["/held/c.safetensors"] == 2


def test_the_default_budget_leaves_comfyui_its_memory() -> None:
    gib = 1024**3
    assert default_budget(32 * gib, 4 * gib) == 14 * gib  # half of what is left after the reserve
    assert default_budget(2 * gib, 4 * gib) == 0  # too small an instance: nothing is cached
    assert default_budget(None, 4 * gib) == 10 * gib
    assert (memory_limit_bytes() or 1) > 0


def test_a_wrong_checksum_of_one_request_does_not_fail_another(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(256 * KIB, 11)
    model_server.files["w.safetensors"] = data
    cache = make(tmp_path)
    good = hashlib.sha256(data).hexdigest()
    outcome: dict[str, object] = {}

    def get(name: str, sha256: str) -> None:
        try:
            outcome[name] = cache.acquire(
                ref(model_server.url("held", "w.safetensors"), sha256=sha256), deadline=soon(20)
            )
        except Exception as exc:  # noqa: BLE001 - the test looks at what it was
            outcome[name] = exc

    wrong = threading.Thread(target=get, args=("wrong", "0" * 64))
    wrong.start()
    deadline = time.monotonic() + 10
    while not list((tmp_path / ".partial").glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.01)
    right = threading.Thread(target=get, args=("right", good))
    right.start()
    time.sleep(0.3)
    model_server.release.set()
    wrong.join(20)
    right.join(20)
    assert isinstance(outcome["wrong"], ChecksumMismatch)
    assert outcome["right"].entry.verified and outcome["right"].entry.sha256 == good


def test_a_digest_given_later_marks_the_cached_file_verified(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(KIB, 12)
    model_server.files["x.safetensors"] = data
    cache = make(tmp_path)
    url = model_server.url("plain", "x.safetensors")
    assert not cache.acquire(ref(url), deadline=soon()).entry.verified
    assert cache.acquire(ref(url, sha256=hashlib.sha256(data).hexdigest()), deadline=soon()).entry.verified


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to stand for a full disk")
def test_a_full_disk_is_a_500_not_the_callers_fault(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["f.safetensors"] = blob(256 * KIB)
    cache = make(tmp_path)
    r = ref(model_server.url("plain", "f.safetensors"))
    (tmp_path / ".partial").mkdir(exist_ok=True)
    (tmp_path / ".partial" / f"{r.key}.part").symlink_to("/dev/full")  # the part file's name
    with pytest.raises(ServiceError) as caught:
        cache.acquire(r, deadline=soon())
    assert caught.value.status_code == 500 and "could not be stored" in caught.value.message
    assert cache.entries() == [] and not list((tmp_path / ".partial").iterdir())
