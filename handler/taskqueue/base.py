"""The `TaskQueue` interface: how a job id reaches whoever runs it.

A queue carries only job ids; the job itself (request, state, results) lives in the Store.
Enqueueing one id twice is harmless: both backends keep one entry per job id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

PRIORITIES = ("high", "normal", "low")  # in the order they are served


def check_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    return priority


@runtime_checkable
class TaskQueue(Protocol):
    def enqueue(self, job_id: str, priority: str = "normal") -> None:
        """Schedule a run of the job. Idempotent per job id."""

    def close(self) -> None: ...

    def pull_queue(self) -> PullQueue | None:
        """This queue as one this process drains itself, or None where another service pushes
        its tasks (Cloud Tasks)."""


@dataclass(frozen=True)
class Claim:
    """A job taken from a local queue; it stays recorded until done() or release()."""

    job_id: str
    priority: str
    deliveries: int  # 1 on the first claim, more after a release or a restart


@runtime_checkable
class PullQueue(TaskQueue, Protocol):
    """A queue this process drains itself (the local backend); Cloud Tasks pushes instead."""

    def next(self, timeout: float | None = None) -> Claim | None:
        """Block until a job is ready: strict priority, FIFO within a priority. None after
        `timeout`, or once `stop_waiting` was called."""

    def stop_waiting(self) -> None:
        """Wake every `next` for good (the process is stopping): no thread polls for that."""

    def enqueue(self, job_id: str, priority: str = "normal", delay_s: float = 0.0) -> None:
        """Schedule a run of the job, ready after `delay_s`. Idempotent per job id."""

    def enqueue_claimed(self, job_id: str, priority: str = "normal") -> Claim:
        """Record a job this process claims as it queues it (it starts at once): a restart
        voids the claim like any other, and the job is ready again."""

    def done(self, job_id: str) -> None:
        """The job reached a final state (or was cancelled): forget it."""

    def release(self, job_id: str, delay_s: float = 0.0) -> None:
        """Put a claimed job back, keeping its place in line, ready after `delay_s`."""

    def remove(self, job_id: str) -> bool:
        """Drop a job that was not claimed yet; False if it was claimed or is unknown."""

    def pending(self) -> dict[str, int]:
        """How many jobs wait, per priority (claimed ones not counted)."""
