"""An async job followed live: `GET /status/{job_id}` with `Accept: text/event-stream` streams a
`status` event (the same JSON a plain call answers) each time the job's state or progress
changes, and ends after the one that shows it final, so a client needs no polling loop. Read
from the job store, so any instance can serve it. Stand-in and, when one is given, real ComfyUI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from tests.fixtures.asyncjobs import BASE_ENV, FINAL, failing, quick, status, submit
from tests.fixtures.comfy import ComfyTarget, ServiceProcess

EVENTS = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def svc(comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess(comfy_target, tmp_path_factory.mktemp(f"follow-{comfy_target.name}"), env=dict(BASE_ENV))
    service.start().wait_ready(300)
    yield service
    service.stop()


def events(response: requests.Response) -> Iterator[tuple[str, dict]]:
    kind = None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind is not None:
            yield kind, json.loads(line.removeprefix("data: "))
            kind = None


def follow(service: ServiceProcess, job_id: str, timeout: float = 120) -> list[tuple[str, dict]]:
    started = time.monotonic()
    with requests.get(f"{service.url}/status/{job_id}", headers=EVENTS, stream=True, timeout=timeout) as response:
        assert response.status_code == 200, response.text[:400]
        assert response.headers["content-type"].startswith("text/event-stream")
        seen = list(events(response))  # ends when the service closes the stream
    assert time.monotonic() - started < timeout
    return seen


def test_a_job_is_followed_from_its_state_at_connect_to_its_end(svc: ServiceProcess) -> None:
    gate = svc.gate()
    job_id = submit(svc, gate.workflow())
    gate.wait_entered()
    with requests.get(f"{svc.url}/status/{job_id}", headers=EVENTS, stream=True, timeout=120) as response:
        assert response.status_code == 200
        stream = events(response)
        kind, first = next(stream)
        assert kind == "status" and first["job_id"] == job_id and first["state"] in ("placed", "running"), first
        gate.release()
        rest = list(stream)
    assert rest, "the stream ended without the final state"
    assert all(kind == "status" for kind, _ in rest)
    last = rest[-1][1]
    assert last["state"] == "succeeded" and last == status(svc, job_id)  # what a plain call answers
    assert [view["state"] for _, view in rest].count("succeeded") == 1  # nothing after the end


def test_a_job_already_final_is_one_event(svc: ServiceProcess) -> None:
    job_id = submit(svc, quick(3))
    while status(svc, job_id)["state"] not in FINAL:
        time.sleep(0.05)
    assert [(kind, view["state"]) for kind, view in follow(svc, job_id)] == [("status", "succeeded")]


def test_a_failed_job_ends_its_stream_with_its_error(svc: ServiceProcess) -> None:
    job_id = submit(svc, failing())
    seen = follow(svc, job_id)
    assert seen[-1][1]["state"] == "failed" and seen[-1][1]["error"]["code"], seen[-1]


def test_no_such_job_is_a_plain_404_before_any_stream(svc: ServiceProcess) -> None:
    response = requests.get(f"{svc.url}/status/{'0' * 32}", headers=EVENTS, timeout=30)
    assert response.status_code == 404 and response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"
