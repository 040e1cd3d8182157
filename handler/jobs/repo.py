"""Job records in the Store: create, read, and change them by compare-and-swap.

`jobs/{id}.json` is the truth; every change is a read-change-write on its generation, so two
writers never both win. Each write stamps a fresh `revision`: when a write's answer is lost
(a timeout after the object was committed), re-reading tells whether it was ours, instead of
taking our own write for a competitor's. A change starts from this process's own last write of
the job when it has one (no read: on Cloud Storage a round trip per state change); only a write
that commits proves that view current, so a refused write, or a change that declines on it,
starts again from a read.

The request (with its images) is stored at `inputs/{id}/request.json` before the job exists.
A run's outputs go under `outputs/{id}/{run token}/…`: a run that lost its lease can never
overwrite the files of the run that took over, and only the owner publishes its keys.

With a push queue (Cloud Tasks), the store also keeps the line: `line/{rank}/{created}-{id}`
for every queued job, so a delivery can claim the highest-priority, oldest job, whatever job
its task named.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from handler import errors
from handler.jobs.model import Job
from handler.storage import PreconditionFailed, Store, Versioned
from handler.storage.base import dump_json
from handler.taskqueue import PRIORITIES

log = logging.getLogger("handler.jobs.repo")

CAS_ATTEMPTS = 20
KNOWN_WRITES = 1024  # jobs whose last write by this process is kept to start the next change from


class LeaseLost(Exception):
    """The run no longer owns the job: another delivery took it over."""


class LeaveUnchanged(Exception):
    """Raised inside a change function: leave the job as it is."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def job_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


def request_key(job_id: str) -> str:
    return f"inputs/{job_id}/request.json"


def outputs_prefix(job_id: str, run_token: str) -> str:
    return f"outputs/{job_id}/{run_token}/"


_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise errors.NotFound("no such job")
    return job_id


# Told of every committed write: (the job before it, or None for a new job; the job after it).
Observer = Callable[[Job | None, Job], None]


class JobRepo:
    def __init__(
        self, *, store: Store, keeps_line: bool, observer: Observer | None = None, min_write_interval_s: float = 0.0
    ):
        """`min_write_interval_s`: Cloud Storage takes about one write a second per object, so
        this process spaces its writes of one job record that far apart (1 s on GCS)."""
        self.store = store
        self.keeps_line = keeps_line
        self.observer = observer  # metrics: derived from state changes, here where they commit
        self.min_write_interval_s = min_write_interval_s
        self._last_write: OrderedDict[str, float] = OrderedDict()
        self._spacing = threading.Lock()
        self._known: OrderedDict[str, tuple[bytes, int]] = OrderedDict()  # key -> (our last write, its generation)
        self._known_lock = threading.Lock()

    def _space(self, key: str) -> None:
        if self.min_write_interval_s <= 0:
            return
        with self._spacing:
            last = self._last_write.get(key)
            wait = 0.0 if last is None else last + self.min_write_interval_s - time.monotonic()
            self._last_write[key] = time.monotonic() + max(0.0, wait)
            self._last_write.move_to_end(key)
            while len(self._last_write) > 1024:
                self._last_write.popitem(last=False)
        if wait > 0:
            time.sleep(wait)

    # --- reading

    def find(self, job_id: str) -> Job | None:
        found = self.store.get_json(job_key(check_job_id(job_id)))
        return None if found is None else Job.from_dict(found.data)

    def all(self) -> Iterator[Job]:
        """Every job record in the store (a full scan: start-up recovery and retention only)."""
        for key in self.store.list("jobs/"):
            job = self.find(key.removeprefix("jobs/").removesuffix(".json"))
            if job is not None:
                yield job

    def get(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            raise errors.NotFound("no such job")
        return job

    def request(self, job_id: str) -> dict[str, Any] | None:
        found = self.store.get_json(request_key(job_id))
        return None if found is None else found.data

    # --- writing

    def create(self, job: Job, request: dict[str, Any] | None) -> None:
        """Store the request (None: a job refused on arrival has none), then the job (must not
        exist yet), then its place in line if it is to run."""
        if request is not None:
            self.store.put_json(request_key(job.job_id), request)
        job.revision = uuid.uuid4().hex
        key = job_key(job.job_id)
        self._space(key)
        data = job.to_dict()
        try:
            generation = self.store.cas_json(key, data, generation=0)
        except PreconditionFailed:
            raise errors.Conflict("the job already exists") from None
        self._remember(key, data, generation)
        self._observe(None, job)
        if not job.final:
            self.join_line(job)

    def update(self, job_id: str, change: Callable[[Job], None]) -> Job:
        """Read, change, compare-and-swap; again from the top when someone else wrote first."""
        key = job_key(check_job_id(job_id))
        found = self._recall(key)
        recalled = found is not None  # `found` is our own last write, not yet a read
        for _ in range(CAS_ATTEMPTS):
            if found is None:
                found = self.store.get_json(key)
                if found is None:
                    raise errors.NotFound("no such job")
            job = Job.from_dict(found.data)
            before = Job.from_dict(found.data) if self.observer is not None else None
            try:
                change(job)
            except Exception:
                if recalled:  # declined on our own last write, which may be stale: decide on a read
                    found, recalled = None, False
                    continue
                raise
            job.updated_at = time.time()
            job.revision = uuid.uuid4().hex
            self._space(key)
            data = job.to_dict()
            try:
                generation = self.store.cas_json(key, data, generation=found.generation)
            except PreconditionFailed:
                current = self._read(key)
                if current is not None and current.data.get("revision") == job.revision:
                    return self._observe(before, job)  # our write landed; only its answer was lost
                if recalled:  # our view was stale: start again from what the store holds now
                    found, recalled = current, False
                else:  # a competitor wrote in between: give it a moment, then read again
                    time.sleep(0.01)
                    found = None
                continue
            except Exception:
                if self._committed(key, job.revision):
                    return self._observe(before, job)
                raise
            self._remember(key, data, generation)
            return self._observe(before, job)
        raise errors.Conflict("the job is changing too often; try again")

    def _remember(self, key: str, data: dict[str, Any], generation: int) -> None:
        blob = dump_json(data)  # a copy: nothing the caller changes later reaches it
        with self._known_lock:
            self._known[key] = (blob, generation)
            self._known.move_to_end(key)
            while len(self._known) > KNOWN_WRITES:
                self._known.popitem(last=False)

    def _recall(self, key: str) -> Versioned | None:
        with self._known_lock:
            known = self._known.pop(key, None)  # taken: an update that fails leaves nothing stale behind
        return None if known is None else Versioned(json.loads(known[0]), known[1])

    def _observe(self, before: Job | None, after: Job) -> Job:
        if self.observer is not None:
            try:
                self.observer(before, after)
            except Exception:  # counting must never fail a committed write
                log.exception("the job observer failed")
        return after

    def _committed(self, key: str, revision: str) -> bool:
        found = self._read(key)
        return found is not None and found.data.get("revision") == revision

    def _read(self, key: str) -> Versioned | None:
        """The record as stored, or None when it is gone or cannot be read now."""
        try:
            return self.store.get_json(key)
        except Exception:
            return None

    # --- the line (push queues only)

    def _line_key(self, job: Job) -> str:
        rank = PRIORITIES.index(job.priority)
        return f"line/{rank}/{int(job.created_at * 1e6):020d}-{job.job_id}"

    def join_line(self, job: Job) -> None:
        if self.keeps_line:
            self.store.put_bytes(self._line_key(job), b"", "text/plain")

    def leave_line(self, job: Job) -> None:
        if self.keeps_line:
            try:
                self.store.delete(self._line_key(job))
            except Exception as exc:  # a stale entry is skipped by whoever finds it
                log.info("job %s: could not leave the line: %s", job.job_id, exc)

    def line(self) -> list[str]:
        """Queued job ids, highest priority first, oldest first within a priority."""
        return [key.rsplit("-", 1)[1] for key in self.store.list("line/")]

    # --- outputs

    def discard_outputs(self, job_id: str, run_token: str) -> None:
        try:
            self.store.delete_prefix(outputs_prefix(job_id, run_token))
        except Exception as exc:
            log.warning("job %s: could not remove a superseded run's outputs: %s", job_id, exc)
