"""The model cache's backing store (MODEL_CACHE_STORE) against a real HTTP model server: a file one
instance downloaded is served to the next instance from the store, linked, without a download and
outside its budget; a half-written or stale store entry is never taken; a store that cannot be
written never fails a request; eviction keeps the store's copy and DELETE removes both; a stored
file is reached by its own URL only. Two caches over two folders and one store stand for two
instances. Through the service: tests/models/test_store_service.py."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from handler.config import Settings
from handler.errors import NotFound, Timeout, UnsafeURL
from handler.models.cache import ChecksumMismatch, ModelCache, ModelTooLarge
from handler.models.partials import Partials
from handler.models.refs import ModelRef
from handler.models.store import RECORD, Store
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.sections import sections

LOCAL = Settings(url_allowlist=("127.0.0.1",))
KIB = 1024
SECTIONS = ("urls", "jobs", "cloud", "models")


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 11 + seed) % 251 for i in range(n))


def ref(url: str, sha256: str | None = None, folder: str = "checkpoints") -> ModelRef:
    return ModelRef(url=url, folder=folder, filename="m.safetensors", sha256=sha256)


def soon() -> float:
    return time.monotonic() + 10


def instance(root: Path, store: Path, budget: int = 10 * 1024 * KIB) -> ModelCache:
    return ModelCache(root=root, budget_bytes=budget, **sections(LOCAL, *SECTIONS), store=Store(root=store))


def fetched_by(server: ModelServer) -> int:
    return sum(server.requests.values())


def test_a_new_instance_serves_a_url_from_the_store_without_a_download_or_budget(
    tmp_path: Path, model_server: ModelServer
) -> None:
    data = blob(300 * KIB)
    digest = hashlib.sha256(data).hexdigest()
    model_server.files["a.safetensors"] = data
    url = model_server.url("plain", "a.safetensors")
    a = instance(tmp_path / "a", tmp_path / "store")
    got = a.acquire(ref(url), deadline=soon())
    assert got.fetched and not got.entry.stored
    a.wait_stored()
    record = json.loads((tmp_path / "store" / got.entry.key / RECORD).read_text())
    assert record["sha256"] == digest and record["size"] == len(data) and record["source"] == url
    assert fetched_by(model_server) == 1

    # Instance B: its budget is far below the file's size, so only a file outside it can be served.
    b = instance(tmp_path / "b", tmp_path / "store", budget=4 * KIB)
    served = b.acquire(ref(url, sha256=digest), deadline=soon())
    assert fetched_by(model_server) == 1  # no request to the server
    assert not served.fetched and served.entry.stored and served.entry.sha256 == digest and served.entry.verified
    assert served.describe()["stored"] is True
    shown = tmp_path / "b" / "checkpoints" / served.entry.name
    assert shown.is_symlink() and shown.read_bytes() == data  # linked into the store, not copied
    assert b.usage()["used_bytes"] == 0 and b.usage()["stored_bytes"] == len(data)
    # A download on B still has its whole budget: the stored file is not counted (nor evicted for it).
    model_server.files["s.safetensors"] = blob(3 * KIB, 1)
    b.release(served.entry.key)
    small = b.acquire(ref(model_server.url("plain", "s.safetensors")), deadline=soon())
    assert small.fetched and b.acquire(ref(url), deadline=soon()).entry.stored
    # B restarted: its index still knows the linked file.
    again = instance(tmp_path / "b", tmp_path / "store", budget=4 * KIB)
    assert {e.key: e.stored for e in again.entries()} == {served.entry.key: True, small.entry.key: False}


def test_a_store_entry_without_its_record_is_not_taken(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(40 * KIB, 2)
    model_server.files["h.safetensors"] = data
    url = model_server.url("plain", "h.safetensors")
    a = instance(tmp_path / "a", tmp_path / "store")
    key = a.acquire(ref(url), deadline=soon()).entry.key
    a.wait_stored()
    (tmp_path / "store" / key / RECORD).unlink()  # as if the copy had stopped before its record
    b = instance(tmp_path / "b", tmp_path / "store")
    got = b.acquire(ref(url), deadline=soon())
    assert got.fetched and not got.entry.stored and fetched_by(model_server) == 2
    b.wait_stored()
    assert json.loads((tmp_path / "store" / key / RECORD).read_text())["sha256"] == got.entry.sha256


def test_a_stored_file_of_another_digest_is_downloaded_again_and_replaced(
    tmp_path: Path, model_server: ModelServer
) -> None:
    old, new = blob(20 * KIB, 3), blob(20 * KIB, 4)
    model_server.files["c.safetensors"] = old
    url = model_server.url("plain", "c.safetensors")
    a = instance(tmp_path / "a", tmp_path / "store")
    key = a.acquire(ref(url), deadline=soon()).entry.key
    a.wait_stored()
    model_server.files["c.safetensors"] = new  # the file at that URL changed
    b = instance(tmp_path / "b", tmp_path / "store")
    got = b.acquire(ref(url, sha256=hashlib.sha256(new).hexdigest()), deadline=soon())
    assert got.fetched and not got.entry.stored and fetched_by(model_server) == 2
    assert (tmp_path / "b" / "checkpoints" / got.entry.name).read_bytes() == new
    b.wait_stored()
    assert json.loads((tmp_path / "store" / key / RECORD).read_text())["sha256"] == hashlib.sha256(new).hexdigest()
    # A demand that neither the store nor the server satisfies is the usual 400.
    c = instance(tmp_path / "c", tmp_path / "store")
    with pytest.raises(ChecksumMismatch):
        c.acquire(ref(url, sha256=hashlib.sha256(old).hexdigest()), deadline=soon())


def test_a_store_that_cannot_be_written_or_read_never_fails_a_request(
    tmp_path: Path, model_server: ModelServer
) -> None:
    data = blob(10 * KIB, 5)
    model_server.files["u.safetensors"] = data
    url = model_server.url("plain", "u.safetensors")
    broken = tmp_path / "not-a-folder"
    broken.write_text("a file where the store's folder should be")
    a = instance(tmp_path / "a", broken)
    got = a.acquire(ref(url), deadline=soon())
    a.wait_stored()
    assert got.fetched and (tmp_path / "a" / "checkpoints" / got.entry.name).read_bytes() == data
    b = instance(tmp_path / "b", broken)
    assert b.acquire(ref(url), deadline=soon()).fetched and fetched_by(model_server) == 2


def test_eviction_keeps_the_stored_copy_and_delete_removes_both(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["e.safetensors"] = blob(30 * KIB, 6)
    model_server.files["f.safetensors"] = blob(30 * KIB, 7)
    first, second = model_server.url("plain", "e.safetensors"), model_server.url("plain", "f.safetensors")
    a = instance(tmp_path / "a", tmp_path / "store", budget=40 * KIB)
    key = a.acquire(ref(first), deadline=soon()).entry.key
    a.release(key)
    a.wait_stored()
    a.release(a.acquire(ref(second), deadline=soon()).entry.key)  # evicts the first to make room
    assert key not in {e.key for e in a.entries()}
    back = a.acquire(ref(first), deadline=soon())  # from the store now, beside the second
    assert back.entry.stored and fetched_by(model_server) == 2
    a.release(key)
    # DELETE on another instance, which never had it locally, removes the store's copy.
    b = instance(tmp_path / "b", tmp_path / "store")
    assert b.evict(key).key == key and not (tmp_path / "store" / key).exists()
    with pytest.raises(NotFound):
        b.evict(key)
    # The instance that linked it finds its link dangling and downloads the file again.
    again = a.acquire(ref(first), deadline=soon())
    assert again.fetched and not again.entry.stored and fetched_by(model_server) == 3


def test_a_stored_file_is_reached_by_its_own_url_only(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.files["p.safetensors"] = blob(8 * KIB, 8)
    private = model_server.url("plain", "p.safetensors") + "?token=alice-secret"
    a = instance(tmp_path / "a", tmp_path / "store")
    key = a.acquire(ref(private), deadline=soon()).entry.key
    a.wait_stored()
    assert "alice-secret" not in (tmp_path / "store" / key / RECORD).read_text()
    b = instance(tmp_path / "b", tmp_path / "store")
    for other in (model_server.url("plain", "p.safetensors"), private.replace("alice", "mallory")):
        got = b.acquire(ref(other), deadline=soon())
        assert got.fetched and not got.entry.stored and got.entry.key != key
    assert b.acquire(ref(private, folder="loras"), deadline=soon()).fetched  # another folder, another key
    assert b.acquire(ref(private), deadline=soon()).entry.stored  # its own URL finds it


def test_a_stored_gs_object_obeys_the_bucket_allowlist_and_its_own_url(
    tmp_path: Path, fake_gcs: Any, gcs_bucket: str
) -> None:
    data = blob(50 * KIB, 10)
    fake_gcs.client().bucket(gcs_bucket).blob("private/g.safetensors").upload_from_string(data)
    url = f"gs://{gcs_bucket}/private/g.safetensors"
    allowed = Settings(url_allowlist=(f"gs://{gcs_bucket}/private",), storage_emulator_host=fake_gcs.url)
    a = ModelCache(
        root=tmp_path / "a", budget_bytes=1 << 20, **sections(allowed, *SECTIONS), store=Store(root=tmp_path / "store")
    )
    key = a.acquire(ref(url, folder="loras"), deadline=soon()).entry.key
    a.wait_stored()
    assert (tmp_path / "store" / key / RECORD).exists()
    # An instance whose allowlist no longer names the bucket does not serve it from the store either.
    other = Settings(url_allowlist=("127.0.0.1",), storage_emulator_host=fake_gcs.url)
    b = ModelCache(
        root=tmp_path / "b", budget_bytes=1 << 20, **sections(other, *SECTIONS), store=Store(root=tmp_path / "store")
    )
    with pytest.raises(UnsafeURL):
        b.acquire(ref(url, folder="loras"), deadline=soon())
    assert b.entries() == []
    # Another name for the same object is another key: fetched from the bucket, never the stored file.
    c = ModelCache(
        root=tmp_path / "c", budget_bytes=1 << 20, **sections(allowed, *SECTIONS), store=Store(root=tmp_path / "store")
    )
    fake_gcs.client().bucket(gcs_bucket).blob("private/h.safetensors").upload_from_string(data)
    got = c.acquire(ref(f"gs://{gcs_bucket}/private/h.safetensors", folder="loras"), deadline=soon())
    assert got.fetched and not got.entry.stored and got.entry.key != key
    assert c.acquire(ref(url, folder="loras"), deadline=soon()).entry.stored


def test_a_part_left_to_resume_goes_when_the_store_serves_the_file(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(400 * KIB, 11)
    model_server.files["r.safetensors"] = data
    r = ref(model_server.url("held", "r.safetensors"))
    with pytest.raises(Timeout):  # cut off half-way on instance A: its part is kept to resume
        ModelCache(
            root=tmp_path / "a", budget_bytes=1 << 20, **sections(LOCAL, *SECTIONS), download_timeout_s=1.0
        ).acquire(r, deadline=soon())
    assert Partials(tmp_path / "a").size(r.key) > 0
    model_server.release.set()
    b = instance(tmp_path / "b", tmp_path / "store")  # instance B downloads it whole and stores it
    assert b.acquire(r, deadline=soon()).fetched
    b.wait_stored()
    a = instance(tmp_path / "a", tmp_path / "store")
    assert a.usage()["partial_bytes"] > 0
    assert a.acquire(r, deadline=soon()).entry.stored
    assert a.usage()["partial_bytes"] == 0 and not Partials(tmp_path / "a").part(r.key).exists()


def test_too_large_for_the_budget_is_still_a_413_when_the_store_lacks_it(
    tmp_path: Path, model_server: ModelServer
) -> None:
    model_server.files["big.safetensors"] = blob(64 * KIB, 9)
    with pytest.raises(ModelTooLarge):
        instance(tmp_path / "a", tmp_path / "store", budget=8 * KIB).acquire(
            ref(model_server.url("plain", "big.safetensors")), deadline=soon()
        )
    assert not any((tmp_path / "store").glob("*/*"))
