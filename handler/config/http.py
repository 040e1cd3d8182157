"""Settings of the HTTP service: where it listens, how long a request may take, how big it may be,
how it shuts down. One section of `Settings` (handler/config/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from handler.config.declare import Section, setting

MiB = 1024 * 1024
# Cloud Run refuses a request body over 32 MiB (HTTP/1) before it reaches the service.
CLOUD_RUN_MAX_REQUEST_BYTES = 32 * MiB


@dataclass(frozen=True, kw_only=True)
class HttpSettings(Section):
    """A request too slow to arrive or too big is refused before it reaches a route; a sync
    `/predict` then answers within its `timeout`, counted from its prompt's start in ComfyUI."""

    TITLE: ClassVar[str] = "The HTTP service"

    host: str = setting(env="HOST", default="0.0.0.0", help="address the service listens on")
    port: int = setting(env="PORT", default=8080, help="port the service listens on (Cloud Run sets it)")
    state_dir: Path = setting(
        env="STATE_DIR",
        default=Path(".state"),
        help="ComfyUI's input/output/temp folders, the local queue and the local store",
    )
    request_timeout_s: float = setting(
        env="REQUEST_TIMEOUT_S", default=600.0, help="default per-request `timeout` of `/predict`"
    )
    max_request_timeout_s: float = setting(
        env="MAX_REQUEST_TIMEOUT_S", default=3600.0, help="the largest per-request `timeout` a caller may ask for"
    )
    queue_wait_timeout_s: float = setting(
        env="QUEUE_WAIT_TIMEOUT_S",
        default=600.0,
        help="longest wait in ComfyUI's queue before a prompt starts (then 503 `queue_timeout`); "
        "`timeout` counts from its start",
    )
    max_body_bytes: int = setting(
        env="MAX_BODY_BYTES",
        default=64 * MiB,
        shown="64 MiB; 32 MiB in cloud mode (what Cloud Run accepts)",
        help="largest request body",
    )
    chunked_above_bytes: int = setting(
        env="CHUNKED_ABOVE_BYTES",
        default=16 * MiB,
        help="sync answers above this go out chunked (Cloud Run refuses an HTTP/1 answer over 32 MiB that "
        "has a Content-Length)",
    )
    header_read_timeout_s: float = setting(
        env="HEADER_READ_TIMEOUT_S",
        default=10.0,
        help="a request's line and headers must arrive within this of its first byte (then 408)",
    )
    max_header_bytes: int = setting(
        env="MAX_HEADER_BYTES",
        default=64 * 1024,
        help="largest request line and headers together (then 431 and the connection closed); 0: no limit",
    )
    body_read_timeout_s: float = setting(
        env="BODY_READ_TIMEOUT_S", default=30.0, help="a request's whole body must arrive within this (then 408)"
    )
    shutdown_grace_s: float = setting(
        env="SHUTDOWN_GRACE_S",
        default=6.0,
        help="after SIGTERM, how long answers in flight may take (runs answer 503 at once; Cloud Run kills at 10 s)",
    )
    long_run_threads: int = setting(
        env="LONG_RUN_THREADS",
        default=100,
        at_least=1,
        help="threads for sync runs and jobs, apart from the pool that serves `/healthz`, `/status` and listings",
    )

    @property
    def comfyui_base_dir(self) -> Path:
        """Folders the service owns for a ComfyUI it boots: input/, output/, temp/."""
        return (self.state_dir / "comfyui").resolve()
