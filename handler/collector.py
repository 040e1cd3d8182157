"""Values read when /metrics is scraped or the dashboard polls: jobs waiting per priority, and
ComfyUI's restarts, reconnects, readiness, boot times and `/system_stats`, each read at most every
`STATS_TTL_S` so scrapes and polls share one read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from handler.taskqueue import PRIORITIES

if TYPE_CHECKING:
    from handler.comfyui.instance import Comfy
    from handler.jobs import Jobs

STATS_TTL_S = 2.0  # ComfyUI's /system_stats, and the queued counts, are read at most this often


T = TypeVar("T")


class Cached(Generic[T]):
    """A value read at most every `ttl_s` (scrapes and the dashboard's polls share one read);
    None while the last read failed."""

    def __init__(self, read: Callable[[], T], ttl_s: float = STATS_TTL_S):
        self._read = read
        self._ttl_s = ttl_s
        self._value: T | None = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def get(self) -> T | None:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl_s:
                try:
                    self._value = self._read()
                except Exception:  # ComfyUI restarting, the store hiccuping: nothing this time
                    self._value = None
                self._at = time.monotonic()
            return self._value


def queued_counts(jobs: Jobs) -> dict[str, int]:
    """Jobs waiting per priority: the local queue, or the line kept in the store (Cloud Tasks)."""
    counts = dict.fromkeys(PRIORITIES, 0)
    drained = jobs.queue.pull_queue()
    if drained is not None:
        counts.update({p: int(n) for p, n in drained.pending().items() if p in counts})
        return counts
    for key in jobs.service.repo.store.list("line/"):
        rank = key.split("/")[1]
        if rank.isdigit() and int(rank) < len(PRIORITIES):
            counts[PRIORITIES[int(rank)]] += 1
    return counts


class ServiceCollector(Collector):
    def __init__(self, comfy: Comfy | None, jobs: Jobs):
        self.comfy = comfy
        self.queued = Cached(lambda: queued_counts(jobs))
        self.stats = Cached(
            lambda: comfy.client.get_json("/system_stats", timeout_s=2) if comfy and comfy.ready else None
        )

    def describe(self) -> Iterable[Metric]:
        return []  # values come at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        queued = GaugeMetricFamily("comfyrun_jobs_queued", "Jobs waiting in line, by priority", labels=["priority"])
        for priority, count in (self.queued.get() or {}).items():
            queued.add_metric([priority], count)
        yield queued
        comfy = self.comfy
        if comfy is None:
            return
        yield CounterMetricFamily(
            "comfyui_restarts",
            "Times ComfyUI was restarted after it exited",
            value=comfy.supervisor.restarts if comfy.supervisor else 0,
        )
        yield CounterMetricFamily(
            "comfyui_websocket_reconnects",
            "Websocket connections to ComfyUI after the first",
            value=max(0, comfy.client.connects - 1),
        )
        yield GaugeMetricFamily("comfyui_ready", "1 when ComfyUI is ready for work", value=1 if comfy.ready else 0)
        for name, help_text, value in (
            ("comfyui_boot_seconds", "The last boot of ComfyUI: start (or exit) to ready, models loaded", comfy.boot_s),
            ("comfyui_models_fetch_seconds", "Fetching runtime models (MODELS_SOURCE) at start", comfy.models_fetch_s),
            ("comfyui_warmup_seconds", "The warmup workflow's run at boot", comfy.warmup_s),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)
        yield from system_stat_metrics(self.stats.get())


def system_stat_metrics(stats: dict[str, Any] | None) -> Iterable[Metric]:
    if not isinstance(stats, dict):
        return
    system = stats.get("system") or {}
    for key in ("ram_total", "ram_free"):
        if isinstance(system.get(key), (int, float)):
            yield GaugeMetricFamily(f"comfyui_{key}_bytes", f"ComfyUI's system_stats {key}", value=system[key])
    families = {
        key: GaugeMetricFamily(
            f"comfyui_{key}_bytes", f"ComfyUI's system_stats {key}, per device", labels=["device", "type"]
        )
        for key in ("vram_total", "vram_free", "torch_vram_total", "torch_vram_free")
    }
    for device in stats.get("devices") or []:
        for key, family in families.items():
            if isinstance(device.get(key), (int, float)):
                family.add_metric([str(device.get("name")), str(device.get("type"))], device[key])
    yield from families.values()
