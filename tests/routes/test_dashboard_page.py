"""The dashboard as an operator sees it, in headless Chromium at the narrowest and widest window
it is made for (1024 and 1920 px): nothing clipped or wrapped, the top row filled, a latency chart
with axes, units and a legend, progress with its step and percent, queue counts that tell waiting,
placed-in-ComfyUI and running apart, links to each job's status, a cancel button that cancels, and
a job whose model named by URL downloads shown on its row with the file, bytes and percent.
Screenshots of both widths are kept in the test's folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.asyncjobs import BASE_ENV, quick, submit, wait_for
from tests.fixtures.browser import chromium
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.waiting import wait_until

WIDTHS = (1024, 1920)

# Every card's content fits its card; returns the offenders as "id: content px > card px".
OVERFLOWING = """
return [...document.querySelectorAll('.card')].flatMap((card) =>
  [card, ...card.querySelectorAll('table, .queue, div')].filter((el) => el.scrollWidth > el.clientWidth + 1)
    .map((el) => (card.querySelector('h2') || {}).textContent + ': ' + el.scrollWidth + ' > ' + el.clientWidth));
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    svc = ServiceProcess(
        ComfyTarget("standin", STANDIN, sys.executable, ""), tmp_path_factory.mktemp("dashboard"), env=BASE_ENV
    )
    svc.start().wait_ready()
    yield svc
    svc.stop()


def updated(browser: Any, at_least: int) -> bool:
    return browser.execute_script("return Number(document.body.dataset.updates || 0)") >= at_least


def text(browser: Any, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}').textContent")


@pytest.mark.parametrize("width", WIDTHS)
def test_dashboard_layout_holds_at_the_widths_it_is_made_for(service: ServiceProcess, width: int, tmp_path: Path):
    for color in (21, 22):
        assert service.post("/predict", json={"workflow": quick(color)}).status_code == 200
    with chromium(tmp_path / "profile", width=width, height=1000) as browser:
        browser.get(service.url + "/dashboard")
        wait_until(lambda: updated(browser, 1), message=lambda: browser.page_source[-2000:])
        assert browser.execute_script(OVERFLOWING) == []
        # The top row: three cards side by side that fill it, as wide as the cards below.
        boxes = browser.execute_script(
            "return [...document.querySelectorAll('.card')].map((c) => c.getBoundingClientRect().toJSON())"
        )
        top_row = [b for b in boxes if abs(b["top"] - boxes[0]["top"]) < 2]
        assert len(top_row) == 3, boxes
        wide = next(b for b in boxes if b["top"] > boxes[0]["top"] + 2)
        assert abs(top_row[-1]["right"] - wide["right"]) < 2 and abs(top_row[0]["left"] - wide["left"]) < 2
        # "up 72.4 s" stays on one line.
        lines = browser.execute_script(
            "const rects = document.getElementById('uptime').parentElement.getClientRects();"
            "return new Set([...rects].map((r) => Math.round(r.top))).size"
        )
        assert lines == 1
        # The chart: y ticks in ms, x ticks up to "now", and a legend for both lines.
        y_ticks = browser.execute_script(
            "return [...document.querySelectorAll('#latency .y-tick')].map(t => t.textContent)"
        )
        x_ticks = browser.execute_script(
            "return [...document.querySelectorAll('#latency .x-tick')].map(t => t.textContent)"
        )
        assert len(y_ticks) >= 3 and all(t.endswith(("ms", " s")) for t in y_ticks), y_ticks
        assert x_ticks[0] == "now" and x_ticks[-1].endswith("min"), x_ticks
        legend = browser.execute_script("return document.querySelector('.legend').textContent")
        assert "mean" in legend and "max" in legend and "requests" in legend
        shot = tmp_path / f"dashboard-{width}.png"
        browser.save_screenshot(str(shot))
        print(f"dashboard screenshot at {width} px: {shot}")
        assert shot.stat().st_size > 10_000


def test_dashboard_tells_placed_from_running_links_jobs_and_cancels(service: ServiceProcess, tmp_path: Path):
    gate = service.gate()
    running = submit(service, gate.workflow(), priority="low")
    gate.wait_entered()
    placed = submit(service, gate.workflow(prefix="held/second"), priority="high")
    try:
        wait_until(lambda: wait_for(service, placed, done=lambda s: True)["state"] in ("placed", "queued"))
        with chromium(tmp_path / "profile") as browser:
            browser.get(service.url + "/dashboard")
            wait_until(
                lambda: updated(browser, 1) and text(browser, "placed-count") == "1",
                message=lambda: text(browser, "running") + " | " + text(browser, "placed-count"),
            )
            assert text(browser, "running-count") == "1"
            rows = text(browser, "running")
            assert "placed" in rows and "running" in rows, rows
            # Progress says its step and percent (the page's own renderer, fed a progress value).
            label = browser.execute_script("return progress({value: 3, max: 4}, 'running').textContent")
            assert label == "step 3 / 4 · 75%"
            # Each job links to its status; the link answers with that job.
            href = browser.execute_script(f"return document.querySelector('#running a[href=\"status/{placed}\"]').href")
            assert href == f"{service.url}/status/{placed}"
            assert service.get(f"/status/{placed}").json()["job_id"] == placed
            # Cancel from the page: the waiting job is cancelled.
            browser.execute_script(f"document.querySelector('button.cancel[data-job=\"{placed}\"]').click()")
            wait_until(lambda: wait_for(service, placed, done=lambda s: True)["state"] == "cancelled")
    finally:
        gate.release()
    assert wait_for(service, running)["state"] == "succeeded"


def test_dashboard_shows_a_jobs_model_downloading_on_its_row(
    service: ServiceProcess, model_server: ModelServer, tmp_path: Path
):
    data = bytes(i % 251 for i in range(600 * 1024))
    model_server.files["dash.safetensors"] = data  # `held`: half of it, then nothing until released
    url = model_server.url("held", "dash.safetensors")
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": url}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    job = submit(service, workflow)
    try:
        with chromium(tmp_path / "profile") as browser:
            browser.get(service.url + "/dashboard")
            row = f"document.querySelector('#running a[href=\"status/{job}\"]')?.closest('tr')?.textContent || ''"
            wait_until(
                lambda: "50%" in browser.execute_script(f"return {row}"),
                message=lambda: text(browser, "running"),
            )
            shown = browser.execute_script(f"return {row}")
            assert "downloading" in shown and "downloading dash.safetensors" in shown, shown
            assert "600" in shown, shown  # of the whole file's size
            browser.save_screenshot(str(tmp_path / "dashboard-downloading.png"))
    finally:
        model_server.release.set()
    assert wait_for(service, job)["state"] in ("succeeded", "failed")
