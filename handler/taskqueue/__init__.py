"""How job ids reach a runner; see base.TaskQueue."""

from __future__ import annotations

from pathlib import Path

from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.taskqueue.base import PRIORITIES, Claim, PullQueue, TaskQueue, check_priority

__all__ = ["PRIORITIES", "Claim", "PullQueue", "TaskQueue", "check_priority", "from_settings", "outbox_from_settings"]


def from_settings(*, jobs: JobSettings, cloud: CloudSettings, state_dir: Path) -> TaskQueue:
    """The job queue QUEUE_BACKEND names: Cloud Tasks, or a local SQLite queue under `state_dir`."""
    if jobs.queue_backend == "cloudtasks":
        from handler.taskqueue.cloudtasks import CloudTasksQueue  # lazily: the local mode needs no gRPC

        return CloudTasksQueue(jobs=jobs, cloud=cloud)
    from handler.taskqueue.local import LocalQueue

    return LocalQueue(state_dir / "queue.sqlite")


def outbox_from_settings(*, jobs: JobSettings, cloud: CloudSettings, state_dir: Path) -> TaskQueue:
    """The webhook outbox's queue: Cloud Tasks' webhooks queue, or a second local SQLite queue."""
    if jobs.queue_backend == "cloudtasks":
        from handler.taskqueue.cloudtasks import WEBHOOKS_LANE, CloudTasksQueue

        return CloudTasksQueue(jobs=jobs, cloud=cloud, lane=WEBHOOKS_LANE)
    from handler.taskqueue.local import LocalQueue

    return LocalQueue(state_dir / "outbox.sqlite")
