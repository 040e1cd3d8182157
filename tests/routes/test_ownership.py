"""Jobs belong to their caller (issue 20): behind Cloud Run's IAM, an invoker read the job ids
of others from `/dashboard/data` (`recent[].id`, `running[].job_id`), then another caller's
status and output, and cancelled another caller's running job.

The service sits behind a test ingress (tests/fixtures/ingress.py) that hands each caller's
identity on as Cloud Run does; `ADMIN_EMAILS` names the one admin.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess, free_port
from tests.fixtures.ingress import Ingress, stripped_token

STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")
WORKFLOWS = Path(__file__).resolve().parents[2] / "test_resources"
ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "admin@example.com"
FINAL = {"succeeded", "failed", "cancelled"}


class As:
    """Requests through the ingress as one IAM identity."""

    def __init__(self, ingress: Ingress, email: str) -> None:
        self.url = ingress.url
        self.headers = {"X-Serverless-Authorization": "Bearer " + stripped_token(ingress.url, email)}

    def get(self, path: str, **headers: str) -> requests.Response:
        return requests.get(self.url + path, headers={**self.headers, **headers}, timeout=30)

    def post(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self.headers, timeout=60)


@pytest.fixture(scope="module")
def iam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, Ingress]]:
    port = free_port()
    ingress = Ingress(port, "tasks@test-project.iam.gserviceaccount.com")
    env = {"INGRESS_VERIFIES_TOKENS": "1", "ADMIN_EMAILS": ADMIN, "SERVICE_URL": ingress.url}
    svc = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("owners"), env=env, port=port)
    svc.start().wait_ready()
    yield svc, ingress
    svc.stop()
    ingress.close()


def quick(color: int) -> dict[str, Any]:
    wf = json.loads((WORKFLOWS / "comfy/workflows/empty_save.json").read_text())
    wf["1"]["inputs"].update(width=64, height=64, color=color)
    return wf


def submit(caller: As, workflow: dict[str, Any]) -> str:
    answer = caller.post("/predict", {"workflow": workflow, "async": True})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


def final(caller: As, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = caller.get(f"/status/{job_id}").json()
        if view.get("state") in FINAL:
            return dict(view)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_the_dashboard_is_for_admins_only(iam):
    svc, ingress = iam
    alice, bob, admin = As(ingress, ALICE), As(ingress, BOB), As(ingress, ADMIN)
    job_id = submit(alice, quick(4100))
    final(alice, job_id)
    for path in ("/dashboard", "/dashboard/data", "/system"):
        refused = bob.get(path)
        assert refused.status_code == 403, (path, refused.text)
        assert job_id not in refused.text
    data = admin.get("/dashboard/data")
    assert data.status_code == 200 and job_id in data.text
    assert admin.get("/dashboard").status_code == 200


def test_another_callers_job_is_no_job_at_all(iam):
    svc, ingress = iam
    alice, bob, admin = As(ingress, ALICE), As(ingress, BOB), As(ingress, ADMIN)
    job_id = submit(alice, quick(4200))
    view = final(alice, job_id)
    assert view["state"] == "succeeded"
    (file,) = view["result"]["files"]
    output = file["url"].split("/outputs/", 1)[1]
    assert alice.get(f"/outputs/{output}").content.startswith(b"\x89PNG")
    followed = bob.get(f"/status/{job_id}", Accept="text/event-stream")  # followed live: no stream either
    for answer in (
        bob.get(f"/status/{job_id}"),
        followed,
        bob.get(f"/outputs/{output}"),
        bob.post(f"/cancel/{job_id}"),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["message"] in ("no such job", "no such output")
    assert admin.get(f"/status/{job_id}").status_code == 200  # an admin sees every job


def test_nobody_else_cancels_a_running_job(iam):
    svc, ingress = iam
    alice, bob = As(ingress, ALICE), As(ingress, BOB)
    gate = svc.gate()
    job_id = submit(alice, gate.workflow())
    gate.wait_entered()
    try:
        assert bob.post(f"/cancel/{job_id}").status_code == 404
        assert alice.get(f"/status/{job_id}").json()["state"] in ("placed", "running")  # in ComfyUI
        assert alice.post(f"/cancel/{job_id}").status_code in (200, 202)
    finally:
        gate.release()
    assert final(alice, job_id)["state"] in FINAL
