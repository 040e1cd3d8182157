"""The two images as deploy.sh wires them: the api image (SERVICE_ROLE=api) takes the submit, Cloud
Tasks (the emulator) carries it to the worker image (SERVICE_ROLE=worker), which runs it and stores
its output in Cloud Storage (fake-gcs-server); the webhook goes out from the api's outbox. Each
container behind a Cloud Run-like ingress (tests/fixtures/ingress.py), as in tests/test_roles.py
for the same roles in processes."""

from __future__ import annotations

import pytest

from tests.fixtures.asyncjobs import FINAL, TASKS_ACCOUNT, cloud_env, wait_for
from tests.fixtures.comfy import free_port
from tests.fixtures.ingress import Ingress
from tests.fixtures.receiver import Receiver
from tests.image.conftest import Images
from tests.image.harness import Container, txt2img_request, worker_env


@pytest.fixture
def wired(images: Images, tasks_emulator, fake_gcs, docker_cleanup):
    api_port, worker_port = free_port(), free_port()
    api_ingress, worker_ingress = Ingress(api_port, TASKS_ACCOUNT), Ingress(worker_port, TASKS_ACCOUNT)
    settings = tasks_emulator.settings(worker_ingress.url)
    tasks_emulator.create_queues(settings)
    bucket = fake_gcs.new_bucket("images")
    common = cloud_env(
        settings, tasks_emulator, fake_gcs, bucket, API_URL=api_ingress.url, WORKER_URL=worker_ingress.url
    )
    api = Container(
        images.docker, images.api, {**common, "SERVICE_ROLE": "api", "SERVICE_URL": api_ingress.url}, port=api_port
    )
    worker = Container(
        images.docker,
        images.worker,
        worker_env(images.real, **common, SERVICE_ROLE="worker", SERVICE_URL=worker_ingress.url),
        port=worker_port,
    )
    yield api, worker, api_ingress, worker_ingress, bucket
    for container in (api, worker):
        container.remove()
    api_ingress.close()
    worker_ingress.close()


def test_the_api_image_queues_an_async_submit_then_the_worker_image_runs_it(wired, images: Images, fake_gcs):
    api, worker, api_ingress, worker_ingress, bucket = wired
    api.start()
    ready_s = api.wait_ready(timeout=60)  # no GPU, no ComfyUI to wait for
    assert api.get("/").json()["role"] == "api"
    receiver = Receiver()
    try:
        request = {**txt2img_request(images.real, seed=31), "async": True, "webhook": {"url": receiver.url}}
        submitted = api.post("/predict", json=request)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        # No worker yet: the task waits in Cloud Tasks (it keeps failing at the worker's door).
        assert api.get(f"/status/{job_id}").json()["state"] == "queued"

        worker.start().wait_ready()
        final = wait_for(
            api, job_id, lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at"), timeout=300
        )
        assert final["state"] == "succeeded", final
        (file,) = final["result"]["files"]
        assert file["uri"].startswith(f"gs://{bucket}/outputs/{job_id}/")
        data = fake_gcs.client().bucket(bucket).blob(file["uri"].split("/", 3)[3]).download_as_bytes()
        assert data.startswith(b"\x89PNG")
        (delivery,) = receiver.received
        assert delivery["verified"] and delivery["payload"]["data"]["job_id"] == job_id
        # The webhook task went to the api (its outbox), the run task to the worker.
        assert any(line.startswith("POST /tasks/webhook 2") for line in api_ingress.forwarded), api_ingress.forwarded
        assert not any("/tasks/webhook" in line for line in worker_ingress.forwarded), worker_ingress.forwarded
        assert any(line.startswith("POST /tasks/run 2") for line in worker_ingress.forwarded), worker_ingress.forwarded
    finally:
        receiver.close()
    for container in (api, worker):
        seconds, code = container.stop()
        assert code == 0 and seconds < 10, (container.image, seconds, code, container.logs()[-3000:])
    print(f"api image: docker run -> ready in {ready_s:.1f} s")
