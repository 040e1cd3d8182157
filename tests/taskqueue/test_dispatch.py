"""Cloud Tasks as it really dispatches, in front of the service: emulator → Dispatcher → Ingress → service.

tests/fixtures/dispatcher.py adds what the emulator lacks (named-task dedupe, retries with
backoff and Cloud Tasks' headers, RS256-signed OIDC tokens); tests/fixtures/ingress.py verifies
and strips those tokens as Cloud Run does. The first tests hold each fixture to that contract
against a plain receiver; the rest run the service in cloud mode (Cloud Tasks emulator,
fake-gcs-server) behind both, one process for the module: each test leaves no job unfinished.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from google.auth import jwt

from handler.config import Settings
from tests.fixtures.asyncjobs import FINAL, TASKS_ACCOUNT, cloud_env, quick, status, submit, wait_for
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess, free_port
from tests.fixtures.dispatcher import Attempt, Dispatcher, SigningKey
from tests.fixtures.ingress import STRIPPED, Ingress, stripped_token
from tests.fixtures.receiver import Receiver
from tests.fixtures.sections import sections
from tests.fixtures.waiting import stays, wait_until

STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")
INTRUDER = "intruder@other-project.iam.gserviceaccount.com"
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.05, 0.4
QUEUE = "projects/test-project/locations/us-central1/queues/q-normal"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def origin(url: str) -> str:
    return "/".join(url.split("/", 3)[:3])


def as_the_emulator(dispatcher: Dispatcher, task_id: str) -> requests.Response:
    """One dispatch of a task `{"job_id": task_id}` the way gcloud-tasks-emulator makes it
    (full queue path, its own counts)."""
    headers = {
        "Content-Type": "application/json",
        "X-CloudTasks-QueueName": QUEUE,
        "X-CloudTasks-TaskName": task_id,
        "X-CloudTasks-TaskRetryCount": "0",
        "X-CloudTasks-TaskExecutionCount": "0",
    }
    return requests.post(
        f"{dispatcher.url}/tasks/run", data=json.dumps({"job_id": task_id}), headers=headers, timeout=10
    )


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def assert_backed_off(attempts: list[Attempt]) -> None:
    """Retry n waited at least min(max, min · 2ⁿ) after attempt n ended, counts as Cloud Tasks keeps them."""
    assert [a.retry_count for a in attempts] == list(range(len(attempts)))
    for n, (before, after) in enumerate(zip(attempts, attempts[1:], strict=False)):
        assert after.started - before.ended >= min(MAX_BACKOFF_S, MIN_BACKOFF_S * 2**n) - 0.005, (n, attempts)
        answered = 1 if before.status and not 500 <= before.status < 600 else 0
        assert after.execution_count == before.execution_count + answered


# --- the fixtures' own contract ------------------------------------------------------------------


def test_the_dispatcher_retries_with_backoff_sends_cloud_tasks_headers_and_dedupes_names(key):
    upstream = Receiver(statuses=[429, 503, 200, 200])
    dispatcher = Dispatcher(
        origin(upstream.url),
        key=key,
        account=TASKS_ACCOUNT,
        min_backoff_s=MIN_BACKOFF_S,
        max_backoff_s=MAX_BACKOFF_S,
    )
    try:
        assert as_the_emulator(dispatcher, "j1").status_code == 200  # at once, not after retries
        dispatcher.wait_idle(10)
        attempts = dispatcher.attempts_for("q-normal/tasks/j1")
        assert [a.status for a in attempts] == [429, 503, 200]
        assert_backed_off(attempts)
        sent = [lower(r["headers"]) for r in upstream.received]
        assert [h["x-cloudtasks-taskretrycount"] for h in sent] == ["0", "1", "2"]
        assert [h["x-cloudtasks-taskexecutioncount"] for h in sent] == ["0", "1", "1"]  # a 503 is no execution
        assert [h.get("x-cloudtasks-taskpreviousresponse") for h in sent] == [None, "429", "503"]
        assert {(h["x-cloudtasks-queuename"], h["x-cloudtasks-taskname"]) for h in sent} == {("q-normal", "j1")}
        assert all(r["payload"] == {"job_id": "j1"} for r in upstream.received)
        # Not created through the relay: audience is the task's target URL, as Cloud Tasks' default.
        token = sent[0]["authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, certs=key.public_pem, audience=f"{dispatcher.url}/tasks/run")
        assert claims["iss"] == "https://accounts.google.com" and claims["email"] == TASKS_ACCOUNT
        assert claims["email_verified"] and claims["exp"] > time.time() + 3000

        # The same name again within the hold: answered, never dispatched.
        assert as_the_emulator(dispatcher, "j1").status_code == 200
        assert dispatcher.deduped == 1
        assert stays(lambda: len(upstream.received) == 3, 0.3)
        dispatcher.hold_s = 0  # the hold is over: the name may be used by a new task
        as_the_emulator(dispatcher, "j1")
        dispatcher.wait_idle(10)
        assert len(upstream.received) == 4 and dispatcher.delivered.count(f"{QUEUE}/tasks/j1") == 2
    finally:
        dispatcher.close()
        upstream.close()


def test_the_dispatcher_gives_up_after_max_attempts():
    dispatcher = Dispatcher(f"http://127.0.0.1:{free_port()}", min_backoff_s=0.01, max_backoff_s=0.02, max_attempts=3)
    try:
        as_the_emulator(dispatcher, "nobody-home")
        dispatcher.wait_idle(10)
        attempts = dispatcher.attempts_for("nobody-home")
        assert [(a.status, a.execution_count, a.email) for a in attempts] == [(0, 0, None)] * 3  # no answer, no token
        assert dispatcher.gave_up == [f"{QUEUE}/tasks/nobody-home"] and dispatcher.delivered == []
    finally:
        dispatcher.close()


class HoldingUpstream:
    """Answers 200 to each request once `release` is set; counts how many it holds at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.in_flight = self.peak = 0
        lock, outer = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    outer.in_flight += 1
                    outer.peak = max(outer.peak, outer.in_flight)
                outer.release.wait(10)
                with lock:
                    outer.in_flight -= 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_the_dispatcher_dispatches_concurrently_up_to_max_concurrent_dispatches():
    upstream = HoldingUpstream()
    dispatcher = Dispatcher(upstream.url, max_concurrent_dispatches=2)
    try:
        for n in range(3):  # the emulator is answered at once each time, while the first ones are held
            assert as_the_emulator(dispatcher, f"c{n}").status_code == 200
        wait_until(lambda: upstream.in_flight == 2)
        assert stays(lambda: upstream.in_flight == 2, 0.3)  # the third waits for a slot
        upstream.release.set()
        dispatcher.wait_idle(10)
        assert upstream.peak == 2 and sorted(dispatcher.delivered) == [f"{QUEUE}/tasks/c{n}" for n in range(3)]
    finally:
        dispatcher.close()
        upstream.close()


def test_the_ingress_verifies_signed_tokens_and_hands_them_on_stripped(key):
    upstream = Receiver(statuses=[200] * 10)
    ingress = Ingress(int(origin(upstream.url).rsplit(":", 1)[1]), TASKS_ACCOUNT, verify_key=key.public_pem)
    try:

        def call(authorization: str | None) -> int:
            headers = {"Authorization": authorization} if authorization else {}
            return requests.post(
                f"{ingress.url}/tasks/run", json={"job_id": "j"}, headers=headers, timeout=10
            ).status_code

        token = key.token("https://svc.example", TASKS_ACCOUNT)
        assert call(f"Bearer {token}") == 200
        handed = lower(upstream.received[-1]["headers"])["authorization"].removeprefix("Bearer ")
        assert handed == token.rsplit(".", 1)[0] + "." + STRIPPED  # same claims, signature removed
        assert ingress.verified[-1]["aud"] == "https://svc.example"

        now = int(time.time())
        refused = [
            SigningKey("another").token("https://svc.example", TASKS_ACCOUNT),  # not the trusted key
            key.token("https://svc.example", TASKS_ACCOUNT, iat=now - 7200, exp=now - 3600),  # expired
            stripped_token("https://svc.example", TASKS_ACCOUNT),  # no signature to check
            "not-a-jwt",
        ]
        for bad in refused:
            assert call(f"Bearer {bad}") == 401, bad
        assert ingress.rejected == len(refused) and len(upstream.received) == 1  # none reached the service

        assert call(None) == 200  # no token at all: the ingress's own stripped token, as before
        handed = lower(upstream.received[-1]["headers"])["authorization"].removeprefix("Bearer ")
        assert handed.endswith("." + STRIPPED) and jwt.decode(handed, verify=False)["email"] == TASKS_ACCOUNT
    finally:
        ingress.close()
        upstream.close()


# --- the service behind them ----------------------------------------------------------------------


@dataclass
class Stack:
    service: ServiceProcess
    ingress: Ingress
    dispatcher: Dispatcher
    settings: Settings

    def run_task(self, job_id: str, priority: str = "normal") -> str:
        """The full-name tail of a job's task in its job queue (the webhooks queue has one too)."""
        return f"{self.settings.tasks_queue_prefix}-{priority}/tasks/{job_id}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tasks_emulator, fake_gcs, key) -> Iterator[Stack]:
    """The service behind an ingress that verifies the dispatcher's tokens; SERVICE_URL (the
    tasks' URL and audience) is the dispatcher, whose relay of the Cloud Tasks API the service uses."""
    port = free_port()
    ingress = Ingress(port, TASKS_ACCOUNT, verify_key=key.public_pem)
    dispatcher = Dispatcher(
        ingress.url,
        key=key,
        emulator_host=tasks_emulator.host,
        min_backoff_s=MIN_BACKOFF_S,
        max_backoff_s=MAX_BACKOFF_S,
    )
    settings = tasks_emulator.settings(dispatcher.url)
    tasks_emulator.create_queues(settings)
    assert dispatcher.tasks_host
    env = cloud_env(
        settings,
        tasks_emulator,
        fake_gcs,
        fake_gcs.new_bucket("dispatch"),
        SERVICE_URL=dispatcher.url,
        CLOUD_TASKS_EMULATOR_HOST=dispatcher.tasks_host,
        GCS_OBJECT_WRITE_INTERVAL_S="0",
        JOB_LEASE_TTL_S="4",  # a killed run's lease lapses within a test
    )
    service = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("dispatch"), env=env, port=port)
    service.start().wait_ready()
    yield Stack(service, ingress, dispatcher, settings)
    service.stop()
    dispatcher.close()
    ingress.close()


@pytest.fixture
def cloud(stack: Stack) -> Iterator[Stack]:
    """The module's stack with its knobs as built; afterwards every task has been settled."""
    yield stack
    stack.dispatcher.account, stack.dispatcher.max_attempts, stack.ingress.concurrency = None, 100, 1000
    stack.dispatcher.wait_idle(60)


def test_a_task_name_used_twice_runs_one_job_and_sends_one_webhook(cloud, receiver):
    from google.cloud import tasks_v2

    from handler.taskqueue.cloudtasks import CloudTasksQueue, _client

    svc, dispatcher, settings = cloud.service, cloud.dispatcher, cloud.settings
    deduped = dispatcher.deduped
    # A client's task against /predict, created twice: Cloud Tasks refuses the second, the emulator does not.
    client = _client(dispatcher.tasks_host)
    parent = client.queue_path(settings.gcp_project, settings.tasks_location, f"{settings.tasks_queue_prefix}-normal")
    task = tasks_v2.Task(
        name=f"{parent}/tasks/made-twice",
        http_request=tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=f"{dispatcher.url}/predict",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"workflow": quick(8400), "webhook": {"url": receiver.url}}).encode(),
            oidc_token=tasks_v2.OidcToken(service_account_email=TASKS_ACCOUNT, audience=dispatcher.url),
        ),
    )
    client.create_task(parent=parent, task=task)
    client.create_task(parent=parent, task=task)
    client.transport.close()
    wait_until(lambda: dispatcher.deduped == deduped + 1 and receiver.received, message="no dedupe or no webhook")
    dispatcher.wait_idle()  # its answer is recorded once the run is over, maybe after the webhook
    (attempt,) = dispatcher.attempts_for("made-twice")
    assert attempt.status == 200 and attempt.audience == dispatcher.url and attempt.email == TASKS_ACCOUNT
    payload = receiver.received[0]["payload"]
    assert payload["type"] == "job.succeeded" and payload["data"]["source"] == "cloudtasks"
    made = status(svc, payload["data"]["job_id"])
    assert made["state"] == "succeeded" and made["attempts"] == 1

    # The service's own task for a job, created again (a retried enqueue): dispatched once.
    job_id = submit(svc, quick(8401), webhook={"url": receiver.url})
    final = wait_for(svc, job_id, lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at"))
    queue = CloudTasksQueue(
        **sections(settings, "jobs", "cloud")
    )  # straight to the emulator: the dispatcher dedupes at dispatch
    try:
        queue.enqueue(job_id, "normal")
    finally:
        queue.close()
    wait_until(lambda: dispatcher.deduped == deduped + 2)
    dispatcher.wait_idle()
    assert [a.status for a in dispatcher.attempts_for(cloud.run_task(job_id))] == [200]
    assert final["state"] == "succeeded" and final["attempts"] == 1
    assert stays(lambda: len(receiver.received) == 2, 0.5)
    assert [r["payload"]["data"]["job_id"] for r in receiver.received][1] == job_id
    assert status(svc, job_id)["attempts"] == 1


def test_at_full_concurrency_429s_are_retried_with_backoff_and_high_runs_before_low(cloud, receiver):
    svc, ingress, dispatcher = cloud.service, cloud.ingress, cloud.dispatcher
    ingress.concurrency = 1  # one request at a time: Cloud Run answers 429 beyond it
    gate = svc.gate()
    holder = submit(svc, gate.workflow(), priority="high", webhook={"url": receiver.url})
    gate.wait_entered()  # its delivery holds the only slot
    priorities = {"l1": "low", "l2": "low", "h1": "high", "h2": "high"}
    ids = {
        name: submit(svc, quick(8500 + i), priority=priority, webhook={"url": receiver.url})
        for i, (name, priority) in enumerate(priorities.items())
    }
    wait_until(
        lambda: all(any(a.status == 429 for a in dispatcher.attempts_for(job_id)) for job_id in ids.values()),
        message="not every task met the full instance",
    )
    gate.release()
    done = lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at")  # noqa: E731
    finals = {name: wait_for(svc, job_id, done) for name, job_id in ids.items()}
    assert wait_for(svc, holder, done)["state"] == "succeeded"
    for final in finals.values():
        assert final["state"] == "succeeded" and final["attempts"] == 1, final
        (file,) = final["result"]["files"]
        assert file["uri"].startswith("gs://") and file["content_type"] == "image/png"
    assert sorted(finals, key=lambda name: finals[name]["started_at"]) == ["h1", "h2", "l1", "l2"]
    dispatcher.wait_idle(30)
    for name, job_id in ids.items():
        attempts = dispatcher.attempts_for(cloud.run_task(job_id, priorities[name]))
        assert attempts[-1].status == 200 and {a.status for a in attempts[:-1]} == {429}, attempts
        assert_backed_off(attempts)
    assert ingress.refused >= 4
    # Every webhook arrived, once each (their tasks met the full instance too).
    assert stays(lambda: len(receiver.received) == 5, 0.3)
    assert sorted(r["payload"]["data"]["job_id"] for r in receiver.received) == sorted([holder, *ids.values()])


def test_signed_tokens_are_verified_by_the_ingress_and_accepted_by_the_service(cloud):
    svc, ingress, dispatcher = cloud.service, cloud.ingress, cloud.dispatcher
    verified = len(ingress.verified)
    # Submitted through the ingress, as its status is read below: a job is its caller's (issue 20).
    accepted = requests.post(f"{dispatcher.url}/predict", json={"workflow": quick(8600), "async": True}, timeout=60)
    accepted = accepted.json()
    job_id, status_url = accepted["job_id"], accepted["status_url"]
    final = wait_for(svc, job_id)
    assert final["state"] == "succeeded" and final["attempts"] == 1
    dispatcher.wait_idle()  # the job is final in the store before its delivery is answered
    (attempt,) = dispatcher.attempts_for(cloud.run_task(job_id))
    # What the service put in the task's oidc_token (read on its way through the relay).
    assert attempt.status == 200 and attempt.email == TASKS_ACCOUNT and attempt.audience == dispatcher.url
    claims = ingress.verified[verified:]
    assert claims and all(c["aud"] == dispatcher.url and c["email"] == TASKS_ACCOUNT for c in claims)
    assert ingress.rejected == 0
    # The dispatcher's URL is the service's public one (SERVICE_URL): what is not a task passes through.
    assert status_url == f"{dispatcher.url}/status/{job_id}"
    seen = requests.get(status_url, timeout=30)
    assert seen.status_code == 200 and seen.json()["state"] == "succeeded"


def test_a_token_for_another_account_is_refused_retried_to_max_attempts_and_the_job_never_runs(cloud, receiver):
    svc, ingress, dispatcher = cloud.service, cloud.ingress, cloud.dispatcher
    dispatcher.account, dispatcher.max_attempts = INTRUDER, 4
    job_id = submit(svc, quick(8700), webhook={"url": receiver.url})
    name = cloud.run_task(job_id)
    wait_until(lambda: any(n.endswith(name) for n in dispatcher.gave_up), message="the dispatcher never gave up")
    attempts = dispatcher.attempts_for(name)
    # The signature is good (the ingress lets it in); the identity is not (the service says 403).
    assert [(a.status, a.email) for a in attempts] == [(403, INTRUDER)] * 4
    assert_backed_off(attempts)
    assert ingress.rejected == 0
    view = status(svc, job_id)
    assert view["state"] == "queued" and view["attempts"] == 0
    dispatcher.account = None  # the queue's identity fixed: cancel it, its webhook says it never ran
    assert svc.post(f"/cancel/{job_id}").json()["cancel"] == "dequeued"
    wait_until(lambda: receiver.received, message="no webhook for the cancelled job")
    payload = receiver.received[0]["payload"]
    assert payload["type"] == "job.cancelled" and payload["data"]["job_id"] == job_id
    assert status(svc, job_id)["attempts"] == 0


def test_a_shutdown_hand_back_is_answered_503_retried_and_not_counted(cloud, receiver):
    """Near the end: it restarts the module's service."""
    svc, ingress, dispatcher = cloud.service, cloud.ingress, cloud.dispatcher
    answered = len(ingress.forwarded)
    gate = svc.gate()
    job_id = submit(svc, gate.workflow(), webhook={"url": receiver.url})
    gate.wait_entered()
    svc.stop()  # SIGTERM during the run: the job goes back in line, its delivery gets 503
    svc.start().wait_ready()
    gate.release()  # in the new ComfyUI: open from now on
    final = wait_for(svc, job_id, lambda s: s["state"] in FINAL and s.get("webhook", {}).get("delivered_at"))
    assert final["state"] == "succeeded" and final["attempts"] == 1, final  # the hand-back was no attempt
    dispatcher.wait_idle()
    attempts = dispatcher.attempts_for(cloud.run_task(job_id))
    assert attempts[0].status == 503 and attempts[-1].status == 200, attempts
    assert "POST /tasks/run 503" in ingress.forwarded[answered:]  # answered by the service, not the ingress
    assert all(a.execution_count == 0 for a in attempts)  # 503s and unanswered tries are no executions
    assert_backed_off(attempts)


def test_a_run_killed_hard_is_run_again_once_its_lease_lapses(cloud):
    """Last: it kills the module's service. Cloud Tasks redelivers the task of a run that died
    (SIGKILL, OOM) within seconds, while the dead run's lease still holds: that delivery must not
    end the task unless the job runs or is final (409 until the lease lapses would do)."""
    svc, dispatcher = cloud.service, cloud.dispatcher
    gate = svc.gate()
    job_id = submit(svc, gate.workflow())
    gate.wait_entered()
    assert svc.process is not None
    svc.process.kill()  # no hand-back: the lease is left to lapse
    svc.process.wait(30)
    svc.start().wait_ready()
    gate.release(wait_s=30)  # in the new ComfyUI: open from now on
    name = cloud.run_task(job_id)
    wait_until(lambda: any(n.endswith(name) for n in dispatcher.delivered + dispatcher.gave_up), 60)
    view = status(svc, job_id)
    assert view["state"] == "succeeded" and view["attempts"] == 2, view  # the killed run counts
