"""Async jobs end to end: `python -m handler` against the ComfyUI stand-in, over real sockets.

Local mode (embedded queue and store), and cloud mode wired to a real Cloud Tasks emulator that
POSTs to the service and a real fake-gcs-server; webhooks go to a receiver that verifies every
signature with the standardwebhooks library.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import pytest
import requests

from handler.jobs.worker import LOCAL_SLOTS
from tests.fixtures.asyncjobs import (
    BASE_ENV,
    FINAL,
    STANDIN_TARGET,
    TASKS_ACCOUNT,
    cloud_env,
    failing,
    load,
    medium,
    quick,
    status,
    submit,
    wait_for,
)
from tests.fixtures.comfy import ServiceProcess, free_port
from tests.fixtures.ingress import Ingress, stripped_token
from tests.fixtures.receiver import Receiver
from tests.fixtures.sections import sections
from tests.fixtures.waiting import stays


def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    svc = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("jobs-local"), env=dict(BASE_ENV))
    svc.start().wait_ready()
    yield svc
    svc.stop()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# --- local mode -------------------------------------------------------------------------------


def test_async_job_succeeds_with_outputs_and_a_verified_webhook(local, receiver):
    job_id = submit(local, quick(101), webhook={"url": receiver.url}, inline=True)
    final = wait_for(local, job_id, lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at"))
    assert final["state"] == "succeeded" and final["attempts"] == 1 and final["priority"] == "normal"
    (file,) = final["result"]["files"]
    assert file["content_type"] == "image/png" and file["base64"]
    assert file["uri"].startswith(f"local://outputs/{job_id}/")  # never a server path
    image = requests.get(file["url"], timeout=10)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    (delivery,) = receiver.received
    assert delivery["verified"]
    assert delivery["payload"]["type"] == "job.succeeded"
    assert delivery["payload"]["data"]["job_id"] == job_id
    assert final["webhook"]["attempts"] == 1 and final["webhook"]["last_status"] == 204


def test_a_job_that_finds_a_free_place_starts_at_once_and_one_that_does_not_waits(local):
    # ComfyUI idle: the job is created already placed (one write, no hop through the line).
    response = local.post("/predict", json={"workflow": quick(151), "async": True})
    assert response.status_code == 202 and response.json()["state"] == "placed", response.text
    final = wait_for(local, response.json()["job_id"])
    assert final["state"] == "succeeded" and final["attempts"] == 1
    # Every place taken: the next one waits in line, and starts when a place frees.
    gates = [local.gate() for _ in range(LOCAL_SLOTS)]
    held = [submit(local, gate.workflow()) for gate in gates]
    gates[0].wait_entered()
    wait_until(
        lambda: [status(local, job_id)["state"] for job_id in held] == ["running"] + ["placed"] * (LOCAL_SLOTS - 1)
    )
    response = local.post("/predict", json={"workflow": quick(152), "async": True})
    assert response.status_code == 202 and response.json()["state"] == "queued", response.text
    for gate in gates:
        gate.release()
    final = wait_for(local, response.json()["job_id"])
    assert final["state"] == "succeeded" and final["attempts"] == 1
    assert all(wait_for(local, job_id)["state"] == "succeeded" for job_id in held)


def test_requests_that_cannot_run_are_refused_before_they_are_accepted(local):
    cases = [
        ({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}, 400, "workflow_invalid"),
        ({"workflow": quick(1), "priority": "urgent"}, 400, "bad_request"),
        ({"workflow": quick(1), "webhook": {"url": "http://169.254.169.254/computeMetadata/v1/"}}, 400, "unsafe_url"),
        ({"workflow": quick(1), "webhook": {"url": "http://metadata.google.internal/"}}, 400, "unsafe_url"),
        ({"workflow": quick(1), "webhook": {"url": "http://10.0.0.8/hook"}}, 400, "unsafe_url"),
        ({"workflow": quick(1), "webhook": {"url": "http://127.0.0.2:9/hook"}}, 400, "unsafe_url"),
        ({"workflow": quick(1), "webhook": {"url": "http://[::1]:9/hook"}}, 400, "unsafe_url"),
        ({"workflow": quick(1), "webhook": {"url": "file:///etc/passwd"}}, 400, "unsafe_url"),
        (
            {
                "workflow": load("comfy/workflows/loadimage_invert_save.json"),
                "images": [{"name": "in.png", "image": "http://169.254.169.254/latest/meta-data"}],
            },
            400,
            "unsafe_url",
        ),
    ]
    for body, code, error in cases:
        response = local.post("/predict", json={**body, "async": True})
        assert response.status_code == code, (body, response.text)
        assert response.json()["error"]["code"] == error
    assert local.get("/status/doesnotexist").status_code == 404
    assert local.get("/status/..%2F..%2Fetc").status_code == 404


def test_strict_priority_then_fifo(local):
    # A held job runs; the first jobs submitted fill the other places in ComfyUI's queue (a low
    # one among them), the rest wait in ours. ComfyUI runs what it holds by priority, and we hand
    # it the rest by priority: the order they finish in is strict priority, FIFO within each.
    gate = local.gate()
    blocker = submit(local, gate.workflow())
    gate.wait_entered()
    order = [("low", "l1"), ("normal", "n1"), ("high", "h1"), ("low", "l2"), ("high", "h2"), ("normal", "n2")]
    inside = LOCAL_SLOTS - 1
    # Each takes long enough (~0.1 s) that the next is handed over before ComfyUI needs it.
    ids = {}
    for i, (prio, name) in enumerate(order):
        ids[name] = submit(local, medium(3000 + i), priority=prio)
        if i < inside:
            wait_for(local, ids[name], lambda s: s["state"] == "placed")  # in ComfyUI's queue
    assert all(status(local, ids[name])["state"] == "queued" for _, name in order[inside:])
    gate.release()
    finals = {name: wait_for(local, job_id) for name, job_id in ids.items()}
    assert all(f["state"] == "succeeded" for f in finals.values())
    finished = sorted(finals, key=lambda name: finals[name]["finished_at"])
    assert finished == ["h1", "h2", "n1", "n2", "l1", "l2"], finished
    assert wait_for(local, blocker)["state"] == "succeeded"


def test_cancel_a_queued_job_and_a_running_one(local, receiver):
    held = local.gate()  # never released: only the cancel ends it
    running = submit(local, held.workflow())
    held.wait_entered()
    others = [local.gate() for _ in range(LOCAL_SLOTS - 1)]
    behind = [submit(local, other.workflow()) for other in others]
    for job_id in behind:  # sent to ComfyUI, queued behind `running`: every place is taken
        wait_for(local, job_id, lambda s: s["state"] == "placed")
    queued = submit(local, quick(4002), webhook={"url": receiver.url})

    response = local.post(f"/cancel/{queued}")
    assert response.status_code == 200 and response.json()["cancel"] == "dequeued"
    response = local.post(f"/cancel/{running}")
    assert response.status_code == 202 and response.json()["cancel"] == "interrupting"

    final = wait_for(local, running)
    assert final["state"] == "cancelled" and final["error"]["code"] == "cancelled"
    for other in others:
        other.release()
    assert all(wait_for(local, job_id)["state"] == "succeeded" for job_id in behind)
    cancelled = wait_for(local, queued, lambda s: s.get("webhook", {}).get("delivered_at"))
    assert cancelled["state"] == "cancelled" and cancelled["attempts"] == 0  # it never ran
    assert [d["payload"]["type"] for d in receiver.received] == ["job.cancelled"]
    assert local.post(f"/cancel/{queued}").status_code == 409  # already final


def test_a_permanent_failure_is_reported_once(local, receiver):
    job_id = submit(local, failing(), webhook={"url": receiver.url})
    final = wait_for(local, job_id, lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at"))
    assert final["state"] == "failed" and final["attempts"] == 1
    assert final["error"]["code"] != "gave_up"
    assert stays(lambda: [d["payload"]["type"] for d in receiver.received] == ["job.failed"], 0.5)


def test_webhook_target_down_then_up(local):
    port = free_port()
    job_id = submit(local, quick(5000), webhook={"url": f"http://127.0.0.1:{port}/hook"})
    # at least one attempt fails against the closed port: the job's webhook record counts them
    wait_for(local, job_id, lambda s: s["state"] == "succeeded" and s.get("webhook", {}).get("attempts", 0) >= 1)
    up = Receiver(port=port)
    try:
        final = wait_for(local, job_id, lambda s: s.get("webhook", {}).get("delivered_at"))
        assert final["webhook"]["attempts"] >= 2
        assert len(up.received) == 1 and up.received[0]["verified"]
    finally:
        up.close()


def test_restart_with_queued_jobs_loses_none(tmp_path):
    svc = ServiceProcess(STANDIN_TARGET, tmp_path / "svc", env=dict(BASE_ENV)).start().wait_ready()
    try:
        gates = [svc.gate() for _ in range(2)]
        ids = [submit(svc, gate.workflow()) for gate in gates]
        ids += [submit(svc, quick(6100 + i), priority=p) for i, p in enumerate(["low", "high", "normal"])]
        gates[0].wait_entered()
        svc.stop()  # SIGTERM while one runs and the rest wait
        svc.start().wait_ready()
        for gate in gates:  # a new ComfyUI: its gates are new, and open from now on
            gate.release()
        finals = [wait_for(svc, job_id) for job_id in ids]
        assert [f["state"] for f in finals] == ["succeeded"] * 5, finals
        assert finals[0]["attempts"] == 1  # handed back by the shutdown: not an attempt
    finally:
        svc.stop()


def test_comfyui_crash_is_transient_and_retried_to_success(tmp_path):
    svc = ServiceProcess(STANDIN_TARGET, tmp_path / "svc", env=dict(BASE_ENV)).start().wait_ready()
    try:
        gate = svc.gate()
        job_id = submit(svc, gate.workflow())
        gate.wait_entered()
        os.kill(svc.comfy_pid(), signal.SIGKILL)
        gate.release(wait_s=60)  # in the ComfyUI that the supervisor starts again
        final = wait_for(svc, job_id)
        assert final["state"] == "succeeded" and final["attempts"] == 2, final
    finally:
        svc.stop()


# --- cloud mode: Cloud Tasks emulator + fake-gcs-server -------------------------------------


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, tasks_emulator, fake_gcs):
    """The service behind a Cloud Run ingress (stripped task tokens, 429 when full), which is
    also its SERVICE_URL: the emulator's tasks reach it through the ingress, as on Cloud Run."""
    port = free_port()
    ingress = Ingress(port, TASKS_ACCOUNT)
    url = ingress.url
    settings = tasks_emulator.settings(url)
    tasks_emulator.create_queues(settings)
    bucket = fake_gcs.new_bucket("jobs")
    env = cloud_env(settings, tasks_emulator, fake_gcs, bucket, SERVICE_URL=url)
    svc = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("jobs-cloud"), env=env, port=port)
    svc.start().wait_ready()
    svc.queue_settings = settings
    svc.bucket = bucket
    svc.ingress = ingress
    yield svc
    svc.stop()
    ingress.close()


def test_cloud_tasks_deliver_to_tasks_run_and_results_land_in_gcs(cloud, fake_gcs, receiver):
    job_id = submit(cloud, quick(8000), priority="high", webhook={"url": receiver.url})
    final = wait_for(cloud, job_id, lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at"))
    assert final["state"] == "succeeded" and final["attempts"] == 1
    (file,) = final["result"]["files"]
    assert file["uri"].startswith(f"gs://{cloud.bucket}/outputs/{job_id}/")
    assert file["url"] is None and "gs://" in final["result"]["url_note"]  # the emulator cannot sign
    blob_name = file["uri"].split("/", 3)[3]
    data = fake_gcs.client().bucket(cloud.bucket).blob(blob_name).download_as_bytes()
    assert data.startswith(b"\x89PNG")
    job = json.loads(fake_gcs.client().bucket(cloud.bucket).blob(f"jobs/{job_id}.json").download_as_bytes())
    assert job["state"] == "succeeded" and job["lease"] is None
    assert receiver.received[0]["verified"]


def test_duplicate_deliveries_run_a_job_once(cloud, tasks_emulator):
    from handler.taskqueue.cloudtasks import CloudTasksQueue

    gate = cloud.gate()
    job_id = submit(cloud, gate.workflow(), priority="low")
    # The emulator does not deduplicate task names (Cloud Tasks does): a second task for the
    # same job is a duplicate delivery. And one more, straight to /tasks/run while it runs.
    queue = CloudTasksQueue(**sections(cloud.queue_settings, "jobs", "cloud"))
    try:
        queue.enqueue(job_id, "normal")
    finally:
        queue.close()
    gate.wait_entered()
    direct = requests.post(f"{cloud.ingress.url}/tasks/run", json={"job_id": job_id}, timeout=30)
    assert direct.status_code in (200, 409), direct.text
    gate.release()
    final = wait_for(cloud, job_id)
    assert final["state"] == "succeeded" and final["attempts"] == 1
    again = requests.post(f"{cloud.ingress.url}/tasks/run", json={"job_id": job_id}, timeout=30)
    assert again.status_code == 200 and again.json()["outcome"] == "final"
    assert again.json()["job"]["attempts"] == 1


def test_client_created_tasks_can_target_predict(cloud, receiver):
    from google.cloud import tasks_v2

    from handler.taskqueue.cloudtasks import _client

    settings = cloud.queue_settings
    client = _client(settings.tasks_emulator_host)
    parent = client.queue_path(settings.gcp_project, settings.tasks_location, f"{settings.tasks_queue_prefix}-normal")
    body = {"workflow": quick(8200), "webhook": {"url": receiver.url}}
    task = tasks_v2.Task(
        name=f"{parent}/tasks/client-made-1",
        http_request=tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=f"{cloud.ingress.url}/predict",
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
        ),
    )
    client.create_task(parent=parent, task=task)
    client.create_task(parent=parent, task=task)  # delivered twice: one job, one webhook
    wait_until(lambda: len(receiver.received) >= 1)
    assert stays(lambda: len(receiver.received) == 1, 1.5)  # the second delivery makes no second job
    payload = receiver.received[0]["payload"]
    assert payload["type"] == "job.succeeded" and payload["data"]["job_id"].startswith("ct-")
    assert payload["data"]["source"] == "cloudtasks"
    client.transport.close()


def test_cloud_permanent_failure_is_final_for_cloud_tasks(cloud, receiver):
    job_id = submit(cloud, failing(), webhook={"url": receiver.url})
    final = wait_for(cloud, job_id, lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at"))
    assert final["state"] == "failed" and final["attempts"] == 1
    # a 5xx would make the emulator deliver again at once
    assert stays(lambda: status(cloud, job_id)["attempts"] == 1, 1.0)
    assert len(receiver.received) == 1


def test_task_deliveries_need_a_task_token_stripped_by_cloud_run_or_signed(cloud):
    """Behind Cloud Run's IAM the token arrives without its signature: accepted, but only for
    our audience and the configured account; no token at all is refused."""
    audience = cloud.ingress.url
    headers = {"Authorization": "Bearer " + stripped_token(audience, TASKS_ACCOUNT)}
    ok = cloud.post("/tasks/run", json={"job_id": "nosuchjob"}, headers=headers)
    assert ok.status_code == 200 and ok.json()["outcome"] == "idle", ok.text
    assert cloud.post("/tasks/run", json={"job_id": "nosuchjob"}).status_code == 401
    for claims, status_code in [
        ({"email": "intruder@evil.iam.gserviceaccount.com"}, 403),
        ({"aud": "https://other.run.app"}, 401),
        ({"exp": int(time.time()) - 600}, 401),
        ({"iss": "https://evil.example"}, 401),
    ]:
        bad = {"Authorization": "Bearer " + stripped_token(audience, TASKS_ACCOUNT, **claims)}
        for path in ("/tasks/run", "/tasks/webhook"):
            response = cloud.post(path, json={"job_id": "x"}, headers=bad)
            assert response.status_code == status_code, (claims, path, response.text)
            assert response.json()["error"]["code"] in ("unauthorized", "forbidden")


def test_cloud_tasks_headers_on_predict_need_a_token(cloud):
    """Without a task token, X-CloudTasks-* headers are not honoured: nobody can name a task
    (and so a job id) of someone else's by sending the same header values."""
    body = {"workflow": quick(8300)}
    forged = {"X-CloudTasks-TaskName": "client-made-1", "X-CloudTasks-QueueName": "q"}
    response = cloud.post("/predict", json=body, headers=forged)
    assert response.status_code == 401, response.text
    wrong = {**forged, "Authorization": "Bearer " + stripped_token(cloud.ingress.url, "x@evil.iam.gserviceaccount.com")}
    assert cloud.post("/predict", json=body, headers=wrong).status_code == 403


def test_sigkill_at_each_step_loses_no_job_and_no_webhook(tmp_path):
    """The service is killed hard (SIGKILL) while one job waits, one runs, and one is final with
    its webhook still failing; after a restart every job ends once, with its own bytes, and every
    webhook arrives."""
    port = free_port()
    svc = ServiceProcess(STANDIN_TARGET, tmp_path / "svc", env=dict(BASE_ENV)).start().wait_ready()
    try:
        done = submit(svc, quick(9000), webhook={"url": f"http://127.0.0.1:{port}/hook"})
        wait_for(svc, done, lambda s: s["state"] == "succeeded" and s["webhook"]["attempts"] >= 1)
        gate = svc.gate()
        running = submit(svc, gate.workflow(), webhook={"url": f"http://127.0.0.1:{port}/hook"})
        gate.wait_entered()
        queued = submit(svc, quick(9001), priority="low", webhook={"url": f"http://127.0.0.1:{port}/hook"})
        svc.process.kill()  # no shutdown, no hand-back: as a crash or an OOM kill
        svc.process.wait(30)
        receiver = Receiver(port=port)
        try:
            svc.start().wait_ready()
            gate.release()  # the new ComfyUI's gate: open from now on
            finals = {
                job_id: wait_for(svc, job_id, lambda s: s["state"] in FINAL and s["webhook"].get("delivered_at"))
                for job_id in (done, running, queued)
            }
            assert all(f["state"] == "succeeded" for f in finals.values()), finals
            assert finals[running]["attempts"] == 2  # the killed run counts: nobody could tell
            for final in finals.values():
                (file,) = final["result"]["files"]
                data = requests.get(file["url"], timeout=10).content
                assert data.startswith(b"\x89PNG") and len(data) == file["size"]
            seen = sorted(d["payload"]["data"]["job_id"] for d in receiver.received)
            assert sorted(set(seen)) == sorted(finals) and all(d["verified"] for d in receiver.received)
        finally:
            receiver.close()
    finally:
        svc.stop()


def test_strict_priority_through_cloud_tasks_at_full_concurrency(tmp_path, tasks_emulator, fake_gcs):
    """One request slot (Cloud Run answers 429 beyond it), a job holding it, then low, normal
    and high jobs: Cloud Tasks keeps no order and retries whichever task it likes, yet they run
    high, normal, low, because a delivery runs the first job in the store's line."""
    port = free_port()
    ingress = Ingress(port, TASKS_ACCOUNT, concurrency=1)
    settings = tasks_emulator.settings(ingress.url)
    tasks_emulator.create_queues(settings)
    env = cloud_env(
        settings,
        tasks_emulator,
        fake_gcs,
        fake_gcs.new_bucket("strict"),
        SERVICE_URL=ingress.url,
        GCS_OBJECT_WRITE_INTERVAL_S="0",
    )
    svc = ServiceProcess(STANDIN_TARGET, tmp_path / "svc", env=env, port=port).start().wait_ready()
    try:
        gate = svc.gate()
        holder = submit(svc, gate.workflow(), priority="high")
        gate.wait_entered()
        ids = {name: submit(svc, quick(12000 + i), priority=name) for i, name in enumerate(["low", "normal", "high"])}
        wait_until(lambda: ingress.refused >= 3)  # their tasks meet the full instance
        gate.release()
        finals = {name: wait_for(svc, job_id) for name, job_id in ids.items()}
        assert wait_for(svc, holder)["state"] == "succeeded"
        assert all(f["state"] == "succeeded" for f in finals.values()), finals
        assert sorted(finals, key=lambda name: finals[name]["started_at"]) == ["high", "normal", "low"]
    finally:
        svc.stop()
        ingress.close()


@pytest.mark.parametrize("point", ["claimed", "ran", "uploaded", "final", "delivered"])
def test_killed_at_any_step_a_job_ends_once_with_its_bytes_and_its_webhook(tmp_path, point):
    """The fault matrix: the process is killed hard (SIGKILL, handler/failpoints.py) at one step
    of a job, then started again: the job reaches one final state, its result is its own bytes,
    and its webhook arrives (at least once, always with the same webhook-id)."""
    receiver = Receiver()
    svc = ServiceProcess(STANDIN_TARGET, tmp_path / "svc", env={**BASE_ENV, "FAILPOINT_KILL": point}).start()
    try:
        svc.wait_ready()
        try:
            job_id: str | None = submit(svc, quick(13000 + len(point)), webhook={"url": receiver.url})
        except requests.ConnectionError:
            # Killed at the claim before its 202 went out: the job exists all the same, and its
            # webhook names it (the client of a real service learns it the same way).
            assert point == "claimed"
            job_id = None
        assert svc.process is not None and svc.process.wait(60) == -signal.SIGKILL
        svc.env.pop("FAILPOINT_KILL")
        svc.start().wait_ready()
        if job_id is None:
            wait_until(lambda: len(receiver.received) >= 1, timeout=60)
            job_id = receiver.received[0]["payload"]["data"]["job_id"]
        final = wait_for(svc, job_id, lambda s: s["state"] in FINAL and s["webhook"].get("delivered_at"))
        assert final["state"] == "succeeded", final
        assert final["attempts"] == (1 if point in ("final", "delivered") else 2)  # a killed run counts
        (file,) = final["result"]["files"]
        data = requests.get(file["url"], timeout=10).content
        assert data.startswith(b"\x89PNG") and len(data) == file["size"]
        assert f"/outputs/{job_id}/" in file["url"]
        wait_until(lambda: len(receiver.received) >= 1)
        ids = {d["headers"]["webhook-id"] for d in receiver.received}
        assert len(ids) == 1 and all(d["verified"] for d in receiver.received)
        assert {d["payload"]["data"]["job_id"] for d in receiver.received} == {job_id}
    finally:
        svc.stop()
        receiver.close()
