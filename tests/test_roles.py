"""The api/worker split as deployed: two processes, Cloud Tasks between them (the emulator,
through Cloud Run-like ingresses that strip token signatures), one bucket (fake-gcs-server).

The api role has no ComfyUI: it takes async submits, answers /status while no worker is up,
checks submits against the catalogue a worker published, and delivers webhooks; the worker
runs the jobs its tasks claim.
"""

from __future__ import annotations

import sys

import pytest

from tests.fixtures.asyncjobs import BASE_ENV, FINAL, TASKS_ACCOUNT, cloud_env, quick, wait_for
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess, free_port
from tests.fixtures.ingress import Ingress
from tests.fixtures.receiver import Receiver

STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")


@pytest.fixture
def split(tmp_path, tasks_emulator, fake_gcs):
    api_port, worker_port = free_port(), free_port()
    api_ingress, worker_ingress = Ingress(api_port, TASKS_ACCOUNT), Ingress(worker_port, TASKS_ACCOUNT)
    settings = tasks_emulator.settings(worker_ingress.url)
    tasks_emulator.create_queues(settings)
    bucket = fake_gcs.new_bucket("split")
    common = cloud_env(
        settings, tasks_emulator, fake_gcs, bucket, API_URL=api_ingress.url, WORKER_URL=worker_ingress.url
    )
    api = ServiceProcess(
        STANDIN_TARGET,
        tmp_path / "api",
        port=api_port,
        env={**common, "SERVICE_ROLE": "api", "SERVICE_URL": api_ingress.url},
    )
    worker = ServiceProcess(
        STANDIN_TARGET,
        tmp_path / "worker",
        port=worker_port,
        env={**common, "SERVICE_ROLE": "worker", "SERVICE_URL": worker_ingress.url},
    )
    yield api, worker
    for process in (api, worker):
        process.stop()
    api_ingress.close()
    worker_ingress.close()


def test_the_api_serves_status_while_no_worker_is_up_then_a_worker_runs_the_job(split):
    api, worker = split
    api.start().wait_ready()
    assert api.get("/healthz").status_code == 200  # no ComfyUI to wait for
    assert api.get("/").json()["role"] == "api" and api.get("/").json()["comfyui"] is None
    assert api.get("/models").status_code == 404
    sync = api.post("/predict", json={"workflow": quick(1)})
    assert sync.status_code == 400 and sync.json()["error"]["worker_url"].startswith("http://127.0.0.1:")
    receiver = Receiver()
    try:
        submitted = api.post(
            "/predict", json={"workflow": quick(11000), "async": True, "webhook": {"url": receiver.url}}
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        # No worker yet: the task keeps failing at the worker's door, the status stays readable.
        assert api.get(f"/status/{job_id}").json()["state"] == "queued"

        worker.start().wait_ready()
        assert worker.post("/predict", json={"workflow": quick(2), "async": True}).status_code == 400
        final = wait_for(api, job_id, lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at"))
        assert final["state"] == "succeeded" and final["attempts"] == 1
        (delivery,) = receiver.received
        assert delivery["verified"] and delivery["payload"]["data"]["job_id"] == job_id
        # The worker published its catalogue: the api now refuses what no worker could run.
        unknown = api.post(
            "/predict", json={"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}, "async": True}
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "workflow_invalid"
        sync_on_worker = worker.post("/predict", json={"workflow": quick(3)})
        assert sync_on_worker.status_code == 200 and sync_on_worker.json()["status"] == "success"
    finally:
        receiver.close()


def test_an_api_role_without_cloud_tasks_is_a_configuration_error(tmp_path):
    api = ServiceProcess(STANDIN_TARGET, tmp_path / "api", env={"SERVICE_ROLE": "api"})
    api.start()
    assert api.process is not None
    assert api.process.wait(30) != 0
    assert "SERVICE_ROLE=api needs Cloud Tasks" in api.log()


def test_a_second_process_on_one_state_dir_stops_at_start(tmp_path):
    """Two processes draining one local queue would run each job twice: the second refuses."""
    first = ServiceProcess(STANDIN_TARGET, tmp_path / "state", env=dict(BASE_ENV)).start().wait_ready()
    try:
        second = ServiceProcess(STANDIN_TARGET, tmp_path / "state", env=dict(BASE_ENV)).start()
        assert second.process is not None and second.process.wait(30) == 2
        assert "another process is already serving from STATE_DIR" in second.log()
        assert first.get("/healthz").status_code == 200
    finally:
        first.stop()
