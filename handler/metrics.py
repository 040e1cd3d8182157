"""What the service counts, in Prometheus' terms (prometheus-client), and the recent history the
dashboard draws.

Contract:

* `Metrics(observability=...)` owns one `CollectorRegistry`; `render()` is the `/metrics` answer in the
  Prometheus text format. With `PROMETHEUS_MULTIPROC_DIR` set (several uvicorn processes), the
  counters, histograms and the running gauge are kept in files there and `render()` sums every
  process's (prometheus-client's multiprocess mode); values read at scrape time (ComfyUI, the
  queue) come from the collector of the process that answers, as they are the same for all.
* Requests: `request(route, method, status, seconds)` — counted by route template, never by raw
  path (bounded label values).
* Sync runs: `sync_timings(timings)` — one histogram series per phase of the answer's `timings`.
* Jobs: `job_changed(before, after)` is the one observer the job repository calls after every
  committed write (`before` is None for a new job). From the pair it derives state changes per
  priority, placed and running jobs (gauges), queue wait, run time, attempts by outcome and webhook deliveries by
  outcome. Nothing else in `handler/jobs/` calls into metrics.
* ComfyUI (restarts, websocket reconnects, readiness, boot, model fetch, warmup, system stats)
  and the queued jobs per priority are read when scraped, by `ServiceCollector` (observe.py).
* `recent` keeps the last finished runs and `latency` the last minutes of request latency, in
  this process, for the dashboard.
* With `METRICS=false` (`enabled` False) every recording method returns at once: nothing is
  counted, `recent` and `latency` stay empty (the dashboard still loads), and the app answers
  `/metrics` with 404 (observe.py). bench/observe_cost.py measures what counting costs.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from handler.config.observability import ObservabilitySettings
from handler.jobs.model import Job, JobState
from handler.taskqueue import PRIORITIES

PHASES = ("inputs", "submit", "queued", "comfyui", "outputs", "total")
# From a millisecond to an hour: request, phase and job durations alike.
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    float("inf"),
)
WEBHOOK_OUTCOMES = {"delivered": "delivered", "failed": "failed", "pending": "retry"}
RECENT = 50  # finished runs kept for the dashboard
LATENCY_WINDOW_S = 600  # the dashboard's chart: the last ten minutes
LATENCY_STEP_S = 10


@dataclass(frozen=True)
class Finished:
    """One finished run, as the dashboard lists it."""

    kind: str  # sync | job
    id: str  # the request id or the job id
    state: str  # succeeded | failed | cancelled
    priority: str | None
    finished_at: float  # epoch seconds
    duration_s: float | None
    error: str | None  # code: message


class LatencyWindow:
    """Request latency per LATENCY_STEP_S over the last LATENCY_WINDOW_S: count, mean and max."""

    def __init__(self) -> None:
        self._slots: collections.deque[list[float]] = collections.deque(maxlen=LATENCY_WINDOW_S // LATENCY_STEP_S)
        self._lock = threading.Lock()

    def add(self, seconds: float, at: float) -> None:
        start = at - at % LATENCY_STEP_S
        with self._lock:
            if not self._slots or self._slots[-1][0] != start:
                self._slots.append([start, 0, 0.0, 0.0])
            slot = self._slots[-1]
            slot[1] += 1
            slot[2] += seconds
            slot[3] = max(slot[3], seconds)

    def series(self, now: float) -> list[dict[str, float]]:
        """Every step of the window, oldest first; steps without requests have count 0."""
        with self._lock:
            by_start = {slot[0]: slot for slot in self._slots}
        last = now - now % LATENCY_STEP_S
        out = []
        for start in range(int(last) - LATENCY_WINDOW_S + LATENCY_STEP_S, int(last) + 1, LATENCY_STEP_S):
            slot = by_start.get(float(start))
            count = int(slot[1]) if slot else 0
            out.append(
                {
                    "t": float(start),
                    "count": count,
                    "mean_ms": round(slot[2] / count * 1000, 2) if slot and count else 0.0,
                    "max_ms": round(slot[3] * 1000, 2) if slot else 0.0,
                }
            )
        return out


class Metrics:
    def __init__(self, *, observability: ObservabilitySettings):
        self.enabled = observability.metrics
        self.multiprocess = observability.metrics_multiproc_dir is not None
        self.registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess:
            MultiProcessCollector(self.registry, path=str(observability.metrics_multiproc_dir))  # type: ignore[no-untyped-call]
        # In multiprocess mode the values live in files and MultiProcessCollector reads them all.
        own = None if self.multiprocess else self.registry
        self.requests = Counter(
            "comfyrun_http_requests",
            "HTTP requests answered, by route template and status",
            ["route", "method", "status"],
            registry=own,
        )
        self.request_seconds = Histogram(
            "comfyrun_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of its body)",
            ["route"],
            buckets=BUCKETS,
            registry=own,
        )
        self.sync_phase_seconds = Histogram(
            "comfyrun_predict_phase_seconds",
            "Sync /predict runs, split as the answer's `timings` are",
            ["phase"],
            buckets=BUCKETS,
            registry=own,
        )
        self.job_states = Counter(
            "comfyrun_job_state_changes",
            "Jobs entering a state (queued includes hand-backs)",
            ["state", "priority"],
            registry=own,
        )
        self.jobs_placed = Gauge(
            "comfyrun_jobs_placed",
            "Jobs placed in ComfyUI's queue by this service's runs, not executing yet",
            ["priority"],
            registry=own,
            multiprocess_mode="livesum",
        )
        self.jobs_running = Gauge(
            "comfyrun_jobs_running",
            "Jobs ComfyUI is executing for this service's runs",
            ["priority"],
            registry=own,
            multiprocess_mode="livesum",
        )
        self._gauges = {JobState.PLACED: self.jobs_placed, JobState.RUNNING: self.jobs_running}
        self.queue_wait = Histogram(
            "comfyrun_job_queue_wait_seconds",
            "Time a job waited in the service's line before a run placed it",
            ["priority"],
            buckets=BUCKETS,
            registry=own,
        )
        self.run_seconds = Histogram(
            "comfyrun_job_run_seconds",
            "Time from a run's claim (placed) to its end",
            ["priority"],
            buckets=BUCKETS,
            registry=own,
        )
        self.attempts = Counter(
            "comfyrun_job_attempts",
            "Runs of jobs, by how they ended (succeeded, failed, cancelled, retried, taken_over)",
            ["outcome"],
            registry=own,
        )
        self.webhooks = Counter(
            "comfyrun_webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, failed, retry)",
            ["outcome"],
            registry=own,
        )
        for priority in PRIORITIES:  # the series exist (at 0) before the first job
            self.jobs_placed.labels(priority)
            self.jobs_running.labels(priority)
        # Children resolved once: `labels()` costs more than the observation itself, per request.
        self._phases = [(f"{phase}_ms", self.sync_phase_seconds.labels(phase)) for phase in PHASES]
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.recent: collections.deque[Finished] = collections.deque(maxlen=RECENT)
        self.latency = LatencyWindow()
        self._active: dict[str, tuple[str, JobState]] = {}  # job id → (priority, state), runs of this process
        self._lock = threading.Lock()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- requests and sync runs -------------------------------------------------------------

    def request(self, route: str, method: str, status: int, seconds: float, *, charted: bool) -> None:
        if not self.enabled:
            return
        children = self._request_children.get((route, method, status))
        if children is None:  # bounded: route templates × methods × statuses
            children = (self.requests.labels(route, method, str(status)), self.request_seconds.labels(route))
            self._request_children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        if charted:
            self.latency.add(seconds, time.time())

    def sync_timings(self, timings: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, child in self._phases:
            value = timings.get(key)
            if value is not None:
                child.observe(value / 1000)

    def sync_finished(self, request_id: str, status: int, seconds: float, error: str | None) -> None:
        if not self.enabled:
            return
        state = "succeeded" if status < 400 else "cancelled" if status == 499 else "failed"
        self.recent.append(Finished("sync", request_id, state, "high", time.time(), seconds, error))

    # --- jobs: the one observer of the job repository --------------------------------------

    def job_changed(self, before: Job | None, after: Job) -> None:
        if not self.enabled:  # the app does not attach it then; kept for any other caller
            return
        priority = after.priority
        was = before.state if before is not None else None
        taken_over = (
            was is not None
            and was.active
            and after.state.active
            and before is not None
            and before.lease is not None
            and after.lease is not None
            and before.lease.token != after.lease.token
        )
        if before is None and after.state.active:
            # Created placed (it started at once): it was accepted into line all the same, so
            # queued → placed → running → final holds for every job that ran.
            self.job_states.labels(JobState.QUEUED.value, priority).inc()
        if was is JobState.PLACED and after.final and after.started_at is not None:
            # It ran, but ended before its `running` write (or without one): counted all the same.
            self.job_states.labels(JobState.RUNNING.value, priority).inc()
        if was is not after.state or taken_over:
            self.job_states.labels(after.state.value, priority).inc()
        if was is not None and was.active and (not after.state.active or taken_over):
            assert before is not None
            outcome = "taken_over" if taken_over else "retried" if after.state is JobState.QUEUED else after.state.value
            self.attempts.labels(outcome).inc()
            since = before.placed_at or before.started_at  # records from before `placed` have no placed_at
            if since is not None:
                self.run_seconds.labels(priority).observe(max(0.0, after.updated_at - since))
        if after.state.active and (was is None or not was.active or taken_over):
            if after.placed_at is not None:  # created placed (it started at once): it waited 0
                waiting_since = before.updated_at if before is not None else after.created_at
                self.queue_wait.labels(priority).observe(max(0.0, after.placed_at - waiting_since))
        self._track(after.job_id, priority, after.state if after.state.active else None)
        if after.final and was is not after.state:
            self._finished_job(after)
        self._webhook(before, after)

    def _track(self, job_id: str, priority: str, state: JobState | None) -> None:
        """The gauges of active jobs (placed, running) this process's runs hold."""
        with self._lock:
            old = self._active.get(job_id)
            new = (priority, state) if state is not None else None
            if old == new:
                return
            if new is None:
                del self._active[job_id]
            else:
                self._active[job_id] = new
        if old is not None:
            self._gauges[old[1]].labels(old[0]).dec()
        if new is not None:
            self._gauges[state].labels(priority).inc()  # type: ignore[index]

    def _finished_job(self, job: Job) -> None:
        error = None
        if job.error:
            error = f"{job.error.get('code', 'error')}: {job.error.get('message', '')}"[:300]
        duration = (job.finished_at - job.started_at) if job.finished_at and job.started_at else None
        self.recent.append(
            Finished("job", job.job_id, job.state.value, job.priority, job.finished_at or time.time(), duration, error)
        )

    def _webhook(self, before: Job | None, after: Job) -> None:
        now = after.webhook or {}
        then = (before.webhook if before is not None else None) or {}
        if int(now.get("attempts") or 0) > int(then.get("attempts") or 0):
            self.webhooks.labels(WEBHOOK_OUTCOMES.get(str(now.get("state")), "retry")).inc()

    # --- what the dashboard reads ------------------------------------------------------------

    def running_jobs(self) -> dict[str, str]:
        """The active jobs (placed or running) of this process's runs: job id → priority."""
        with self._lock:
            return {job_id: priority for job_id, (priority, _) in self._active.items()}

    def finished(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in reversed(self.recent)]
