"""The cache of models fetched by URL: bounded, checksummed, shared by concurrent requests.

Layout under the cache root (ComfyUI is shown `<root>/<folder>` only, through the extra model
paths file the supervisor writes, so nothing else in the root is ever listed):

    index.json                 what is cached: source, size, sha256, fetch time, last use
    .partial/<key>.<n>.part    downloads under way; deleted on failure, renamed when verified
    <folder>/<key>/<filename>  a complete, verified file; ComfyUI sees it as `<key>/<filename>`

Contract:
* `acquire(ref, deadline)` returns the cached file, fetching it first when absent, and pins it:
  no eviction removes a pinned file; `release` unpins (once the prompt that uses it is done).
* One download per (folder, URL) at a time: the others wait for it and share its result.
* The budget (bytes) holds while downloading: the announced size is reserved before the first
  byte and the reservation grows as bytes arrive beyond it; least recently used, unpinned files
  are evicted to make room. A file larger than the whole budget is a 413 before anything is
  written; a budget held by files in use is a 503 to retry.
* A given sha256 is checked before the file is used (a mismatch is a 400 and nothing is kept);
  without one the digest is recorded and reported.
* The index survives restarts; at start, partial files and files the index does not know are
  removed, entries whose file is gone are dropped, and the budget is enforced again.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from handler.config import Settings
from handler.errors import (
    BadRequest,
    Cancelled,
    ComfyUnavailable,
    Conflict,
    PayloadTooLarge,
    ServiceError,
    Timeout,
)
from handler.models.download import Downloaded, download
from handler.models.refs import LOADERS, ModelRef
from handler.net.urlguard import redact_url

log = logging.getLogger("handler.models.cache")

INDEX = "index.json"
PARTIAL = ".partial"
_KEY = re.compile(r"^[0-9a-f]{24}$")
_SAFE_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
FOLDERS = frozenset(LOADERS.values())
INDEX_WRITE_EVERY_S = 5.0
WAIT_STEP_S = 0.25  # how often a request waiting on another's download looks at its own cancel  # a hit marks the index dirty; it is written at most this often


class ModelTooLarge(PayloadTooLarge):
    code = "model_too_large"


class ChecksumMismatch(BadRequest):
    code = "checksum_mismatch"


class ModelCacheBusy(ComfyUnavailable):
    """The budget is held by files that running or queued prompts use."""

    code = "model_cache_busy"


@dataclass(kw_only=True)
class Entry:
    """One cached file, as the index records it."""

    key: str
    folder: str
    filename: str
    source: str  # the URL, redacted (no query string, no credentials)
    size: int
    sha256: str
    verified: bool  # a sha256 was given with the URL and matched
    fetched_at: float
    last_used: float

    @property
    def name(self) -> str:
        """The file name ComfyUI lists in its folder."""
        return f"{self.key}/{self.filename}"

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "file": self.name}


@dataclass(frozen=True, kw_only=True)
class Acquired:
    """A pinned file and how it came to be there, for the request's answer."""

    entry: Entry
    fetched: bool  # downloaded for this request (False: it was cached, or another request fetched it)
    seconds: float
    resumed: int = 0

    def describe(self) -> dict[str, Any]:
        e = self.entry
        return {
            "folder": e.folder,
            "file": e.name,
            "source": e.source,
            "size": e.size,
            "sha256": e.sha256,
            "verified": e.verified,
            "fetched": self.fetched,
            "seconds": round(self.seconds, 3),
        }


class _Flight:
    """One download under way; waiters share its outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None
        self.error: ServiceError | None = None
        self.reserved = 0
        self.sha256: str | None = None  # what the fetching request expects


class ModelCache:
    def __init__(
        self,
        *,
        root: Path,
        budget_bytes: int,
        settings: Settings,
        hf_token: str | None = None,
        download_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ):
        self.root = root
        self.budget_bytes = budget_bytes
        self.settings = settings
        self.hf_token = hf_token
        self.download_timeout_s = download_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._pins: dict[str, int] = {}
        self._flights: dict[str, _Flight] = {}
        self._serial = itertools.count()
        self._dirty_since: float | None = None
        self._load()

    # --- what the routes and the pipeline use ----------------------------------------------

    def entries(self) -> list[Entry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True)

    def usage(self) -> dict[str, int]:
        with self._lock:
            used = sum(e.size for e in self._entries.values())
            reserved = sum(f.reserved for f in self._flights.values())
            return {"budget_bytes": self.budget_bytes, "used_bytes": used, "downloading_bytes": reserved}

    def acquire(self, ref: ModelRef, *, deadline: float, cancel: threading.Event | None = None) -> Acquired:
        """The file `ref` names, fetched when absent, pinned until `release(ref.key)`. A set
        `cancel` ends the wait or this request's download (errors.Cancelled)."""
        started = time.monotonic()
        key = ref.key
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._check_digest(ref, entry)
                    self._pin(key)
                    entry.last_used = self._clock()
                    self._dirty_since = self._dirty_since or time.monotonic()
                    return Acquired(entry=entry, fetched=False, seconds=time.monotonic() - started)
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    flight.sha256 = ref.sha256
            if leader:
                return self._fetch(ref, flight, deadline, started, cancel)
            while not flight.done.wait(min(WAIT_STEP_S, max(0.0, deadline - time.monotonic()))):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"model {redact_url(ref.url)}: cancelled while another request fetched it")
                if time.monotonic() >= deadline:
                    raise Timeout(
                        f"model {redact_url(ref.url)}: its download (by another request) did not finish in time"
                    )
            theirs = isinstance(flight.error, (Timeout, Cancelled)) or (
                isinstance(flight.error, ChecksumMismatch) and flight.sha256 != ref.sha256
            )
            if flight.error is not None and not (theirs and time.monotonic() < deadline):
                raise flight.error
            # Fetched by the other request (found in the index on the next turn), or it failed for
            # reasons of its own (its time, its cancel, its checksum) while we still have time: take over.

    def release(self, key: str) -> None:
        with self._lock:
            count = self._pins.get(key, 0) - 1
            if count > 0:
                self._pins[key] = count
            else:
                self._pins.pop(key, None)
            if self._dirty_since is not None and time.monotonic() - self._dirty_since > INDEX_WRITE_EVERY_S:
                self._save()

    def evict(self, key: str) -> Entry:
        """Remove one file now: 404 when unknown, 409 while a prompt uses it."""
        from handler.errors import NotFound

        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise NotFound(f"no cached model {key!r}")
            if self._pins.get(key):
                raise Conflict(f"the cached model {entry.name!r} is in use by a queued or running prompt")
            self._remove(entry)
            self._save()
            return entry

    def flush(self) -> None:
        with self._lock:
            if self._dirty_since is not None:
                self._save()

    # --- fetching ---------------------------------------------------------------------------

    def _fetch(
        self, ref: ModelRef, flight: _Flight, deadline: float, started: float, cancel: threading.Event | None
    ) -> Acquired:
        partial = self.root / PARTIAL
        part = partial / f"{ref.key}.{next(self._serial)}.part"
        limit = min(deadline, time.monotonic() + self.download_timeout_s)
        try:
            partial.mkdir(parents=True, exist_ok=True)
            done = download(
                ref,
                part,
                self.settings,
                reserve=lambda wanted, needed: self._reserve(ref, flight, wanted, needed),
                deadline=limit,
                hf_token=self.hf_token,
                cancel=cancel,
            )
            entry = self._install(ref, part, done)
        except ServiceError as exc:
            flight.error = exc
            raise
        except OSError as exc:
            flight.error = ServiceError(f"model {redact_url(ref.url)}: cannot store it ({exc.strerror})")
            raise flight.error from None
        finally:
            part.unlink(missing_ok=True)
            with self._lock:
                self._flights.pop(ref.key, None)
                flight.reserved = 0
                flight.entry = self._entries.get(ref.key)
            flight.done.set()
        log.info("model %s fetched: %d bytes, sha256 %s", entry.source, entry.size, entry.sha256)
        return Acquired(entry=entry, fetched=True, seconds=time.monotonic() - started, resumed=done.resumed)

    def _install(self, ref: ModelRef, part: Path, done: Downloaded) -> Entry:
        if ref.sha256 is not None and done.sha256 != ref.sha256:
            raise ChecksumMismatch(
                f"model {redact_url(ref.url)}: sha256 is {done.sha256}, not the {ref.sha256} the request gave; "
                "nothing was kept"
            )
        now = self._clock()
        entry = Entry(
            key=ref.key,
            folder=ref.folder,
            filename=ref.filename,
            source=redact_url(ref.url),
            size=done.size,
            sha256=done.sha256,
            verified=ref.sha256 is not None,
            fetched_at=now,
            last_used=now,
        )
        target = self.root / ref.folder / ref.key
        target.mkdir(parents=True, exist_ok=True)
        os.replace(part, target / ref.filename)  # the only step that makes it visible to ComfyUI
        with self._lock:
            self._entries[ref.key] = entry
            self._pin(ref.key)
            self._save()
        return entry

    def _reserve(self, ref: ModelRef, flight: _Flight, wanted: int, needed: int) -> int:
        """Grant this download room for `wanted` bytes in all, at least `needed`, evicting unpinned
        files least recently used first."""
        shown = redact_url(ref.url)
        if needed > self.budget_bytes:
            raise ModelTooLarge(
                f"model {shown} is larger than the model cache's {self.budget_bytes} bytes (MODEL_CACHE_BYTES)"
            )
        wanted = min(max(wanted, needed), self.budget_bytes)
        with self._lock:
            others = sum(f.reserved for f in self._flights.values() if f is not flight)
            used = sum(e.size for e in self._entries.values())
            evicted = False
            for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
                if used + others + wanted <= self.budget_bytes:
                    break
                if not self._pins.get(entry.key):
                    self._remove(entry)
                    used, evicted = used - entry.size, True
                    log.info("model %s evicted to make room for %s", entry.source, shown)
            if evicted:
                self._save()
            free = self.budget_bytes - used - others
            if needed > free:
                raise ModelCacheBusy(
                    f"model {shown}: the model cache ({self.budget_bytes} bytes) is held by files that running or "
                    "queued prompts use, or by other downloads; retry",
                    retry_after_s=10,
                )
            flight.reserved = min(wanted, free)
            return flight.reserved

    # --- under the lock ---------------------------------------------------------------------

    def _check_digest(self, ref: ModelRef, entry: Entry) -> None:
        if ref.sha256 is not None and ref.sha256 == entry.sha256 and not entry.verified:
            entry.verified = True  # recorded unchecked, now confirmed by a request that gave the digest
            self._dirty_since = self._dirty_since or time.monotonic()
        if ref.sha256 is not None and ref.sha256 != entry.sha256:
            raise ChecksumMismatch(
                f"model {entry.source}: the cached copy's sha256 is {entry.sha256}, not the {ref.sha256} the request "
                "gave; evict it (DELETE /models/cache/{key}) if the file at that URL has changed",
                key=entry.key,
            )

    def _pin(self, key: str) -> None:
        self._pins[key] = self._pins.get(key, 0) + 1

    def _remove(self, entry: Entry) -> None:
        del self._entries[entry.key]
        shutil.rmtree(self.root / entry.folder / entry.key, ignore_errors=True)

    def _save(self) -> None:
        self._dirty_since = None
        data = {"version": 1, "entries": [asdict(e) for e in self._entries.values()]}
        tmp = self.root / f".{INDEX}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.root / INDEX)

    def _load(self) -> None:
        """Read the index and make the folders agree with it (see the module's contract)."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / PARTIAL, ignore_errors=True)
        try:
            raw = json.loads((self.root / INDEX).read_text())
            records = raw.get("entries", []) if isinstance(raw, dict) else []
        except (OSError, ValueError):
            records = []
        for record in records:
            try:
                entry = Entry(**record)
            except TypeError:
                continue
            if not (_KEY.match(entry.key) and entry.folder in FOLDERS and _SAFE_FILE.match(entry.filename)):
                continue  # not written by this cache: never a path to follow
            path = self.root / entry.folder / entry.key / entry.filename
            if path.is_file() and path.stat().st_size == entry.size:
                self._entries[entry.key] = entry
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for child in folder.iterdir():
                known = self._entries.get(child.name)
                if _KEY.match(child.name) and (known is None or known.folder != folder.name):
                    shutil.rmtree(child, ignore_errors=True)
        used = sum(e.size for e in self._entries.values())
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            if used <= self.budget_bytes:
                break
            self._remove(entry)
            used -= entry.size
        self._save()
