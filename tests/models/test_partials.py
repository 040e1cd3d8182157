"""Downloads cut off and picked up again across cache instances (a restart over the same folder),
against a real HTTP server on loopback: the part left behind is resumed with `Range` and
`If-Range` and ends with the whole file's digest; a server that ignores the range, or whose file
changed, sends it all again and the part starts over; without a validator nothing is kept. At
start, old parts, parts without a record and parts beyond the budget are removed; parked parts
count against the budget and make room first."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from handler.config import Settings
from handler.errors import Timeout
from handler.models.cache import ModelCache
from handler.models.partials import Partials, Resumable
from handler.models.refs import ModelRef
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.sections import sections

LOCAL = Settings(url_allowlist=("127.0.0.1",))
KIB = 1024


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def make(root: Path, budget: int = 10 * 1024 * KIB, **kw: float) -> ModelCache:
    return ModelCache(root=root, budget_bytes=budget, **sections(LOCAL, "urls", "jobs", "cloud", "models"), **kw)  # type: ignore[arg-type]


def model(url: str) -> ModelRef:
    return ModelRef(url=url, folder="checkpoints", filename="m.safetensors", sha256=None)


def cut_off(root: Path, server: ModelServer, name: str, data: bytes) -> tuple[ModelRef, int]:
    """A download that stops half-way (its time runs out on a held answer); returns what it kept."""
    server.files[name] = data
    r = model(server.url("held", name))
    with pytest.raises(Timeout):
        make(root, download_timeout_s=1.0).acquire(r, deadline=time.monotonic() + 30)
    kept = Partials(root).size(r.key)
    return r, kept


def parts(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".partial").iterdir())


def test_a_download_cut_off_resumes_in_a_new_cache_with_a_range(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(400 * KIB, 1)
    r, kept = cut_off(tmp_path, model_server, "r.safetensors", data)
    assert 0 < kept < len(data), kept
    assert parts(tmp_path) == [f"{r.key}.json", f"{r.key}.part"]
    assert not (tmp_path / "checkpoints").exists()  # nothing ComfyUI could list
    model_server.release.set()
    restarted = make(tmp_path)
    assert restarted.usage()["partial_bytes"] == kept
    got = restarted.acquire(r, deadline=time.monotonic() + 30)
    last = model_server.headers[-1]
    assert last.get("Range") == f"bytes={kept}-" and last.get("If-Range") == model_server.etag(len(data))
    assert got.fetched and got.resumed_from == kept and got.describe()["resumed_from"] == kept
    assert got.entry.sha256 == hashlib.sha256(data).hexdigest() and got.entry.size == len(data)
    assert (tmp_path / "checkpoints" / got.entry.name).read_bytes() == data
    assert parts(tmp_path) == [] and restarted.usage()["partial_bytes"] == 0


def test_a_server_that_ignores_the_range_restarts_cleanly(tmp_path: Path, model_server: ModelServer) -> None:
    data = blob(300 * KIB, 2)
    r, kept = cut_off(tmp_path, model_server, "i.safetensors", data)
    assert kept > 0
    model_server.release.set()
    model_server.ignore_range = True
    got = make(tmp_path).acquire(r, deadline=time.monotonic() + 30)
    assert model_server.headers[-1].get("Range") == f"bytes={kept}-"  # asked, and answered with a 200
    assert got.resumed_from == 0 and got.entry.size == len(data)
    assert got.entry.sha256 == hashlib.sha256(data).hexdigest()
    assert parts(tmp_path) == []


def test_a_file_changed_on_the_server_starts_over(tmp_path: Path, model_server: ModelServer) -> None:
    r, kept = cut_off(tmp_path, model_server, "c.safetensors", blob(300 * KIB, 3))
    assert kept > 0
    model_server.release.set()
    changed = blob(300 * KIB, 4)
    model_server.files["c.safetensors"], model_server.version = changed, 2
    got = make(tmp_path).acquire(r, deadline=time.monotonic() + 30)
    assert model_server.headers[-1].get("If-Range") == '"307200-v1"'  # the old validator: 200, all of it
    assert got.resumed_from == 0 and got.entry.sha256 == hashlib.sha256(changed).hexdigest()


def test_without_a_validator_nothing_is_kept_to_resume(tmp_path: Path, model_server: ModelServer) -> None:
    model_server.no_validator = True
    r, kept = cut_off(tmp_path, model_server, "n.safetensors", blob(200 * KIB, 5))
    assert kept == 0 and parts(tmp_path) == []
    model_server.release.set()
    make(tmp_path).acquire(r, deadline=time.monotonic() + 30)
    assert "Range" not in model_server.headers[-1]


def test_at_start_old_unrecorded_and_excess_parts_are_removed(tmp_path: Path) -> None:
    partials = Partials(tmp_path)
    partials.folder.mkdir(parents=True)
    record = Resumable(validator='"v"', total=100 * KIB)
    now = time.time()
    for n, (age_s, size, recorded) in enumerate(
        [(2 * 86400, KIB, True), (60, KIB, False), (30, 6 * KIB, True), (20, 3 * KIB, True), (10, 2 * KIB, True)]
    ):
        key = f"{n:024x}"
        partials.part(key).write_bytes(b"x" * size)
        if recorded:
            partials.write_record(key, record)
        os.utime(partials.part(key), (now - age_s, now - age_s))
    (partials.folder / "stray.tmp").write_bytes(b"?")
    cache = make(tmp_path, budget=8 * KIB)
    # The day-old one and the unrecorded one go; of the rest the newest that fit 8 KiB stay.
    assert cache.usage()["partial_bytes"] == 5 * KIB
    assert parts(tmp_path) == sorted([f"{3:024x}.json", f"{3:024x}.part", f"{4:024x}.json", f"{4:024x}.part"])


def test_parked_parts_count_against_the_budget_and_make_room_first(tmp_path: Path, model_server: ModelServer) -> None:
    r, kept = cut_off(tmp_path, model_server, "p.safetensors", blob(300 * KIB, 6))
    assert kept > 0
    model_server.files["q.safetensors"] = blob(300 * KIB, 7)
    cache = make(tmp_path, budget=400 * KIB)
    got = cache.acquire(model(model_server.url("plain", "q.safetensors")), deadline=time.monotonic() + 30)
    assert got.entry.size == 300 * KIB and cache.usage()["partial_bytes"] == 0 and parts(tmp_path) == []
