"""The pipeline in ComfyUI's queue: priorities, deadlines, cancel and shutdown.

A Pipeline runs in this process, attached to the stand-in's ComfyUI of the `service` fixture
over real sockets; TestGate nodes (`service.gate()`) hold prompts running until released.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

from handler.comfyui.instance import Comfy
from handler.config import Settings
from handler.errors import Cancelled, ComfyUnavailable, QueueTimeout
from handler.pipeline import Pipeline, queue_number
from handler.predict_request import PredictRequest
from handler.runtime import Runtime, Trigger
from tests.fixtures.comfy import ServiceProcess
from tests.fixtures.sections import sections, sources
from tests.fixtures.waiting import wait_until

Attach = Callable[..., Pipeline]


@pytest.fixture
def attach(service: ServiceProcess) -> Iterator[Attach]:
    """Pipelines attached to the service's ComfyUI, with settings of the test's choosing."""
    if service.target.is_real:
        pytest.skip("needs the stand-in's TestGate node to hold prompts")
    comfies: list[Comfy] = []

    def make(**settings: Any) -> Pipeline:
        chosen = replace(Settings(), comfyui_url=service.comfy_url, **settings)
        runtime = Runtime(http=chosen.http)
        comfy = Comfy(
            **sections(chosen, "comfyui", "models", "http", "observability"),
            sources=sources(chosen),
            spawn=runtime.thread,
        )
        comfies.append(comfy)
        comfy.start()
        wait_until(lambda: comfy.ready, 30, message="the attached ComfyUI never became ready")
        return Pipeline(comfy, runtime)

    yield make
    for comfy in comfies:
        comfy.stop()


class Run:
    """pipeline.run in a thread of its own: its result or its error."""

    def __init__(self, pipeline: Pipeline, request: PredictRequest, cancel: threading.Event | None = None):
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(pipeline, request, cancel), daemon=True)
        self.thread.start()

    def _run(self, pipeline: Pipeline, request: PredictRequest, cancel: threading.Event | None) -> None:
        try:
            self.result = pipeline.run(request, cancel)
        except BaseException as exc:  # handed to the test
            self.error = exc

    def join(self, timeout_s: float = 60) -> Run:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the run did not end"
        return self


def pending(service: ServiceProcess) -> int:
    return len(requests.get(f"{service.comfy_url}/queue", timeout=10).json()["queue_pending"])


def quick_workflow() -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": time.monotonic_ns() % 0xFFFFFF},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "q/out"}},
    }


def test_queue_numbers_order_by_priority_then_arrival():
    numbers = [
        queue_number(priority, arrival)
        for priority, arrival in [("high", 7), ("high", 8), ("normal", 1), ("low", 0), ("low", 3)]
    ]
    assert numbers == sorted(numbers)


def test_a_later_high_prompt_runs_before_an_earlier_low_one(attach: Attach, service: ServiceProcess):
    pipeline = attach()
    hold, low, high = service.gate(), service.gate(), service.gate()
    held = Run(pipeline, PredictRequest(workflow=hold.workflow(), priority="normal"))
    runs = [held]
    try:
        hold.wait_entered()
        runs.append(Run(pipeline, PredictRequest(workflow=low.workflow(), priority="low")))
        wait_until(lambda: pending(service) == 1)
        runs.append(Run(pipeline, PredictRequest(workflow=high.workflow(), priority="high")))
        wait_until(lambda: pending(service) == 2)
        hold.release()
        first = wait_until(lambda: [g.name for g in (low, high) if g.state()["entered"]])
        assert first == [high.name]
    finally:
        for gate in (hold, low, high):
            gate.release()
    for run in runs:
        assert run.join().error is None


def test_the_timeout_counts_from_the_start_not_the_wait_in_the_queue(attach: Attach, service: ServiceProcess):
    pipeline = attach()
    hold = service.gate()
    held = Run(pipeline, PredictRequest(workflow=hold.workflow()))
    try:
        hold.wait_entered()
        queued = Run(pipeline, PredictRequest(workflow=quick_workflow(), timeout_s=1.0))
        wait_until(lambda: pending(service) == 1)
        time.sleep(1.5)  # longer than the queued job's timeout, all of it spent waiting
    finally:
        hold.release()
    assert held.join().error is None
    assert queued.join().error is None, queued.error
    assert queued.result.timings["queued_ms"] > 1000


def test_a_prompt_that_waits_too_long_in_the_queue_is_dropped_and_503(attach: Attach, service: ServiceProcess):
    pipeline = attach(queue_wait_timeout_s=0.5)
    hold = service.gate()
    held = Run(pipeline, PredictRequest(workflow=hold.workflow()))
    try:
        hold.wait_entered()
        queued = Run(pipeline, PredictRequest(workflow=quick_workflow(), timeout_s=60)).join()
        assert isinstance(queued.error, QueueTimeout) and queued.error.status_code == 503
        assert queued.error.headers["Retry-After"]
        assert "QUEUE_WAIT_TIMEOUT_S" in queued.error.message
        assert pending(service) == 0  # dropped from ComfyUI's queue
    finally:
        hold.release()
    assert held.join().error is None


def test_cancel_and_shutdown_end_the_wait_at_once(attach: Attach, service: ServiceProcess):
    pipeline = attach()
    for stop in ("cancel", "shutdown"):
        gate = service.gate()
        cancel = Trigger()
        run = Run(pipeline, PredictRequest(workflow=gate.workflow(), timeout_s=600), cancel)
        try:
            gate.wait_entered()
            (cancel if stop == "cancel" else pipeline.runtime.stopping).set()
            run.join(10)  # the prompt waits for ever unless interrupted
            expected = Cancelled if stop == "cancel" else ComfyUnavailable
            assert isinstance(run.error, expected), run.error
            assert gate.state()["waiting"] == 0  # interrupted inside ComfyUI
        finally:
            gate.release()
    with pytest.raises(ComfyUnavailable):  # and nothing new starts while stopping
        pipeline.run(PredictRequest(workflow=quick_workflow()))
