"""Metrics where uvicorn runs more than one process: with PROMETHEUS_MULTIPROC_DIR set, every
process writes its values to files there and any process's /metrics reports the sum.

Each process is a real one (prometheus-client picks its value store when it is imported, so the
variable must be set before that); the scrape is parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from pathlib import Path
from handler.config import Settings
from handler.metrics import Metrics

metrics = Metrics(observability=Settings(metrics_multiproc_dir=Path(sys.argv[1])).observability)
for _ in range(int(sys.argv[2])):
    metrics.request("/predict", "POST", 200, 0.25, charted=False)
if sys.argv[3:] == ["render"]:
    sys.stdout.write(metrics.render().decode())
"""


def run(folder: Path, requests: int, *extra: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder), str(requests), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_process_counts_and_any_scrape_reports_the_sum(tmp_path):
    run(tmp_path, 3)
    run(tmp_path, 4)
    text = run(tmp_path, 0, "render")  # a third process serves the scrape
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("method", "POST"), ("route", "/predict"), ("status", "200"))
    assert samples[("comfyrun_http_requests_total", labels)] == 7
    assert samples[("comfyrun_http_request_duration_seconds_count", (("route", "/predict"),))] == 7
    assert abs(samples[("comfyrun_http_request_duration_seconds_sum", (("route", "/predict"),))] - 7 * 0.25) < 1e-9
