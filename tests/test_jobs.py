"""The job state machine and its lease, on real stores (a folder and fake-gcs-server), with a
scripted pipeline so races and failures happen exactly when the test says."""

from __future__ import annotations

import threading
import time

import pytest

from handler import errors
from handler.comfyui.outputs import OutputFile
from handler.config import Settings
from handler.jobs import Job, Jobs, JobState, Outcome, Runs
from handler.jobs.model import Lease
from handler.pipeline import PredictResult
from handler.runtime import Runtime
from handler.storage.gcs import GCSStore
from handler.storage.local import LocalStore

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
}


class ScriptedPipeline:
    """Does what `script` says, one step per run: ok | unavailable | fail | block."""

    def __init__(self, *script: str):
        self.script = list(script)
        self.runs = 0
        self.started = threading.Event()

    def preflight(self, workflow):
        pass  # the graph checks have tests of their own (tests/comfyui/test_graph.py)

    def run(self, request, cancel=None):
        self.runs += 1
        step = self.script.pop(0) if self.script else "ok"
        self.started.set()
        if step == "unavailable":
            raise errors.ComfyUnavailable("ComfyUI is restarting")
        if step == "fail":
            raise errors.ExecutionFailed("node 2 raised", node_id="2")
        if step == "block":
            if not cancel.wait(10):
                raise AssertionError("never cancelled")
            raise errors.Cancelled("the job was cancelled")
        png = b"\x89PNG" + request.request_id.encode()
        files = [OutputFile("2", "out_00001_.png", "", "output", "images", "image/png", png)]
        return PredictResult("prompt-1", files, {"2": {"images": [{"filename": "out_00001_.png"}]}}, {"total_ms": 1.0})


class Comfy:
    ready = True
    object_info: dict = {}


class RecordingQueue:
    def __init__(self):
        self.enqueued: list[tuple[str, str]] = []

    def enqueue(self, job_id, priority="normal"):
        self.enqueued.append((job_id, priority))

    def cancel(self, job_id, priority):
        return False

    def close(self):
        pass


class Preflighted:
    """The scripted pipeline with the graph check the service asks of it."""

    def __init__(self, pipeline):
        self.inner = pipeline

    def run(self, request, cancel=None, **options):
        return self.inner.run(request, cancel)

    def preflight(self, workflow):
        pass  # the graph checks have tests of their own (tests/comfyui/test_graph.py)


class Harness:
    """One process's jobs, built as the app builds them, on a real store."""

    def __init__(self, store, pipeline, settings: Settings, queue=None):
        self.pipeline = pipeline
        self.queue = queue or RecordingQueue()
        self.outbox_queue = RecordingQueue()
        self.runtime = Runtime(settings)
        checked = Preflighted(pipeline)
        self.jobs = Jobs.build(
            settings, store, self.queue, self.outbox_queue, checked, Runs(checked, Comfy()), None, self.runtime
        )
        self.service = self.jobs.service
        self.runner = self.jobs.runner
        self.submit = self.service.submit
        self.status = self.service.status
        self.cancel = self.service.cancel
        self.adopt_task = self.service.adopt_task
        self.run = self.runner.run
        self.get = self.service.repo.get

    def stop(self, timeout_s: float = 5) -> None:
        self.runtime.stop(timeout_s)


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    fake = request.getfixturevalue("fake_gcs")
    return GCSStore(fake.new_bucket("jobs"), emulator_host=fake.url)


def service(store, pipeline, queue=None, **settings) -> Harness:
    # Writes to one job record are spaced 1 s apart on Cloud Storage; one test checks that, the
    # others need not wait.
    values = dict(job_max_attempts=3, url_allowlist=("127.0.0.1",), gcs_object_write_interval_s=0.0)
    values.update(settings)
    return Harness(store, pipeline, Settings(**values), queue)


def test_submit_stores_the_request_then_queues_the_job(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW, "async": True, "priority": "low", "inline": True})
    assert svc.queue.enqueued == [(job.job_id, "low")]
    assert store.get_json(f"inputs/{job.job_id}/request.json").data == {"workflow": WORKFLOW}
    view = svc.status(job.job_id)
    assert view["state"] == "queued" and view["priority"] == "low" and view["attempts"] == 0


def test_a_run_succeeds_once_and_a_second_delivery_does_nothing(store):
    pipeline = ScriptedPipeline()
    svc = service(store, pipeline)
    job = svc.submit({"workflow": WORKFLOW})
    first = svc.run(job.job_id)
    assert first.kind is Outcome.FINAL and first.http_status == 200 and first.job.state is JobState.SUCCEEDED
    again = svc.run(job.job_id)
    assert again.kind is Outcome.FINAL and pipeline.runs == 1
    view = svc.status(job.job_id, inline=True)
    (file,) = view["result"]["files"]
    assert file["base64"] and store.get_bytes(
        file["uri"].split("/", 3)[3] if file["uri"].startswith("gs://") else file["uri"].removeprefix("local://")
    ).startswith(b"\x89PNG")


def test_two_instances_never_run_one_job_at_once(store):
    blocking = ScriptedPipeline("block")
    a = service(store, blocking)
    b = service(store, ScriptedPipeline())
    job = a.submit({"workflow": WORKFLOW})
    runner = threading.Thread(target=lambda: a.run(job.job_id))
    runner.start()
    assert blocking.started.wait(5)
    duplicate = b.run(job.job_id)  # another instance gets the same task meanwhile
    assert duplicate.kind is Outcome.BUSY and duplicate.http_status == 409
    assert b.pipeline.runs == 0
    # A cancel recorded on b reaches a's run at its next lease renewal.
    answer = b.cancel(job.job_id)
    assert answer["cancel"] == "requested"
    a.runner.leases.renew(job.job_id, a.runner.leases.get(job.job_id))
    runner.join(5)
    assert a.get(job.job_id).state is JobState.CANCELLED


def test_an_expired_lease_is_taken_over(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})

    def crashed_mid_run(j: Job) -> None:  # what an instance that died mid-run leaves behind
        j.state, j.attempts = JobState.RUNNING, 1
        j.lease = Lease("dead-instance", "t", time.time() - 1)

    svc.service.repo.update(job.job_id, crashed_mid_run)
    outcome = svc.run(job.job_id)
    assert outcome.kind is Outcome.FINAL and outcome.job.state is JobState.SUCCEEDED and outcome.job.attempts == 2


def test_a_live_foreign_lease_is_respected_unless_taking_over(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})
    svc.service.repo.update(
        job.job_id,
        lambda j: (setattr(j, "state", JobState.RUNNING), setattr(j, "lease", Lease("x", "t", time.time() + 60))),
    )
    assert svc.run(job.job_id).kind is Outcome.BUSY
    assert svc.run(job.job_id, takeover=True).job.state is JobState.SUCCEEDED  # the local queue's orphans


def test_transient_failures_go_back_to_queued_then_give_up(store):
    svc = service(store, ScriptedPipeline("unavailable", "unavailable", "unavailable"))
    job = svc.submit({"workflow": WORKFLOW})
    first = svc.run(job.job_id)
    assert first.kind is Outcome.RETRY and first.http_status == 503
    view = svc.status(job.job_id)
    assert view["state"] == "queued" and view["last_error"]["code"] == "comfyui_unavailable"
    assert svc.run(job.job_id).kind is Outcome.RETRY
    last = svc.run(job.job_id)
    assert last.kind is Outcome.FINAL and last.job.state is JobState.FAILED and last.job.error["code"] == "gave_up"
    assert svc.pipeline.runs == 3


def test_a_transient_failure_then_success(store):
    svc = service(store, ScriptedPipeline("unavailable", "ok"))
    job = svc.submit({"workflow": WORKFLOW})
    assert svc.run(job.job_id).kind is Outcome.RETRY
    done = svc.run(job.job_id)
    assert done.job.state is JobState.SUCCEEDED and done.job.attempts == 2


def test_a_permanent_failure_is_final_with_the_error(store):
    svc = service(store, ScriptedPipeline("fail"))
    job = svc.submit({"workflow": WORKFLOW})
    outcome = svc.run(job.job_id)
    assert outcome.kind is Outcome.FINAL and outcome.http_status == 200
    assert outcome.job.error == {"code": "execution_error", "message": "node 2 raised", "node_id": "2"}


def test_cancel_of_a_queued_job_means_it_never_runs(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})
    assert svc.cancel(job.job_id)["cancel"] == "dequeued"
    assert svc.run(job.job_id).job.state is JobState.CANCELLED and svc.pipeline.runs == 0
    with pytest.raises(errors.Conflict):
        svc.cancel(job.job_id)


def test_shutdown_puts_a_running_job_back_in_line(store):
    blocking = ScriptedPipeline("block")
    svc = service(store, blocking)
    job = svc.submit({"workflow": WORKFLOW})
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("outcome", svc.run(job.job_id)))
    runner.start()
    assert blocking.started.wait(5)
    svc.stop(timeout_s=5)
    runner.join(5)
    assert result["outcome"].kind is Outcome.RETRY
    handed_back = svc.get(job.job_id)
    assert handed_back.state is JobState.QUEUED and handed_back.attempts == 0  # not the job's fault


def test_client_made_tasks_become_one_job_each(store):
    svc = service(store, ScriptedPipeline())
    first = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t1", base_url=None)
    again = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t1", base_url=None)
    other = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t2", base_url=None)
    assert first == again != other and first.startswith("ct-")
    assert svc.queue.enqueued == []  # Cloud Tasks is already delivering them
    bad = svc.adopt_task({"workflow": {"1": {}}}, queue_name="q", task_name="t3", base_url=None)
    assert svc.get(bad).state is JobState.FAILED  # recorded, so the task is not retried forever


# --- the OIDC token of Cloud Tasks -------------------------------------------------------------


def test_task_tokens_are_verified(tmp_path):
    pytest.importorskip("cryptography")
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    from google.auth import crypt, jwt

    from handler.errors import Forbidden, Unauthorized
    from handler.tasktoken import TaskTokenVerifier

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    certs = json.dumps({"k1": cert.public_bytes(serialization.Encoding.PEM).decode()}).encode()

    class Certs(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(certs)))
            self.end_headers()
            self.wfile.write(certs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    signer = crypt.RSASigner.from_string(pem, key_id="k1")

    def token(**claims) -> str:
        base = {
            "iss": "https://accounts.google.com",
            "aud": "https://svc.run.app",
            "email": "tasks@p.iam.gserviceaccount.com",
            "email_verified": True,
            "iat": int(time.time()),
            "exp": int(time.time()) + 300,
        }
        base.update(claims)
        return "Bearer " + jwt.encode(signer, base).decode()

    verifier = TaskTokenVerifier(
        "https://svc.run.app",
        "tasks@p.iam.gserviceaccount.com",
        certs_url=f"http://127.0.0.1:{server.server_address[1]}/certs",
    )
    try:
        assert verifier.verify(token())["email"] == "tasks@p.iam.gserviceaccount.com"
        with pytest.raises(Unauthorized):
            verifier.verify(None)
        with pytest.raises(Unauthorized):
            verifier.verify(token(aud="https://other.run.app"))
        with pytest.raises(Unauthorized):
            verifier.verify(token(exp=int(time.time()) - 600, iat=int(time.time()) - 900))
        with pytest.raises(Unauthorized):
            verifier.verify(token(iss="https://evil.example"))
        with pytest.raises(Forbidden):
            verifier.verify(token(email="someone@p.iam.gserviceaccount.com"))
        with pytest.raises(Unauthorized):
            verifier.verify(token()[:-4] + "AAAA")  # signature tampered
        with pytest.raises(Forbidden):
            TaskTokenVerifier("https://svc.run.app", None).verify(token())
    finally:
        server.shutdown()
        server.server_close()


# --- leases, committed writes, the line, the outbox ------------------------------------------


class LosesAnswers:
    """A store whose next `n` conditional writes commit but then fail, as a timeout would."""

    def __init__(self, store, n: int):
        self.store, self.n = store, n

    def __getattr__(self, name):
        return getattr(self.store, name)

    def cas_json(self, key, obj, *, generation):
        new = self.store.cas_json(key, obj, generation=generation)
        if self.n > 0 and key.startswith("jobs/"):
            self.n -= 1
            raise ConnectionError("the answer was lost")
        return new


def test_a_committed_write_whose_answer_was_lost_is_taken_as_ours(store):
    svc = service(LosesAnswers(store, 0), ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})
    svc.service.repo.store.n = 3  # the claim, the final write: each commits and "fails"
    outcome = svc.run(job.job_id)
    assert outcome.kind is Outcome.FINAL and outcome.job.state is JobState.SUCCEEDED
    assert svc.pipeline.runs == 1 and svc.get(job.job_id).attempts == 1


def test_a_run_whose_lease_was_taken_over_stops_and_publishes_nothing(store):
    blocking = ScriptedPipeline("block")
    a = service(store, blocking)
    job = a.submit({"workflow": WORKFLOW})
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("outcome", a.run(job.job_id)))
    runner.start()
    assert blocking.started.wait(5)
    token = a.runner.leases.get(job.job_id).token
    # Another instance found the lease expired and took the job over.
    a.service.repo.update(job.job_id, lambda j: setattr(j, "lease", Lease("other", "their-token", time.time() + 60)))
    a.runner.leases.renew(job.job_id, a.runner.leases.get(job.job_id))
    runner.join(5)
    assert result["outcome"].kind is Outcome.BUSY
    assert store.list(f"outputs/{job.job_id}/{token}/") == []
    assert a.get(job.job_id).lease.token == "their-token"  # the owner's record is untouched


def test_a_run_stops_itself_when_its_lease_lapsed_without_renewal(store):
    blocking = ScriptedPipeline("block")
    a = service(store, blocking)
    job = a.submit({"workflow": WORKFLOW})
    runner = threading.Thread(target=lambda: a.run(job.job_id))
    runner.start()
    assert blocking.started.wait(5)
    active = a.runner.leases.get(job.job_id)
    active.lease_expires_at = time.time() - 1  # renewals kept failing until it ran out
    leases = a.runner.leases
    repo = leases.repo

    class StoreDown:
        def __getattr__(self, name):
            return getattr(repo, name)

        def update(self, job_id, change):
            raise ConnectionError("the store does not answer")

    leases.repo = StoreDown()
    leases.renew(job.job_id, active)
    leases.repo = repo
    runner.join(5)
    assert active.why == "lease_lost" and not runner.is_alive()


def test_a_redelivery_of_a_finished_job_queues_its_pending_webhook_again(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW, "webhook": {"url": "http://127.0.0.1:9/hook"}})
    assert svc.run(job.job_id).job.webhook["state"] == "pending"
    assert svc.outbox_queue.enqueued == [(job.job_id, "normal")]
    # The process died before the event reached the outbox: the next delivery puts it there.
    svc.outbox_queue.enqueued.clear()
    again = svc.run(job.job_id)
    assert again.kind is Outcome.FINAL and svc.outbox_queue.enqueued == [(job.job_id, "normal")]
    assert svc.pipeline.runs == 1


def test_a_cloud_tasks_delivery_runs_the_first_job_in_line_whatever_it_named(store):
    svc = service(store, ScriptedPipeline())
    low = svc.submit({"workflow": WORKFLOW, "priority": "low"})
    normal = svc.submit({"workflow": WORKFLOW})
    high = svc.submit({"workflow": WORKFLOW, "priority": "high"})
    order = [svc.runner.run_next(low.job_id).job.job_id for _ in range(3)]
    assert order == [high.job_id, normal.job_id, low.job_id]
    assert svc.runner.run_next(low.job_id).kind is Outcome.FINAL  # its own job, long done
    assert svc.service.repo.line() == []


def test_client_task_job_ids_are_secret_and_a_reused_name_is_a_new_task(store):
    svc = service(store, ScriptedPipeline())
    body = {"workflow": WORKFLOW}
    first = svc.adopt_task(body, queue_name="q", task_name="t1", base_url=None)
    assert svc.adopt_task(body, queue_name="q", task_name="t1", base_url=None) == first
    other_body = {"workflow": {**WORKFLOW, "3": {"class_type": "EmptyImage", "inputs": {}}}}
    assert svc.adopt_task(other_body, queue_name="q", task_name="t1", base_url=None) != first
    other_secret = service(store, ScriptedPipeline(), job_id_secret="another")
    assert other_secret.service.task_job_id(body, "q", "t1") != first  # not derivable without the secret
    svc.run(first)
    # Over an hour later Cloud Tasks lets the name be used again: that is a new task.
    svc.service.repo.update(first, lambda j: setattr(j, "finished_at", time.time() - 2 * 3600))
    reused = svc.adopt_task(body, queue_name="q", task_name="t1", base_url=None)
    assert reused != first and svc.get(reused).state is JobState.QUEUED


def test_an_async_timeout_beyond_the_dispatch_deadline_is_refused(store):
    svc = service(store, ScriptedPipeline(), queue_backend="cloudtasks")
    with pytest.raises(errors.BadRequest, match="at most"):
        svc.submit({"workflow": WORKFLOW, "timeout": 1790})
    assert svc.submit({"workflow": WORKFLOW, "timeout": 600}).timeout_s == 600


def test_a_final_jobs_request_goes_at_once_and_its_outputs_after_the_retention(store):
    from handler.jobs import retention

    svc = service(store, ScriptedPipeline(), output_retention_days=7)
    job = svc.submit({"workflow": WORKFLOW})
    assert store.list(f"inputs/{job.job_id}/")
    svc.run(job.job_id)
    assert store.list(f"inputs/{job.job_id}/") == []  # the request and its images: gone when final
    assert store.list(f"outputs/{job.job_id}/")
    repo = svc.service.repo
    assert retention.sweep(repo, svc.service.settings) == 0  # young outputs stay
    repo.update(job.job_id, lambda j: setattr(j, "finished_at", time.time() - 8 * 24 * 3600))
    retention.sweep(repo, svc.service.settings)
    assert store.list(f"outputs/{job.job_id}/") == [] and repo.find(job.job_id) is not None
    repo.update(job.job_id, lambda j: setattr(j, "finished_at", time.time() - 31 * 24 * 3600))
    retention.sweep(repo, svc.service.settings)
    assert repo.find(job.job_id) is None


def test_one_job_record_is_written_at_most_once_a_second_on_cloud_storage(fake_gcs):
    """Cloud Storage takes about one write a second per object: the claim, the final write and
    the webhook record of a fast job are spaced that far apart by this process."""
    store = GCSStore(fake_gcs.new_bucket("spacing"), emulator_host=fake_gcs.url)
    svc = service(store, ScriptedPipeline(), gcs_object_write_interval_s=1.0)
    writes: list[float] = []
    cas = store.cas_json

    def recorded(key, obj, *, generation):
        if key.startswith("jobs/"):
            writes.append(time.monotonic())
        return cas(key, obj, generation=generation)

    store.cas_json = recorded
    job = svc.submit({"workflow": WORKFLOW})
    svc.run(job.job_id)
    assert len(writes) >= 3  # created, claimed, final
    assert all(b - a >= 0.95 for a, b in zip(writes, writes[1:])), writes


def test_the_outbox_retries_a_failing_receiver_with_one_webhook_id_then_gives_up(store):
    """One POST per delivery; the queue asks again while the receiver fails in a way worth
    retrying, with the same webhook-id, and stops at WEBHOOK_MAX_ATTEMPTS."""
    from handler.jobs import Sent
    from tests.fixtures.receiver import SECRET, Receiver

    receiver = Receiver()
    try:
        svc = service(store, ScriptedPipeline(), webhook_max_attempts=3, webhook_secret=SECRET)
        ok = svc.submit({"workflow": WORKFLOW, "webhook": {"url": receiver.url}})
        failing = svc.submit({"workflow": WORKFLOW, "webhook": {"url": receiver.url}})
        svc.run(ok.job_id)
        svc.run(failing.job_id)
        outbox = svc.jobs.outbox
        receiver.statuses = [503, 500]
        assert [outbox.deliver(ok.job_id) for _ in range(3)] == [Sent.RETRY, Sent.RETRY, Sent.DONE]
        assert outbox.deliver(ok.job_id) is Sent.DONE and len(receiver.received) == 3  # settled: not sent again
        assert svc.get(ok.job_id).webhook["state"] == "delivered"
        assert len({r["headers"]["webhook-id"] for r in receiver.received}) == 1
        receiver.statuses = [500] * 5
        assert [outbox.deliver(failing.job_id) for _ in range(3)] == [Sent.RETRY, Sent.RETRY, Sent.DONE]
        record = svc.get(failing.job_id).webhook
        assert record["state"] == "failed" and record["attempts"] == 3 and record["last_status"] == 500
    finally:
        receiver.close()


def test_the_first_webhook_try_is_inline_within_its_bound_and_what_it_cannot_settle_is_queued(store):
    """With inline tries (the local worker's spare threads), a run's thread makes the first POST
    itself; a try that fails, an announce not asked to try, and a try beyond the bound (every
    inline place held by a slow receiver) go to the outbox queue, which retries them."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from handler.jobs.outbox import Outbox

    held, entered = threading.Event(), threading.Event()
    statuses: list[int] = []
    posts: list[str] = []

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append(self.headers["webhook-id"])
            if self.path == "/slow":
                entered.set()
                held.wait(10)
            self.send_response(statuses.pop(0) if statuses else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        svc = service(store, ScriptedPipeline())
        jobs = {
            name: svc.submit({"workflow": WORKFLOW, "webhook": {"url": f"{base}/{path}"}})
            for name, path in (("fast", "hook"), ("failing", "hook"), ("slow", "slow"), ("beyond", "hook"))
        }
        for job in jobs.values():
            svc.run(job.job_id)  # the harness's outbox has no inline tries: these are only queued
        posts.clear()
        queue = RecordingQueue()
        shared = svc.jobs.outbox
        outbox = Outbox(shared.settings, shared.repo, shared.views, queue, inline_tries=1)
        final = {name: svc.get(job.job_id) for name, job in jobs.items()}

        outbox.announce(final["fast"], try_now=True)
        assert len(posts) == 1 and queue.enqueued == []
        assert svc.get(jobs["fast"].job_id).webhook["state"] == "delivered"

        statuses.append(503)
        outbox.announce(final["failing"], try_now=True)
        assert len(posts) == 2 and queue.enqueued == [(jobs["failing"].job_id, "normal")]
        assert svc.get(jobs["failing"].job_id).webhook["state"] == "pending"

        slow = threading.Thread(target=outbox.announce, args=(final["slow"],), kwargs={"try_now": True})
        slow.start()
        assert entered.wait(10)  # the one inline place is held by a receiver that does not answer
        outbox.announce(final["beyond"], try_now=True)
        assert queue.enqueued[-1] == (jobs["beyond"].job_id, "normal") and len(posts) == 3  # not tried here
        held.set()
        slow.join(10)
        assert svc.get(jobs["slow"].job_id).webhook["state"] == "delivered"
        assert (jobs["slow"].job_id, "normal") not in queue.enqueued
    finally:
        held.set()
        server.shutdown()
        server.server_close()


class CountsReads:
    """A store that counts the job records it is asked to read."""

    def __init__(self, store):
        self.store, self.reads = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def get_json(self, key):
        if key.startswith("jobs/"):
            self.reads += 1
        return self.store.get_json(key)


def test_changes_start_from_our_own_last_write_and_decide_again_on_a_read_when_it_is_stale(store):
    from handler.jobs.repo import JobRepo, Keep

    counted = CountsReads(store)
    ours, theirs = JobRepo(counted, keeps_line=False), JobRepo(store, keeps_line=False)  # two processes
    job = Job(job_id="j-known")
    ours.create(job, {"workflow": WORKFLOW})
    ours.update(job.job_id, lambda j: j.claim("us", "t1", time.time(), 60))
    ours.update(job.job_id, lambda j: setattr(j, "attempts", 5))
    assert counted.reads == 0  # each change started from the write before it: no read on the way

    # Another process finishes the job. Our next change starts from our stale view, where the
    # job still runs; its write is refused, and it is decided again on what the store holds.
    theirs.update(job.job_id, lambda j: j.finish(JobState.CANCELLED))
    seen: list[str] = []

    def unless_final(j: Job) -> None:
        seen.append(j.state.value)
        if j.final:
            raise Keep("final")
        j.attempts += 1

    with pytest.raises(Keep):
        ours.update(job.job_id, unless_final)
    assert seen == ["running", "cancelled"] and counted.reads == 1
    assert ours.get(job.job_id).state is JobState.CANCELLED and ours.get(job.job_id).attempts == 5

    # A change that declines on a stale view is not taken at its word either.
    other = Job(job_id="j-declined")
    ours.create(other, None)
    theirs.update(other.job_id, lambda j: j.claim("them", "t2", time.time(), 60))
    decided: list[str] = []

    def only_if_queued(j: Job) -> None:
        decided.append(j.state.value)
        if j.state is not JobState.QUEUED:
            raise Keep("busy")

    with pytest.raises(Keep):
        ours.update(other.job_id, only_if_queued)
    assert decided == ["queued", "running"]  # queued in our view, then running in the store's


def test_a_job_started_at_once_after_the_job_threads_stopped_is_still_run(store, tmp_path):
    """The race with a shutdown: a submit that passed the checks hands its started job over as the
    job threads stop. It is run on the submitting thread instead (while stopping, that run hands
    it back uncounted), never left claimed with no thread to run it."""
    from handler.taskqueue.local import LocalQueue

    queue = LocalQueue(tmp_path / "queue.sqlite")
    svc = service(store, ScriptedPipeline(), queue=queue)
    worker = svc.jobs.worker
    assert worker is not None
    worker._closed = True  # as the dispatcher leaves them when the service stops
    job = svc.submit({"workflow": WORKFLOW})
    done = svc.get(job.job_id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1
    assert queue.pending() == {"high": 0, "normal": 0, "low": 0} and queue.next(timeout=0) is None
    queue.close()


def test_a_failed_inline_webhook_try_is_queued_for_after_the_first_backoff(store, tmp_path):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from handler.jobs.outbox import Outbox
    from handler.taskqueue.local import LocalQueue

    class Down(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    queue = LocalQueue(tmp_path / "outbox.sqlite")
    try:
        svc = service(store, ScriptedPipeline(), webhook_backoff_s=0.3)
        job = svc.submit({"workflow": WORKFLOW, "webhook": {"url": f"http://127.0.0.1:{server.server_address[1]}/h"}})
        svc.run(job.job_id)
        shared = svc.jobs.outbox
        outbox = Outbox(shared.settings, shared.repo, shared.views, queue, inline_tries=1)
        outbox.announce(svc.get(job.job_id), try_now=True)
        assert svc.get(job.job_id).webhook["attempts"] == 1
        assert queue.pending()["normal"] == 1 and queue.next(timeout=0.1) is None  # not before ~0.3 s
        claim = queue.next(timeout=2)
        assert claim is not None and claim.job_id == job.job_id
    finally:
        queue.close()
        server.shutdown()
        server.server_close()
