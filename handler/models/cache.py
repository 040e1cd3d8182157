"""The cache of models fetched by URL: bounded, checksummed, shared by concurrent requests.

Layout under the cache root (ComfyUI is shown `<root>/<folder>` only, through the extra model
paths file the supervisor writes, so nothing else in the root is ever listed):

    index.json                 what is cached: source, size, sha256, fetch time, last use (index.py)
    .partial/<key>.part        a download under way, or one left to resume (partials.py)
    .partial/<key>.json        the validator and total it may be resumed by
    <folder>/<key>/<filename>  a complete, verified file; ComfyUI sees it as `<key>/<filename>`

Contract:
* `acquire(ref, deadline)` returns the cached file, fetching it first when absent, and pins it:
  no eviction removes a pinned file; `release` unpins (once the prompt that uses it is done).
* One download per (folder, URL) at a time: the others wait for it and share its result, and
  its progress: `acquire(..., progress=)` gets `DownloadProgress` (handler/models/progress.py),
  throttled, whether this request downloads the file or waits on another's download.
* A download cut off (its time, a cancel, a connection that kept dropping, a killed process)
  leaves its part, when the server gave a validator, for the next fetch of the URL to resume
  (`Range`, `If-Range`); parked parts count against the budget and are the first to make room.
* The budget (bytes) holds while downloading: the announced size is reserved before the first
  byte and the reservation grows as bytes arrive beyond it; least recently used, unpinned files
  are evicted to make room. A file larger than the whole budget is a 413 before anything is
  written; a budget held by files in use is a 503 to retry.
* A given sha256 is checked before the file is used (a mismatch is a 400 and nothing is kept);
  without one the digest is recorded and reported.
* A backing store (handler/models/store.py) is looked in on a miss: an entry there is linked, not
  copied, outside the budget (`Entry.stored`); verified downloads go in, in the background (its
  failures are logged only). Eviction keeps the store's copy; `evict` (DELETE) removes both.
* The index survives restarts; at start, files the index does not know are removed, entries
  whose file is gone are dropped, and the budget is enforced again; parts are kept to resume
  unless older than a day, without a validator, or beyond what the budget leaves.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.config.models import ModelSettings
from handler.config.urls import UrlSettings
from handler.errors import (
    Cancelled,
    Conflict,
    ServiceError,
    Timeout,
)
from handler.models import index
from handler.models.acquired import Acquired, ChecksumMismatch, Flight, ModelCacheBusy, ModelTooLarge

__all__ = ["Acquired", "ChecksumMismatch", "ModelCache", "ModelCacheBusy", "ModelTooLarge"]
from handler.models.download import Downloaded, ModelFetchFailed, download
from handler.models.index import Entry
from handler.models.partials import MAX_AGE_S, Partials
from handler.models.progress import Listener
from handler.models.refs import ModelRef, check_ref
from handler.models.store import Store
from handler.net.urlguard import redact_url

log = logging.getLogger("handler.models.cache")

INDEX_WRITE_EVERY_S = 5.0  # a hit marks the index dirty; it is written at most this often
WAIT_STEP_S = 0.25  # how often a request waiting on another's download looks at its own cancel


class ModelCache:
    def __init__(
        self,
        *,
        root: Path,
        budget_bytes: int,
        urls: UrlSettings,
        jobs: JobSettings,
        cloud: CloudSettings,
        models: ModelSettings,
        hf_token: str | None = None,
        download_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
    ):
        self.root = root
        self.budget_bytes = budget_bytes
        self.urls, self.jobs, self.cloud, self.models = urls, jobs, cloud, models
        self.hf_token = hf_token
        self.download_timeout_s = download_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._pins: dict[str, int] = {}
        self._flights: dict[str, Flight] = {}
        self._partials = Partials(root)
        self._parked: dict[str, int] = {}  # parts left to resume: their bytes, by key
        self._dirty_since: float | None = None
        self.store = store
        self._load()

    # --- what the routes and the pipeline use ----------------------------------------------

    def entries(self) -> list[Entry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True)

    def usage(self) -> dict[str, int]:
        with self._lock:
            used = sum(e.size for e in self._entries.values() if not e.stored)
            stored = sum(e.size for e in self._entries.values() if e.stored)
            reserved = sum(f.reserved for f in self._flights.values())
            parked = sum(self._parked.values())
            return {
                "budget_bytes": self.budget_bytes,
                "used_bytes": used,
                "downloading_bytes": reserved,
                "partial_bytes": parked,
                "stored_bytes": stored,  # linked from the backing store: not in the budget
            }

    def acquire(
        self,
        ref: ModelRef,
        *,
        deadline: float,
        cancel: threading.Event | None = None,
        progress: Listener | None = None,
    ) -> Acquired:
        """The file `ref` names, fetched when absent, pinned until `release(ref.key)`. A set
        `cancel` ends the wait or this request's download (errors.Cancelled); `progress` hears
        how the download goes, this request's or the one it waits on."""
        started = time.monotonic()
        key = ref.key
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.stored and not self._file(entry).exists():
                    self._remove(entry)  # its stored copy was deleted (DELETE on another instance)
                    entry = None
                if entry is not None:
                    self._check_digest(ref, entry)
                    self._pin(key)
                    entry.last_used = self._clock()
                    self._dirty_since = self._dirty_since or time.monotonic()
                    return Acquired(entry=entry, fetched=False, seconds=time.monotonic() - started)
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = Flight(ref)
                    flight.sha256 = ref.sha256
            if progress is not None:
                flight.meter.listen(progress)
            try:
                if leader:
                    return self._from_store(ref, flight, started) or self._fetch(ref, flight, deadline, started, cancel)
                self._wait(ref, flight, deadline, cancel)
            finally:
                if progress is not None:
                    flight.meter.forget(progress)
            theirs = isinstance(flight.error, (Timeout, Cancelled)) or (
                isinstance(flight.error, ChecksumMismatch) and flight.sha256 != ref.sha256
            )
            if flight.error is not None and not (theirs and time.monotonic() < deadline):
                raise flight.error
            # Fetched by the other request (found in the index on the next turn), or it failed for
            # reasons of its own (its time, its cancel, its checksum) while we still have time: take over.

    def _wait(self, ref: ModelRef, flight: Flight, deadline: float, cancel: threading.Event | None) -> None:
        while not flight.done.wait(min(WAIT_STEP_S, max(0.0, deadline - time.monotonic()))):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"model {redact_url(ref.url)}: cancelled while another request fetched it")
            if time.monotonic() >= deadline:
                raise Timeout(f"model {redact_url(ref.url)}: its download (by another request) did not finish in time")

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
        """Remove one file now, here and in the backing store: 404 when neither has it, 409 while a
        prompt uses it."""
        from handler.errors import NotFound

        with self._lock:
            entry = self._entries.get(key)
            record = self.store.read(key) if self.store is not None else None
            if entry is None and record is None:
                raise NotFound(f"no cached model {key!r}")
            if entry is not None and self._pins.get(key):
                raise Conflict(f"the cached model {entry.name!r} is in use by a queued or running prompt")
            if entry is not None:
                self._remove(entry)
                self._save()
            if self.store is not None:
                self.store.remove(key)
            if entry is None:
                assert record is not None and self.store is not None
                entry = self.store.entry(record, verified=False, now=self._clock())
            return entry

    def wait_stored(self, timeout_s: float = 60.0) -> None:
        """Wait for the copies into the backing store under way (tests; a shutdown that may wait)."""
        if self.store is not None:
            self.store.wait(timeout_s)

    def flush(self) -> None:
        with self._lock:
            if self._dirty_since is not None:
                self._save()

    # --- the backing store ------------------------------------------------------------------

    def _from_store(self, ref: ModelRef, flight: Flight, started: float) -> Acquired | None:
        """The stored copy of `ref` linked where ComfyUI looks, or None: then it is downloaded."""
        if self.store is None:
            return None
        try:  # the rules the download it replaces would apply (the allowlist may have changed since)
            check_ref(ref, f"model {redact_url(ref.url)}", models=self.models, urls=self.urls, cloud=self.cloud)
        except ServiceError:
            return None  # refused by the download, with its answer and its cleanup
        try:
            record = self.store.find(ref)
            if record is not None:
                self.store.link(record, self.root / ref.folder / ref.key)
        except OSError as exc:
            log.warning("model %s: the model cache's store failed (%s); downloading it", redact_url(ref.url), exc)
            record = None
        if record is None:
            return None
        entry = self.store.entry(record, verified=ref.sha256 is not None, now=self._clock())
        with self._lock:
            self._entries[ref.key] = entry
            self._pin(ref.key)
            self._save()
            self._flights.pop(ref.key, None)
            if self._parked.pop(ref.key, None) is not None:
                self._partials.discard(ref.key)  # a part left to resume, needed no more
        flight.entry = entry
        flight.meter.finish()
        flight.done.set()
        log.info("model %s: linked from the model cache's store (%d bytes)", entry.source, entry.size)
        return Acquired(entry=entry, fetched=False, seconds=time.monotonic() - started)

    # --- fetching ---------------------------------------------------------------------------

    def _fetch(
        self, ref: ModelRef, flight: Flight, deadline: float, started: float, cancel: threading.Event | None
    ) -> Acquired:
        partials, key = self._partials, ref.key
        part = partials.part(key)
        limit = min(deadline, time.monotonic() + self.download_timeout_s)
        with self._lock:
            self._parked.pop(key, None)  # the flight's reservation covers it from here
        keep = False
        try:
            partials.folder.mkdir(parents=True, exist_ok=True)
            resume = None if ref.url.startswith("gs://") else partials.resumable(key)
            if resume is None:
                partials.write_record(key, None)  # the part, if any, is written over from its start
            done = download(
                ref,
                part,
                urls=self.urls,
                jobs=self.jobs,
                cloud=self.cloud,
                models=self.models,
                reserve=lambda wanted, needed: self._reserve(ref, flight, wanted, needed),
                deadline=limit,
                hf_token=self.hf_token,
                cancel=cancel,
                progress=flight.meter.update,
                resume=resume,
                record=lambda found: partials.write_record(key, found),
            )
            entry = self._install(ref, part, done)
        except ServiceError as exc:
            flight.error = exc
            # Cut off, not refused: what arrived is kept for the next fetch of this URL to resume.
            keep = isinstance(exc, (Timeout, Cancelled, ModelFetchFailed)) and partials.resumable(key) is not None
            raise
        except OSError as exc:
            flight.error = ServiceError(f"model {redact_url(ref.url)}: cannot store it ({exc.strerror})")
            raise flight.error from None
        finally:
            flight.meter.finish()
            if keep:
                log.info("model %s: %d bytes kept to resume", redact_url(ref.url), partials.size(key))
            else:
                partials.discard(key)
            with self._lock:
                if keep:
                    self._parked[key] = partials.size(key)
                self._flights.pop(ref.key, None)
                flight.reserved = 0
                flight.entry = self._entries.get(ref.key)
            flight.done.set()
        log.info("model %s fetched: %d bytes, sha256 %s", entry.source, entry.size, entry.sha256)
        if self.store is not None:
            self.store.put_later(entry, self._file(entry))
        return Acquired(
            entry=entry,
            fetched=True,
            seconds=time.monotonic() - started,
            resumed=done.resumed,
            resumed_from=done.resumed_from,
        )

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

    def _reserve(self, ref: ModelRef, flight: Flight, wanted: int, needed: int) -> int:
        """Grant this download room for `wanted` bytes in all, at least `needed`, evicting unpinned
        parts left to resume first, then files least recently used."""
        shown = redact_url(ref.url)
        if needed > self.budget_bytes:
            raise ModelTooLarge(
                f"model {shown} is larger than the model cache's {self.budget_bytes} bytes (MODEL_CACHE_BYTES)"
            )
        wanted = min(max(wanted, needed), self.budget_bytes)
        with self._lock:
            others = sum(f.reserved for f in self._flights.values() if f is not flight)
            used = sum(e.size for e in self._entries.values() if not e.stored) + sum(self._parked.values())
            for parked in list(self._parked):
                if used + others + wanted <= self.budget_bytes:
                    break
                used -= self._parked.pop(parked)
                self._partials.discard(parked)
                log.info("a partial download (%s) removed to make room for %s", parked, shown)
            evicted = False
            for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
                if used + others + wanted <= self.budget_bytes:
                    break
                if not self._pins.get(entry.key) and not entry.stored:
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

    def _file(self, entry: Entry) -> Path:
        return self.root / entry.folder / entry.key / entry.filename

    def _remove(self, entry: Entry) -> None:
        del self._entries[entry.key]
        shutil.rmtree(self.root / entry.folder / entry.key, ignore_errors=True)

    def _save(self) -> None:
        self._dirty_since = None
        index.save(self.root, list(self._entries.values()))

    def _load(self) -> None:
        """Read the index and make the folders agree with it (see the module's contract)."""
        self._entries = index.load(self.root)
        used = sum(e.size for e in self._entries.values() if not e.stored)
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            if used <= self.budget_bytes:
                break
            if entry.stored:
                continue
            self._remove(entry)
            used -= entry.size
        self._parked = self._partials.sweep(max_age_s=MAX_AGE_S, room=self.budget_bytes - used)
        self._save()
