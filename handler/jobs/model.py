"""A job: its record, its states and the pure transitions between them.

    queued ──claim──▶ placed ──ComfyUI starts it──▶ running ──▶ succeeded | failed | cancelled
       ▲                 │  (or straight to an end) │
       └──── hand back ──┴──────────────────────────┘   (ComfyUI restarting, shutdown, a lost lease)

`placed`: a run holds the job's lease and its prompt is (about to be) in ComfyUI's own queue,
not executing yet; `running`: ComfyUI is executing it (`started_at`). Both are *active*: they
hold a lease, can be cancelled, and are recovered alike when their run dies. `placed_at` is
when the run claimed the job.

Nothing here does I/O: the repository stores these records, the runner drives them. One rule
decides what counts as an attempt: a run that was *claimed* counts, unless it was handed back
because this process shut down (the job was not at fault). A run killed without a word (kill
-9) counts, because nobody can tell.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

LEASE_TTL_S = 60.0  # a run renews its lease every LEASE_TTL_S / 4


class JobState(str, enum.Enum):
    """The one list of job states (the OpenAPI enum and the docs' table follow it), in order."""

    QUEUED = "queued"  # in the service's line
    PLACED = "placed"  # claimed by a run: in ComfyUI's queue, not executing yet
    RUNNING = "running"  # ComfyUI is executing it
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    @property
    def active(self) -> bool:
        """A run holds the job's lease: placed in ComfyUI or running there."""
        return self in ACTIVE_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.PLACED, JobState.RUNNING})


class WebhookState(str, enum.Enum):
    PENDING = "pending"  # the job is final and its event is in the outbox
    DELIVERED = "delivered"
    FAILED = "failed"  # the receiver refused it for good, or the retry window closed


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


@dataclass
class Lease:
    owner: str
    token: str  # names this run: its outputs live under outputs/{job}/{token}/
    expires_at: float

    def alive(self, at: float) -> bool:
        return self.expires_at > at


@dataclass
class Job:
    job_id: str
    priority: str = "normal"
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    placed_at: float | None = None  # the current (or last) run claimed it
    started_at: float | None = None  # ComfyUI began executing that run's prompt
    finished_at: float | None = None
    attempts: int = 0
    source: str = "api"  # api | cloudtasks (a task that targeted /predict itself)
    task: str | None = None  # that task's queue/name
    # Whose job it is (handler/access/): "key:<id>", "iam:<email>"; None: an admin's only.
    caller: str | None = None
    confined: bool = False  # PredictRequest.confined: its caller's raw graph
    base_url: str | None = None  # how the submitter reached us: for links in webhooks
    inline: bool = False
    timeout_s: float | None = None
    webhook_url: str | None = None
    webhook_id: str | None = None
    webhook: dict[str, Any] | None = None  # {"state": WebhookState, "attempts", "last_status", …}
    cancel_requested: bool = False
    lease: Lease | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None  # the latest transient failure
    revision: str = ""  # set by every write: lets a writer recognise its own committed write

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        values = {k: v for k, v in data.items() if k in _JOB_FIELDS}
        values["state"] = JobState(values.get("state", "queued"))
        lease = values.get("lease")
        values["lease"] = Lease(**lease) if isinstance(lease, dict) else None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """For the store: shallow (it is serialised at once), not `asdict`'s deep copy of results."""
        data = {name: getattr(self, name) for name in _JOB_FIELDS}
        data["state"] = self.state.value
        data["lease"] = asdict(self.lease) if self.lease is not None else None
        return data

    @property
    def final(self) -> bool:
        return self.state.final

    def lease_alive(self, at: float) -> bool:
        return self.lease is not None and self.lease.alive(at)

    # --- transitions: each changes the record in place and says nothing about storage

    def claim(self, owner: str, token: str, at: float, ttl_s: float = LEASE_TTL_S) -> None:
        """A run takes the job: placed, not running until ComfyUI starts it (`start`)."""
        self.state = JobState.PLACED
        self.attempts += 1
        self.placed_at = at
        self.started_at = None
        self.lease = Lease(owner, token, at + ttl_s)

    def start(self, at: float) -> None:
        """ComfyUI began executing the placed job's prompt."""
        assert self.state is JobState.PLACED
        self.state = JobState.RUNNING
        self.started_at = at

    def finish(
        self, state: JobState, *, error: dict[str, Any] | None = None, result: dict[str, Any] | None = None
    ) -> None:
        assert state.final
        self.state = state
        self.finished_at = now()
        self.lease = None
        self.error = error
        self.result = result
        if self.webhook_url:
            self.webhook = {"state": WebhookState.PENDING.value, "attempts": 0}

    def hand_back(self, reason: dict[str, Any], *, counts: bool) -> None:
        """Back in line, keeping its place. `counts`: whether the run was an attempt."""
        self.state = JobState.QUEUED
        self.lease = None
        self.last_error = reason
        if not counts:
            self.attempts = max(0, self.attempts - 1)

    def owned_by(self, token: str) -> bool:
        return self.state.active and self.lease is not None and self.lease.token == token


_JOB_FIELDS = tuple(f.name for f in fields(Job))
