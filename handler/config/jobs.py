"""Settings of async jobs: the queue and store backends (local, or Cloud Tasks and Cloud Storage),
attempts, leases, retention, and how results are handed out. One section of `Settings`
(handler/config/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from handler.config.declare import Section, setting


@dataclass(frozen=True, kw_only=True)
class JobSettings(Section):
    """Locally, jobs are queued in SQLite and stored under `STATE_DIR`; on Google Cloud, Cloud
    Tasks queues them (one queue per priority, named `<TASKS_QUEUE_PREFIX>-<priority>`) and Cloud
    Storage keeps them (docs/async.md)."""

    TITLE: ClassVar[str] = "Async jobs"

    queue_backend: str = setting(
        env="QUEUE_BACKEND",
        default="local",
        choices=("local", "cloudtasks"),
        shown="local; cloudtasks when `TASKS_LOCATION` is set",
        help="where jobs and webhook deliveries are queued",
    )
    storage_backend: str = setting(
        env="STORAGE_BACKEND",
        default="local",
        choices=("local", "gcs"),
        shown="local; gcs when `GCS_BUCKET` is set",
        help="where jobs and their outputs are stored",
    )
    gcs_bucket: str | None = setting(
        env="GCS_BUCKET", default=None, help="the Cloud Storage bucket for jobs and outputs"
    )
    tasks_location: str | None = setting(env="TASKS_LOCATION", default=None, help="the Cloud Tasks region")
    tasks_queue_prefix: str = setting(
        env="TASKS_QUEUE_PREFIX", default="comfyui", help="Cloud Tasks queues are named `<prefix>-<priority>`"
    )
    tasks_service_account: str | None = setting(
        env="TASKS_SERVICE_ACCOUNT",
        default=None,
        help="the identity Cloud Tasks calls us with (its OIDC token's email)",
    )
    tasks_dispatch_deadline_s: int = setting(
        env="TASKS_DISPATCH_DEADLINE_S",
        default=1800,
        help="how long Cloud Tasks waits for one delivery (1800, Cloud Tasks' cap for HTTP targets, is also the "
        "maximum); an async `timeout` above it minus 120 s is refused",
    )
    tasks_emulator_host: str | None = setting(
        env="CLOUD_TASKS_EMULATOR_HOST", default=None, help="a Cloud Tasks emulator (plain gRPC, no credentials)"
    )
    storage_emulator_host: str | None = setting(
        env="STORAGE_EMULATOR_HOST",
        default=None,
        help="a Cloud Storage emulator such as fake-gcs-server: anonymous, no URL signing",
    )
    job_max_attempts: int = setting(
        env="JOB_MAX_ATTEMPTS", default=5, at_least=1, help="runs of one job before a transient failure is final"
    )
    job_lease_ttl_s: float = setting(
        env="JOB_LEASE_TTL_S",
        default=60.0,
        at_least=1.0,
        help="a run's lease on its job (seconds); the run renews it every quarter of this",
    )
    job_id_secret: str | None = setting(
        env="JOB_ID_SECRET",
        default=None,
        secret=True,
        shown="one kept in the store",
        help="keys the ids of jobs made from client-created tasks",
    )
    output_retention_days: float = setting(
        env="OUTPUT_RETENTION_DAYS",
        default=7.0,
        help="outputs of final jobs are kept this long (records 30 days); a job's request and images go as soon "
        "as it is final",
    )
    gcs_object_write_interval_s: float = setting(
        env="GCS_OBJECT_WRITE_INTERVAL_S",
        default=1.0,
        help="least time between two writes of one job record on Cloud Storage (its per-object limit)",
    )
    signed_url_ttl_s: int = setting(
        env="SIGNED_URL_TTL_S",
        default=7 * 24 * 3600,
        shown="604800 (7 days)",
        help="lifetime of the signed URLs of outputs (job results and `url` delivery)",
    )
    inline_max_bytes: int = setting(
        env="INLINE_MAX_BYTES",
        default=4 * 1024 * 1024,
        help="a job's status embeds its outputs as base64 (`inline`) only up to this many bytes in all",
    )
