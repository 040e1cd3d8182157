"""Metrics, structured logs, /system and the dashboard, against `python -m handler` and the
ComfyUI stand-in over real sockets.

Metrics are read with prometheus-client's own parser and checked against a scripted sequence of
requests and jobs (counts exact, durations present). Log lines are the service's real stdout,
in JSON as on Cloud Run. The dashboard is loaded by a real headless Chromium (Debian's package,
driven through chromedriver); its screenshot is kept under the test's tmp dir. `METRICS=false`
against the default is checked in-process (tests/test_inprocess.py's ComfyUI double).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from handler import logs
from handler.app import create_app
from handler.config import Settings
from handler.routes.observe import masked_settings
from tests.fixtures.asyncjobs import BASE_ENV, quick, status, submit, wait_for
from tests.fixtures.browser import chromium
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess
from tests.fixtures.fakecomfy import FakeComfyUI
from tests.fixtures.inprocess import final_view, settings_under, workflow
from tests.fixtures.receiver import Receiver
from tests.fixtures.waiting import wait_until

STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")
PROJECT = "obs-project"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory):
    env = {**BASE_ENV, "LOG_FORMAT": "json", "GOOGLE_CLOUD_PROJECT": PROJECT, "HF_TOKEN": "hf_very_secret"}
    svc = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("observed"), env=env)
    svc.start().wait_ready()
    yield svc
    svc.stop()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(svc: ServiceProcess) -> Samples:
    response = svc.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_metrics_follow_a_scripted_sequence(observed: ServiceProcess) -> None:
    before = scrape(observed)
    receiver = Receiver()
    try:
        for color in (1, 2):
            assert observed.post("/predict", json={"workflow": quick(color)}).status_code == 200
        assert observed.post("/predict", json={"workflow": {"1": "not a node"}}).status_code == 400
        done = submit(observed, quick(3), webhook={"url": receiver.url})
        assert wait_for(observed, done)["state"] == "succeeded"
        gate = observed.gate()
        held = submit(observed, gate.workflow(), priority="low")
        gate.wait_entered()
        running = wait_until(
            lambda: s if value(s := scrape(observed), "comfyrun_jobs_running", priority="low") else None,
            message="the held job never showed as running",
        )
        assert value(running, "comfyrun_jobs_placed", priority="low") == 0
        assert observed.post(f"/cancel/{held}").json()["cancel"] == "interrupting"
        assert wait_for(observed, held)["state"] == "cancelled"
        wait_until(lambda: (status(observed, done).get("webhook") or {}).get("state") == "delivered")
    finally:
        receiver.close()
    after = scrape(observed)

    d = lambda name, **labels: delta(after, before, name, **labels)  # noqa: E731
    assert d("comfyrun_http_requests_total", route="/predict", method="POST", status="200") == 2
    assert d("comfyrun_http_requests_total", route="/predict", method="POST", status="400") == 1
    assert d("comfyrun_http_requests_total", route="/predict", method="POST", status="202") == 2
    assert d("comfyrun_http_requests_total", route="/cancel/{job_id}", method="POST", status="202") == 1
    for phase in ("inputs", "submit", "queued", "comfyui", "outputs", "total"):
        assert d("comfyrun_predict_phase_seconds_count", phase=phase) == 2, phase
    assert d("comfyrun_predict_phase_seconds_sum", phase="comfyui") > 0
    assert d("comfyrun_predict_phase_seconds_sum", phase="total") >= d(
        "comfyrun_predict_phase_seconds_sum", phase="comfyui"
    )
    for state, priority in (
        ("queued", "normal"),
        ("placed", "normal"),
        ("running", "normal"),
        ("succeeded", "normal"),
        ("queued", "low"),
        ("placed", "low"),
        ("running", "low"),
        ("cancelled", "low"),
    ):
        assert d("comfyrun_job_state_changes_total", state=state, priority=priority) == 1, (state, priority)
    assert d("comfyrun_job_state_changes_total", state="failed", priority="normal") == 0
    assert d("comfyrun_job_attempts_total", outcome="succeeded") == 1
    assert d("comfyrun_job_attempts_total", outcome="cancelled") == 1
    assert d("comfyrun_job_attempts_total", outcome="retried") == 0
    assert d("comfyrun_webhook_deliveries_total", outcome="delivered") == 1
    for priority in ("normal", "low"):
        assert d("comfyrun_job_queue_wait_seconds_count", priority=priority) == 1
        assert d("comfyrun_job_run_seconds_count", priority=priority) == 1
    assert d("comfyrun_job_run_seconds_sum", priority="low") > 0
    assert value(after, "comfyrun_jobs_running", priority="low") == 0
    assert value(after, "comfyrun_jobs_placed", priority="low") == 0
    assert value(after, "comfyrun_jobs_queued", priority="high") == 0
    assert value(after, "comfyui_ready") == 1
    assert value(after, "comfyui_restarts_total") == 0
    assert value(after, "comfyui_boot_seconds") > 0
    assert value(after, "comfyui_vram_total_bytes", device="cpu", type="cpu") > 0
    assert value(after, "comfyui_torch_vram_free_bytes", device="cpu", type="cpu") > 0
    assert value(after, "comfyui_ram_total_bytes") > 0
    assert any(name == "comfyrun_http_request_duration_seconds_bucket" for name, _ in after)


def test_json_log_lines_carry_severity_trace_and_labels(observed: ServiceProcess) -> None:
    request_id = f"test-{uuid.uuid4().hex[:8]}"
    response = observed.post(
        "/predict",
        json={"workflow": quick(7)},
        headers={"X-Request-Id": request_id, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    prompt_id = response.json()["prompt_id"]
    accepted = observed.post(
        "/predict",
        json={"workflow": quick(8), "async": True},
        headers={"X-Cloud-Trace-Context": f"{TRACE[::-1]}/12345;o=1"},
    )
    assert accepted.status_code == 202 and accepted.headers["x-request-id"]
    job_id = accepted.json()["job_id"]
    assert wait_for(observed, job_id)["state"] == "succeeded"
    fresh = observed.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert fresh.headers["x-request-id"] != "bad id with spaces" and len(fresh.headers["x-request-id"]) == 32

    def entries() -> list[dict[str, Any]]:
        lines = [line for line in observed.log().splitlines() if line.startswith("{")]
        return [json.loads(line) for line in lines]

    def access_line() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in entries()
                if e.get("httpRequest", {}).get("requestUrl") == "/predict"
                and e.get("logging.googleapis.com/labels", {}).get("request_id") == request_id
            ),
            None,
        )

    access = wait_until(access_line)
    assert access["severity"] == "INFO"
    assert access["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE}"
    assert access["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    assert access["logging.googleapis.com/labels"]["prompt_id"] == prompt_id
    assert access["httpRequest"]["status"] == 200 and access["httpRequest"]["requestMethod"] == "POST"
    assert access["httpRequest"]["latency"].endswith("s")
    job_line = wait_until(
        lambda: next(
            (
                e
                for e in entries()
                if job_id in e["message"]
                and "succeeded" in e["message"]
                and e.get("logging.googleapis.com/labels", {}).get("job_id") == job_id
            ),
            None,
        )
    )
    assert job_line["severity"] == "INFO" and job_line["logger"] == "handler.jobs.runner"
    assert "prompt_id" in job_line["logging.googleapis.com/labels"]
    submit_line = next(
        e
        for e in entries()
        if e.get("httpRequest", {}).get("status") == 202
        and e.get("logging.googleapis.com/trace") == f"projects/{PROJECT}/traces/{TRACE[::-1]}"
    )
    assert submit_line["logging.googleapis.com/spanId"] == f"{12345:016x}"
    every = entries()
    assert all(e["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"} for e in every)
    comfy_lines = [e for e in every if e["logger"] == "comfyui"]
    assert comfy_lines and all(e["severity"] == "INFO" for e in comfy_lines if "To see the GUI" in e["message"])
    assert "hf_very_secret" not in observed.log()


def test_system_shows_comfyui_and_masked_settings(observed: ServiceProcess) -> None:
    gate = observed.gate()
    held = submit(observed, gate.workflow())
    gate.wait_entered()
    try:
        system = observed.get("/system").json()
    finally:
        gate.release()
    assert wait_for(observed, held)["state"] == "succeeded"
    comfy = system["comfyui"]
    assert comfy["ready"] is True and comfy["version"]
    assert comfy["system_stats"]["devices"][0]["vram_total"] > 0
    running = comfy["queue"]["running"]
    assert len(running) == 1 and all(isinstance(p, str) for p in running)  # ids only, no graph
    assert "TestGate" not in json.dumps(comfy["queue"])
    settings = system["settings"]
    assert settings["hf_token"] == "***" and settings["webhook_secret"] == "***"
    assert settings["log_format"] == "json"
    assert "hf_very_secret" not in json.dumps(system) and str(observed.state_dir) not in json.dumps(system)


def test_masked_settings_hide_every_secret() -> None:
    settings = Settings.from_env({"WEBHOOK_SECRET": "w-s", "HF_TOKEN": "h-t", "JOB_ID_SECRET": "j-s"})
    shown = masked_settings(settings)
    assert {shown["webhook_secret"], shown["hf_token"], shown["job_id_secret"]} == {"***"}
    assert "w-s" not in json.dumps(shown) and shown["gcs_bucket"] is None


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("To see the GUI go to: http://127.0.0.1:8188", 20),
        ("WARNING: the node is deprecated", 30),
        ("[ERROR] cannot load model", 40),
        ("!!! Exception during processing !!! boom", 40),
        ("Traceback (most recent call last):", 40),
        ("ValueError: bad", 40),
        ("got prompt", 20),
    ],
)
def test_comfyui_lines_keep_their_level(line: str, level: int) -> None:
    assert logs.comfy_level(line) == level


def test_trace_headers_and_request_ids() -> None:
    trace = logs.trace_of({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert trace == logs.Trace(TRACE, "00f067aa0ba902b7", True)
    cloud = logs.trace_of({"x-cloud-trace-context": f"{TRACE.upper()}/1;o=0"})
    assert cloud == logs.Trace(TRACE, "0000000000000001", False)
    assert logs.trace_of({"traceparent": "garbage"}) is None
    assert logs.request_id_of("abc-123") == "abc-123"
    assert logs.request_id_of("x" * 200) != "x" * 200


# --- the dashboard, in a real browser ---------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path):
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def test_dashboard_in_a_real_browser(observed: ServiceProcess, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    for color in (11, 12, 13):
        assert observed.post("/predict", json={"workflow": quick(color)}).status_code == 200
    failed = observed.post("/predict", json={"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert failed.status_code == 400
    gate = observed.gate()
    held = submit(observed, gate.workflow(), priority="low")
    gate.wait_entered()
    try:
        browser.get(observed.url + "/dashboard")
        text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
        wait_until(
            lambda: browser.execute_script("return Number(document.body.dataset.updates || 0)") >= 1,
            message=lambda: browser.page_source[-2000:],
        )
        assert text("comfy-state") == "ready"
        assert text("comfy-version") == observed.get("/").json()["comfyui"]["version"]
        memory = text("memory")
        assert "cpu" in memory and ("GiB" in memory or "MiB" in memory), memory
        assert text("queue-high") == "0" and text("queue-low") == "0"
        wait_until(lambda: held in text("running"), message=lambda: text("running"))
        assert "low" in text("running") and "running" in text("running")
        recent = text("recent")
        assert "sync" in recent and "succeeded" in recent
        assert "workflow_invalid" in recent or "bad_request" in recent
        requests_drawn = int(browser.find_element(By.ID, "latency").get_attribute("data-requests"))
        assert requests_drawn >= 4
        assert browser.find_element(By.ID, "latency-mean").get_attribute("d").startswith("M")
        screenshot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(screenshot))
        print(f"dashboard screenshot: {screenshot}")
        assert screenshot.stat().st_size > 10_000
    finally:
        gate.release()
    assert wait_for(observed, held)["state"] == "succeeded"
    # Updated live: the held job leaves the running list without a reload.
    wait_until(
        lambda: (
            held not in browser.find_element(By.ID, "running").text
            and held in browser.find_element(By.ID, "recent").text
        ),
        timeout_s=15,
    )


def test_dashboard_page_is_self_contained(observed: ServiceProcess) -> None:
    page = observed.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for outside in ("http://", "https://", "//cdn", "<link"):
        assert outside not in page.text.replace("http://www.w3.org", ""), outside
    data = observed.get("/dashboard/data").json()
    assert set(data) >= {"service", "comfyui", "queue", "running", "recent", "latency"}
    assert len(data["latency"]) == 60 and all(math.isfinite(p["mean_ms"]) for p in data["latency"])
    assert requests.get(observed.url + "/nope").headers["x-request-id"]


# --- METRICS=false: nothing counted, /metrics says so (in-process, tests/test_inprocess.py's double)


@pytest.mark.parametrize(
    ("raw", "on"),
    [(None, True), ("", True), ("true", True), ("1", True), ("false", False), ("0", False), ("off", False)],
)
def test_metrics_setting(raw: str | None, on: bool) -> None:
    env = {} if raw is None else {"METRICS": raw}
    assert Settings.from_env(env).metrics is on
    # Log settings are their own: turning metrics off leaves them as they were.
    assert Settings.from_env({**env, "LOG_FORMAT": "json"}).access_log is True


@contextlib.contextmanager
def in_process(root: Path, **overrides: Any) -> Iterator[tuple[TestClient, Starlette]]:
    settings = dataclasses.replace(settings_under(root), **overrides)
    assert settings.comfyui_output_dir is not None
    app = create_app(settings, comfy_client=FakeComfyUI(settings.comfyui_output_dir))
    with TestClient(app) as http:
        assert app.state.services.comfy.wait_ready(5)
        yield http, app


def drive(http: TestClient) -> str:
    """One sync run, one refused, one job to its end; the job's id."""
    ok = http.post("/predict", json={"workflow": workflow()}, headers={"X-Request-Id": "obs-off-1"})
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-request-id"] == "obs-off-1"  # request ids are not metrics: always on
    assert http.post("/predict", json={"workflow": {"1": "not a node"}}).status_code == 400
    accepted = http.post("/predict", json={"workflow": workflow(), "async": True})
    assert accepted.status_code == 202, accepted.text
    job_id: str = accepted.json()["job_id"]
    assert wait_until(lambda: final_view(http, job_id), timeout_s=5)["state"] == "succeeded"
    return job_id


def counted(app: Starlette) -> Samples:
    """The registry's samples with a value, read directly (not through /metrics)."""
    text = app.state.services.metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.value and s.name.startswith("comfyrun_") and not s.name.endswith("_created")
    }


def test_with_metrics_off_nothing_is_counted_and_metrics_is_404(tmp_path: Path) -> None:
    with in_process(tmp_path, metrics=False) as (http, app):
        assert app.state.services.jobs.service.repo.observer is None  # not attached at all
        drive(http)
        answer = http.get("/metrics")
        assert answer.status_code == 404 and answer.headers["x-request-id"]
        assert answer.json() == {
            "status": "error",
            "error": {
                "code": "not_found",
                "message": "metrics are off on this service (METRICS=false)",
                "setting": "METRICS",
            },
        }
        # The scrape-time collector (queued jobs, ComfyUI) is all that is left in the registry.
        assert counted(app) == {}
        metrics = app.state.services.metrics
        assert list(metrics.recent) == [] and metrics.running_jobs() == {}
        # The dashboard still loads; its latency and recent runs are empty.
        assert http.get("/dashboard").status_code == 200
        data = http.get("/dashboard/data").json()
        assert data["comfyui"]["ready"] is True and data["recent"] == []
        assert len(data["latency"]) == 60 and all(point["count"] == 0 for point in data["latency"])
        assert http.get("/system").json()["settings"]["metrics"] is False


def test_with_metrics_on_by_default_the_same_requests_are_counted(tmp_path: Path) -> None:
    with in_process(tmp_path) as (http, app):
        job_id = drive(http)
        answer = http.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        samples = counted(app)
        assert value(samples, "comfyrun_http_requests_total", route="/predict", method="POST", status="200") == 1
        assert value(samples, "comfyrun_http_requests_total", route="/predict", method="POST", status="400") == 1
        assert value(samples, "comfyrun_predict_phase_seconds_count", phase="total") == 1
        assert value(samples, "comfyrun_job_state_changes_total", state="succeeded", priority="normal") == 1
        data = http.get("/dashboard/data").json()
        assert {(run["kind"], run["id"]) for run in data["recent"]} >= {("sync", "obs-off-1"), ("job", job_id)}
        assert sum(point["count"] for point in data["latency"]) >= 3
