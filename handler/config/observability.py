"""Settings of what the service tells about itself: log lines, the access log, metrics, and the
traces tests and benchmarks ask for. One section of `Settings` (handler/config/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from handler.config.declare import Section, lower, setting, upper


@dataclass(frozen=True, kw_only=True)
class ObservabilitySettings(Section):
    """Request ids and log context are not metrics: they stay on whatever these say (docs/api.md,
    "Seeing what it does")."""

    TITLE: ClassVar[str] = "Logs, metrics and traces"

    log_level: str = setting(env="LOG_LEVEL", default="INFO", parse=upper, help="the service's log level")
    log_format: str = setting(
        env="LOG_FORMAT",
        default="text",
        parse=lower,
        choices=("json", "text"),
        shown="json on Cloud Run, else text",
        help="`json`: one object per line for Cloud Logging (trace, labels, `httpRequest`); `text`: for a terminal",
    )
    access_log: bool = setting(
        env="ACCESS_LOG",
        default=False,
        shown="on with JSON logs or `LOG_LEVEL=DEBUG`",
        help="one log line per request (`httpRequest` in JSON)",
    )
    metrics: bool = setting(
        env="METRICS",
        default=True,
        help="counting for `/metrics` and the dashboard's latency and recent runs; `false` counts nothing and "
        "`/metrics` answers 404 (request ids and log context stay), and the dashboard then has no chart, no "
        "recent runs and no priorities for running jobs; `bench/observe_cost.py` measures the cost "
        "(`deploy.sh --metrics`, or `METRICS_SIDECAR=true`, adds the collector that scrapes `/metrics`)",
    )
    metrics_multiproc_dir: Path | None = setting(
        env="PROMETHEUS_MULTIPROC_DIR",
        default=None,
        help="set with several uvicorn processes: metrics are kept in files there (prometheus-client reads it "
        "itself, at import)",
    )
    ws_trace: bool = setting(
        env="WEBSOCKET_TRACE", default=False, help="websocket-client's frame trace of the ComfyUI websocket"
    )
    trace_out: Path | None = setting(
        env="TRACE_OUT",
        default=None,
        help="benchmarks only (`bench/run.py --trace`): a file that gets the timestamps of each traced request",
    )
    failpoint_kill: str | None = setting(
        env="FAILPOINT_KILL",
        default=None,
        help="tests only: the point of a job's life at which this process kills itself (handler/failpoints.py)",
    )
