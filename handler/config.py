"""All configuration, read from the environment in one place.

Every module takes a `Settings` (or the part of it it needs); nothing else reads `os.environ`.
"""

from __future__ import annotations

import enum
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


class ServiceRole(str, enum.Enum):
    """What this process serves (docs/architecture.md, "Roles")."""

    ALL = "all"  # everything in one process: the local, embedded mode
    API = "api"  # no ComfyUI, CPU only: async submits, status, cancel, listings, webhook delivery
    WORKER = "worker"  # ComfyUI on the GPU: sync /predict, /healthz, /models, /tasks/run

    @property
    def runs_comfy(self) -> bool:
        return self is not ServiceRole.API

    @property
    def accepts_jobs(self) -> bool:
        return self is not ServiceRole.WORKER


# Cloud Run refuses a request body over 32 MiB (HTTP/1) before it reaches the service.
CLOUD_RUN_MAX_REQUEST_BYTES = 32 * 1024 * 1024


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    # --- the HTTP service
    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "INFO"
    request_timeout_s: float = 600.0  # default per-request deadline for /predict
    max_request_timeout_s: float = 3600.0  # the most a caller may ask for
    max_body_bytes: int = 64 * 1024 * 1024  # in cloud mode: CLOUD_RUN_MAX_REQUEST_BYTES
    # Answers above this size go out chunked: Cloud Run refuses an HTTP/1 answer over 32 MiB
    # that has a Content-Length (handler/routes/delivery.py).
    chunked_above_bytes: int = 16 * 1024 * 1024
    warmup_workflow: Path | None = None
    models_cache_ttl_s: float = 300.0
    model_type: str = "base"
    # Cloud Run sets K_SERVICE; cloud mode demands https URLs and verifies task tokens.
    cloud_mode: bool = False
    # Threads for long runs (sync /predict, jobs), apart from anyio's default pool.
    long_run_threads: int = 100
    # How long a prompt may wait in ComfyUI's queue before it starts; `timeout` counts from its start.
    queue_wait_timeout_s: float = 600.0
    # Reading a request: the whole body, and the request line + headers.
    body_read_timeout_s: float = 30.0
    header_read_timeout_s: float = 10.0
    # After SIGTERM: how long uvicorn waits for answers in flight (Cloud Run kills at 10 s).
    shutdown_grace_s: float = 6.0
    # Logs: "json" (one object per line for Cloud Logging; the default on Cloud Run) or "text".
    log_format: str = "text"
    # One line per request (httpRequest in JSON): on with JSON logs or LOG_LEVEL=DEBUG, or ACCESS_LOG.
    access_log: bool = False
    # Counting for /metrics and the dashboard's latency and recent runs (METRICS=false: none of
    # it, /metrics answers 404). Request ids and log context are not metrics: they stay on.
    metrics: bool = True
    # Set with several uvicorn processes: metrics are kept in files there (prometheus-client's
    # multiprocess mode reads PROMETHEUS_MULTIPROC_DIR itself, at import).
    metrics_multiproc_dir: Path | None = None

    # --- ComfyUI, booted as a child process or attached to by URL
    comfyui_path: Path | None = None
    comfyui_python: str = sys.executable
    comfyui_args: tuple[str, ...] = ()
    # Extra environment variables ComfyUI gets (names, or prefixes ending in "*"): supervisor.comfy_env.
    comfyui_env_passthrough: tuple[str, ...] = ()
    comfyui_url: str | None = None
    comfyui_port: int = 8188
    comfy_log_level: str = "INFO"
    state_dir: Path = Path(".state")
    # Only used when attached by URL: where that ComfyUI keeps its files, if this machine sees them.
    comfyui_input_dir: Path | None = None
    comfyui_output_dir: Path | None = None
    comfyui_temp_dir: Path | None = None
    comfyui_restart_backoff_s: float = 1.0
    comfyui_restart_backoff_max_s: float = 30.0
    ws_reconnect_attempts: int = 5
    ws_reconnect_delay_s: float = 3.0
    ws_trace: bool = False

    # --- fetching input images by URL (and calling webhooks)
    url_allowlist: tuple[str, ...] = ()  # hosts or CIDRs exempt from the private-address check
    url_fetch_timeout_s: float = 30.0
    max_input_bytes: int = 50 * 1024 * 1024

    # --- async jobs
    queue_backend: str = "local"  # local | cloudtasks
    storage_backend: str = "local"  # local | gcs
    gcs_bucket: str | None = None
    gcp_project: str | None = None
    tasks_location: str | None = None
    tasks_queue_prefix: str = "comfyui"
    tasks_service_account: str | None = None  # the OIDC identity Cloud Tasks calls us with
    service_url: str | None = None  # our own URL: OIDC audience of tasks sent to us
    service_role: ServiceRole = ServiceRole.ALL
    api_url: str | None = None  # where webhook tasks go (the api role); default SERVICE_URL
    worker_url: str | None = None  # where job tasks and sync calls go (the worker role); default SERVICE_URL
    tasks_emulator_host: str | None = None
    tasks_dispatch_deadline_s: int = 1800  # Cloud Tasks caps HTTP tasks at 30 minutes
    storage_emulator_host: str | None = None  # fake-gcs-server etc.: anonymous, no signing
    job_max_attempts: int = 5  # runs of one async job before a transient failure is final
    gcs_object_write_interval_s: float = 1.0  # Cloud Storage takes about one write a second per object
    output_retention_days: float = 7.0  # outputs of final jobs; requests go when the job is final
    failpoint_kill: str | None = None  # tests only: handler/failpoints.py
    trace_out: Path | None = None  # bench/run.py --trace: handler/benchtrace.py
    job_lease_ttl_s: float = 60.0  # a run renews its lease every quarter of this
    job_id_secret: str | None = field(default=None, repr=False)  # else one kept in the store
    # Task tokens: checked when set (cloud mode); Cloud Run's IAM checks signatures in front of
    # us and strips them (K_SERVICE set, unless PUBLIC_SERVICE), so then a stripped token is fine.
    verify_task_tokens: bool = False
    ingress_verifies_tokens: bool = False
    signed_url_ttl_s: int = 7 * 24 * 3600
    inline_max_bytes: int = 4 * 1024 * 1024
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_max_attempts: int = 10  # tries of one webhook, spread by backoff (WEBHOOK_BACKOFF_S doubling)
    webhook_timeout_s: float = 10.0
    webhook_backoff_s: float = 1.0

    # --- named workflows
    workflows_dir: Path = Path("workflows")

    # --- models
    models_file: Path = Path("models.txt")
    models_source: str | None = None  # gs://bucket/prefix or a mounted folder, for runtime models
    # Where ComfyUI's models live when not in COMFYUI_PATH/models (passed as --models-directory).
    models_dir: Path | None = None
    hf_token: str | None = field(default=None, repr=False)
    # The worker must run on a GPU: boot fails at once, saying why, when none is usable.
    require_gpu: bool = False

    @property
    def comfyui_base_dir(self) -> Path:
        """Folders the service owns for a ComfyUI it boots: input/, output/, temp/."""
        return (self.state_dir / "comfyui").resolve()

    @property
    def comfyui_models_dir(self) -> Path | None:
        """Where the models of a booted ComfyUI live (MODELS_DIR, else COMFYUI_PATH/models)."""
        if self.models_dir is not None:
            return self.models_dir
        return self.comfyui_path / "models" if self.comfyui_path else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        @overload
        def get(name: str) -> str | None: ...
        @overload
        def get(name: str, default: str) -> str: ...
        @overload
        def get(name: str, default: str | None) -> str | None: ...
        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(name)
            return default if value is None or value == "" else value

        def number(name: str, default: float, kind: Callable[[str], float] = float) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None
            if value < 0:
                raise ConfigError(f"{name} must not be negative, got {raw!r}")
            return value

        def path(name: str, default: str | None = None) -> Path | None:
            raw = get(name, default)
            return Path(raw) if raw else None

        def path_or(name: str, default: str) -> Path:
            # `default` is never empty, so neither is what `get` gives back.
            return Path(get(name, default))

        gcs_bucket = get("GCS_BUCKET")
        cloud_mode = _bool(get("CLOUD_MODE"), default=bool(get("K_SERVICE")))
        queue_backend = get("QUEUE_BACKEND", "cloudtasks" if get("TASKS_LOCATION") else "local")
        storage_backend = get("STORAGE_BACKEND", "gcs" if gcs_bucket else "local")
        if queue_backend not in {"local", "cloudtasks"}:
            raise ConfigError(f"QUEUE_BACKEND must be local or cloudtasks, got {queue_backend!r}")
        if storage_backend not in {"local", "gcs"}:
            raise ConfigError(f"STORAGE_BACKEND must be local or gcs, got {storage_backend!r}")
        try:
            role = ServiceRole(get("SERVICE_ROLE", "all"))
        except ValueError:
            raise ConfigError(f"SERVICE_ROLE must be all, api or worker, got {get('SERVICE_ROLE')!r}") from None
        if role is ServiceRole.API and queue_backend != "cloudtasks":
            raise ConfigError("SERVICE_ROLE=api needs Cloud Tasks (QUEUE_BACKEND=cloudtasks): workers run elsewhere")
        service_url = (get("SERVICE_URL") or "").rstrip("/") or None
        api_url = (get("API_URL") or "").rstrip("/") or service_url
        worker_url = (get("WORKER_URL") or "").rstrip("/") or service_url
        # A task's token is minted for the URL it targets and checked against SERVICE_URL where it
        # lands: a role that receives job tasks (all, worker) must be WORKER_URL, one that receives
        # webhook tasks (all, api) API_URL, or every delivery is refused (401) and retried for a day.
        if queue_backend == "cloudtasks" and service_url:
            receives = {ServiceRole.ALL: ("WORKER_URL", "API_URL"), ServiceRole.WORKER: ("WORKER_URL",)}
            urls = {"WORKER_URL": worker_url, "API_URL": api_url}
            for name in receives.get(role, ("API_URL",)):
                if urls[name] != service_url:
                    raise ConfigError(
                        f"SERVICE_ROLE={role.value} receives the tasks sent to {name}, so {name} "
                        f"({urls[name]}) must be this service's SERVICE_URL ({service_url})"
                    )
        if storage_backend == "gcs" and not gcs_bucket:
            raise ConfigError("STORAGE_BACKEND=gcs needs GCS_BUCKET")
        log_format = (get("LOG_FORMAT") or ("json" if get("K_SERVICE") else "text")).lower()
        if log_format not in {"json", "text"}:
            raise ConfigError(f"LOG_FORMAT must be json or text, got {log_format!r}")

        return cls(
            host=get("HOST", "0.0.0.0"),
            port=int(number("PORT", 8080, int)),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            request_timeout_s=number("REQUEST_TIMEOUT_S", 600.0),
            max_request_timeout_s=number("MAX_REQUEST_TIMEOUT_S", 3600.0),
            max_body_bytes=int(
                number("MAX_BODY_BYTES", CLOUD_RUN_MAX_REQUEST_BYTES if cloud_mode else 64 * 1024 * 1024, int)
            ),
            chunked_above_bytes=int(number("CHUNKED_ABOVE_BYTES", 16 * 1024 * 1024, int)),
            warmup_workflow=path("WARMUP_WORKFLOW"),
            models_cache_ttl_s=number("MODELS_CACHE_TTL_S", 300.0),
            model_type=get("MODEL_TYPE", "base"),
            cloud_mode=cloud_mode,
            long_run_threads=max(1, int(number("LONG_RUN_THREADS", 100, int))),
            queue_wait_timeout_s=number("QUEUE_WAIT_TIMEOUT_S", 600.0),
            body_read_timeout_s=number("BODY_READ_TIMEOUT_S", 30.0),
            header_read_timeout_s=number("HEADER_READ_TIMEOUT_S", 10.0),
            shutdown_grace_s=number("SHUTDOWN_GRACE_S", 6.0),
            log_format=log_format,
            access_log=_bool(get("ACCESS_LOG"), default=log_format == "json" or get("LOG_LEVEL", "") == "DEBUG"),
            metrics=_bool(get("METRICS"), default=True),
            metrics_multiproc_dir=path("PROMETHEUS_MULTIPROC_DIR"),
            comfyui_path=path("COMFYUI_PATH"),
            comfyui_python=get("COMFYUI_PYTHON", sys.executable),
            comfyui_args=tuple(shlex.split(get("COMFYUI_ARGS", ""))),
            comfyui_env_passthrough=_list(get("COMFYUI_ENV_PASSTHROUGH")),
            comfyui_url=(get("COMFYUI_URL") or "").rstrip("/") or None,
            comfyui_port=int(number("COMFYUI_PORT", 8188, int)),
            comfy_log_level=get("COMFY_LOG_LEVEL", "INFO").upper(),
            state_dir=path_or("STATE_DIR", ".state"),
            comfyui_input_dir=path("COMFYUI_INPUT_DIR"),
            comfyui_output_dir=path("COMFYUI_OUTPUT_DIR"),
            comfyui_temp_dir=path("COMFYUI_TEMP_DIR"),
            comfyui_restart_backoff_s=number("COMFYUI_RESTART_BACKOFF_S", 1.0),
            comfyui_restart_backoff_max_s=number("COMFYUI_RESTART_BACKOFF_MAX_S", 30.0),
            ws_reconnect_attempts=int(number("WEBSOCKET_RECONNECT_ATTEMPTS", 5, int)),
            ws_reconnect_delay_s=number("WEBSOCKET_RECONNECT_DELAY_S", 3.0),
            ws_trace=_bool(get("WEBSOCKET_TRACE")),
            url_allowlist=_list(get("URL_ALLOWLIST")),
            url_fetch_timeout_s=number("URL_FETCH_TIMEOUT_S", 30.0),
            max_input_bytes=int(number("MAX_INPUT_BYTES", 50 * 1024 * 1024, int)),
            queue_backend=queue_backend,
            storage_backend=storage_backend,
            gcs_bucket=gcs_bucket,
            gcp_project=get("GOOGLE_CLOUD_PROJECT") or get("GCP_PROJECT"),
            tasks_location=get("TASKS_LOCATION"),
            tasks_queue_prefix=get("TASKS_QUEUE_PREFIX", "comfyui"),
            tasks_service_account=get("TASKS_SERVICE_ACCOUNT"),
            service_url=service_url,
            service_role=role,
            api_url=api_url,
            worker_url=worker_url,
            tasks_emulator_host=get("CLOUD_TASKS_EMULATOR_HOST"),
            tasks_dispatch_deadline_s=int(number("TASKS_DISPATCH_DEADLINE_S", 1800, int)),
            storage_emulator_host=get("STORAGE_EMULATOR_HOST"),
            job_max_attempts=max(1, int(number("JOB_MAX_ATTEMPTS", 5, int))),
            output_retention_days=number("OUTPUT_RETENTION_DAYS", 7.0),
            gcs_object_write_interval_s=number("GCS_OBJECT_WRITE_INTERVAL_S", 1.0),
            job_lease_ttl_s=max(1.0, number("JOB_LEASE_TTL_S", 60.0)),
            failpoint_kill=get("FAILPOINT_KILL"),
            trace_out=path("TRACE_OUT"),
            job_id_secret=get("JOB_ID_SECRET"),
            verify_task_tokens=_bool(get("VERIFY_TASK_TOKENS"), default=cloud_mode),
            ingress_verifies_tokens=_bool(
                get("INGRESS_VERIFIES_TOKENS"), default=bool(get("K_SERVICE")) and not _bool(get("PUBLIC_SERVICE"))
            ),
            signed_url_ttl_s=int(number("SIGNED_URL_TTL_S", 7 * 24 * 3600, int)),
            inline_max_bytes=int(number("INLINE_MAX_BYTES", 4 * 1024 * 1024, int)),
            webhook_secret=get("WEBHOOK_SECRET"),
            webhook_max_attempts=max(1, int(number("WEBHOOK_MAX_ATTEMPTS", 10, int))),
            webhook_timeout_s=number("WEBHOOK_TIMEOUT_S", 10.0),
            webhook_backoff_s=number("WEBHOOK_BACKOFF_S", 1.0),
            workflows_dir=path_or("WORKFLOWS_DIR", "workflows"),
            models_file=path_or("MODELS_FILE", "models.txt"),
            models_source=get("MODELS_SOURCE"),
            models_dir=path("MODELS_DIR"),
            hf_token=get("HF_TOKEN"),
            # `--cpu` in COMFYUI_ARGS is an explicit CPU run: it needs no GPU, whatever REQUIRE_GPU says.
            require_gpu=_bool(get("REQUIRE_GPU")) and "--cpu" not in shlex.split(get("COMFYUI_ARGS", "") or ""),
        )
