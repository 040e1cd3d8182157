"""How job ids reach a runner; see base.TaskQueue."""

from __future__ import annotations

from handler.config import Settings
from handler.taskqueue.base import PRIORITIES, Claim, PullQueue, TaskQueue, check_priority

__all__ = ["PRIORITIES", "Claim", "PullQueue", "TaskQueue", "check_priority", "from_settings", "outbox_from_settings"]


def from_settings(settings: Settings) -> TaskQueue:
    if settings.queue_backend == "cloudtasks":
        from handler.taskqueue.cloudtasks import CloudTasksQueue  # lazily: the local mode needs no gRPC

        return CloudTasksQueue(settings)
    from handler.taskqueue.local import LocalQueue

    return LocalQueue(settings.state_dir / "queue.sqlite")


def outbox_from_settings(settings: Settings) -> TaskQueue:
    """The webhook outbox's queue: Cloud Tasks' webhooks queue, or a second local SQLite queue."""
    if settings.queue_backend == "cloudtasks":
        from handler.taskqueue.cloudtasks import WEBHOOKS_LANE, CloudTasksQueue

        return CloudTasksQueue(settings, lane=WEBHOOKS_LANE)
    from handler.taskqueue.local import LocalQueue

    return LocalQueue(settings.state_dir / "outbox.sqlite")
