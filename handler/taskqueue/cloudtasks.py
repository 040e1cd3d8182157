"""Cloud Tasks as the queue: one queue per priority, each task a POST to our own /tasks/run.

A task carries only `{"job_id": …}` (Cloud Tasks caps a task at 1 MB; the request and its
images were stored before the task was created). The task is named after the job, so
creating it twice is refused by Cloud Tasks as ALREADY_EXISTS, which we treat as success.
Cloud Tasks authenticates to the service with an OIDC token for `tasks_service_account`
whose audience is `service_url`; /tasks/run verifies both.

Cloud Tasks has no per-task priority. Priority is the choice of queue, and what a queue may
dispatch at once is what makes "high" go first: see docs/async.md and QUEUE_LIMITS.
"""

from __future__ import annotations

import json
import logging
import re

from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from google.protobuf import duration_pb2

from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.taskqueue.base import PRIORITIES, check_priority

log = logging.getLogger(__name__)

MAX_DISPATCH_DEADLINE_S = 1800  # Cloud Tasks' cap for HTTP targets
MIN_DISPATCH_DEADLINE_S = 15

# (max dispatches per second, max concurrent dispatches) for queues we create ourselves.
QUEUE_LIMITS = {"high": (50.0, 100), "normal": (10.0, 20), "low": (1.0, 2), "webhooks": (50.0, 100)}

_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,500}$")


def task_id(job_id: str) -> str:
    """The task's name inside its queue: the job id itself (checked, not transformed)."""
    if not _TASK_ID.match(job_id):
        raise ValueError(f"job id {job_id!r} cannot name a Cloud Task")
    return job_id


WEBHOOKS_LANE = "webhooks"  # the outbox's queue: one task per job event, to /tasks/webhook


class CloudTasksQueue:
    """`lane=None`: the job queues, one per priority, to /tasks/run. `lane="webhooks"`: the
    outbox, one queue whatever the priority, to /tasks/webhook."""

    def __init__(
        self,
        *,
        jobs: JobSettings,
        cloud: CloudSettings,
        client: tasks_v2.CloudTasksClient | None = None,
        lane: str | None = None,
    ):
        missing = [
            name
            for name, value in (
                ("GOOGLE_CLOUD_PROJECT", cloud.gcp_project),
                ("TASKS_LOCATION", jobs.tasks_location),
                ("SERVICE_URL", cloud.service_url),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"QUEUE_BACKEND=cloudtasks needs {', '.join(missing)}")
        assert cloud.gcp_project and jobs.tasks_location  # checked just above: narrows the types
        self.project: str = cloud.gcp_project
        self.location: str = jobs.tasks_location
        self.prefix = jobs.tasks_queue_prefix
        self.lane = lane
        # Job tasks go to the workers, webhook tasks to the api role (one URL in role "all"); each
        # token's audience is the service it is sent to.
        target = (cloud.api_url if lane == WEBHOOKS_LANE else cloud.worker_url) or cloud.service_url
        self.target_url = f"{target}/tasks/{'webhook' if lane == WEBHOOKS_LANE else 'run'}"
        self.audience = target
        self.service_account = jobs.tasks_service_account
        self.deadline_s = max(MIN_DISPATCH_DEADLINE_S, min(jobs.tasks_dispatch_deadline_s, MAX_DISPATCH_DEADLINE_S))
        if client is None:
            client = _client(jobs.tasks_emulator_host)
        self.client = client

    def queue_path(self, priority: str) -> str:
        name = self.lane or check_priority(priority)
        return self.client.queue_path(self.project, self.location, f"{self.prefix}-{name}")

    def task_path(self, job_id: str, priority: str) -> str:
        return f"{self.queue_path(priority)}/tasks/{task_id(job_id)}"

    def build_task(self, job_id: str, priority: str) -> tasks_v2.Task:
        request = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=self.target_url,
            headers={"Content-Type": "application/json"},
            body=json.dumps({"job_id": job_id}).encode(),
        )
        if self.service_account:
            request.oidc_token = tasks_v2.OidcToken(service_account_email=self.service_account, audience=self.audience)
        return tasks_v2.Task(
            name=self.task_path(job_id, priority),
            http_request=request,
            dispatch_deadline=duration_pb2.Duration(seconds=self.deadline_s),
        )

    def enqueue(self, job_id: str, priority: str = "normal") -> None:
        task = self.build_task(job_id, priority)
        try:
            self.client.create_task(parent=self.queue_path(priority), task=task)
        except gexc.AlreadyExists:
            log.info("task for job %s already exists", job_id)

    def cancel(self, job_id: str, priority: str) -> bool:
        """Delete the job's task so it is never dispatched; False when that cannot be done
        (already running, already gone, or not supported), and the job's state decides."""
        try:
            self.client.delete_task(name=self.task_path(job_id, priority))
            return True
        except gexc.GoogleAPICallError as exc:
            log.info("could not delete the task of job %s: %s", job_id, exc.message)
            return False

    def ensure_queues(self) -> list[str]:
        """Create the job queues and the webhooks queue when missing (what deploy.sh creates)."""
        created = []
        parent = self.client.common_location_path(self.project, self.location)
        for name in (*PRIORITIES, WEBHOOKS_LANE):
            rate, concurrent = QUEUE_LIMITS[name]
            queue = tasks_v2.Queue(
                name=self.client.queue_path(self.project, self.location, f"{self.prefix}-{name}"),
                rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=rate, max_concurrent_dispatches=concurrent),
                # The job bounds its own runs (JOB_MAX_ATTEMPTS) and then answers 2xx; the
                # queue's limit is only a backstop, so 409s from duplicates do not exhaust it.
                retry_config=tasks_v2.RetryConfig(
                    max_attempts=-1,
                    max_retry_duration=duration_pb2.Duration(seconds=24 * 3600),
                    # Short backoff: a task answered 429/503 comes back within seconds, so a
                    # freed GPU is not left idle while its queue backs off for minutes.
                    min_backoff=duration_pb2.Duration(seconds=1),
                    max_backoff=duration_pb2.Duration(seconds=10 if name != WEBHOOKS_LANE else 300),
                ),
            )
            try:
                self.client.create_queue(parent=parent, queue=queue)
                created.append(queue.name)
            except gexc.AlreadyExists:
                pass
        return created

    def pull_queue(self) -> None:
        return None  # Cloud Tasks pushes the tasks to /tasks/run and /tasks/webhook

    def close(self) -> None:
        transport = getattr(self.client, "transport", None)
        if transport is not None:
            transport.close()


def _client(emulator_host: str | None) -> tasks_v2.CloudTasksClient:
    if not emulator_host:
        return tasks_v2.CloudTasksClient()
    # The emulator speaks plain gRPC without credentials.
    import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints (no types-grpcio here)
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(emulator_host.removeprefix("http://"))
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
