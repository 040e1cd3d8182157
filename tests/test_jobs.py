"""The job state machine and its lease, on real stores (a folder and fake-gcs-server), with a
scripted pipeline so races and failures happen exactly when the test says."""

from __future__ import annotations

import threading
import time

import pytest

from handler import errors, jobs
from handler.config import Settings
from handler.jobs import Job, JobService
from handler.outputs import OutputFile
from handler.pipeline import PredictResult
from handler.storage.gcs import GCSStore
from handler.storage.local import LocalStore

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}


class ScriptedPipeline:
    """Does what `script` says, one step per run: ok | unavailable | fail | block."""

    def __init__(self, *script: str):
        self.script = list(script)
        self.runs = 0
        self.started = threading.Event()

    def preflight(self, workflow):
        pass  # the graph checks have tests of their own (test_graph.py)

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

    def close(self):
        pass


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    fake = request.getfixturevalue("fake_gcs")
    return GCSStore(fake.new_bucket("jobs"), emulator_host=fake.url)


def service(store, pipeline, **settings) -> JobService:
    values = dict(job_max_attempts=3, url_allowlist=("127.0.0.1",))
    values.update(settings)
    return JobService(Settings(**values), store, RecordingQueue(), pipeline, Comfy())


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
    assert first.kind == "final" and first.http_status == 200 and first.job.state == "succeeded"
    again = svc.run(job.job_id)
    assert again.kind == "final" and pipeline.runs == 1
    view = svc.status(job.job_id, inline=True)
    (file,) = view["result"]["files"]
    assert file["base64"] and store.get_bytes(f"outputs/{job.job_id}/out_00001_.png").startswith(b"\x89PNG")


def test_two_instances_never_run_one_job_at_once(store):
    blocking = ScriptedPipeline("block")
    a = service(store, blocking)
    b = service(store, ScriptedPipeline())
    job = a.submit({"workflow": WORKFLOW})
    runner = threading.Thread(target=lambda: a.run(job.job_id))
    runner.start()
    assert blocking.started.wait(5)
    duplicate = b.run(job.job_id)  # another instance gets the same task meanwhile
    assert duplicate.kind == "busy" and duplicate.http_status == 409
    assert b.pipeline.runs == 0
    # A cancel recorded on b reaches a's run at its next lease renewal.
    answer = b.cancel(job.job_id)
    assert answer["cancel"] == "requested"
    a._renew(job.job_id, a._active[job.job_id])
    runner.join(5)
    assert a.get(job.job_id).state == "cancelled"


def test_an_expired_lease_is_taken_over(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})

    def crashed_mid_run(j: Job) -> None:  # what an instance that died mid-run leaves behind
        j.state, j.attempts = "running", 1
        j.lease = {"owner": "dead-instance", "token": "t", "expires_at": time.time() - 1}

    svc._update(job.job_id, crashed_mid_run)
    outcome = svc.run(job.job_id)
    assert outcome.kind == "final" and outcome.job.state == "succeeded" and outcome.job.attempts == 2


def test_a_live_foreign_lease_is_respected_unless_taking_over(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})
    svc._update(job.job_id, lambda j: (setattr(j, "state", "running"),
                                       setattr(j, "lease", {"owner": "x", "token": "t", "expires_at": time.time() + 60})))
    assert svc.run(job.job_id).kind == "busy"
    assert svc.run(job.job_id, takeover=True).job.state == "succeeded"  # the local queue's orphans


def test_transient_failures_go_back_to_queued_then_give_up(store):
    svc = service(store, ScriptedPipeline("unavailable", "unavailable", "unavailable"))
    job = svc.submit({"workflow": WORKFLOW})
    first = svc.run(job.job_id)
    assert first.kind == "retry" and first.http_status == 503
    view = svc.status(job.job_id)
    assert view["state"] == "queued" and view["last_error"]["code"] == "comfyui_unavailable"
    assert svc.run(job.job_id).kind == "retry"
    last = svc.run(job.job_id)
    assert last.kind == "final" and last.job.state == "failed" and last.job.error["code"] == "gave_up"
    assert svc.pipeline.runs == 3


def test_a_transient_failure_then_success(store):
    svc = service(store, ScriptedPipeline("unavailable", "ok"))
    job = svc.submit({"workflow": WORKFLOW})
    assert svc.run(job.job_id).kind == "retry"
    done = svc.run(job.job_id)
    assert done.job.state == "succeeded" and done.job.attempts == 2


def test_a_permanent_failure_is_final_with_the_error(store):
    svc = service(store, ScriptedPipeline("fail"))
    job = svc.submit({"workflow": WORKFLOW})
    outcome = svc.run(job.job_id)
    assert outcome.kind == "final" and outcome.http_status == 200
    assert outcome.job.error == {"code": "execution_error", "message": "node 2 raised", "node_id": "2"}


def test_cancel_of_a_queued_job_means_it_never_runs(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})
    assert svc.cancel(job.job_id)["cancel"] == "dequeued"
    assert svc.run(job.job_id).job.state == "cancelled" and svc.pipeline.runs == 0
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
    assert result["outcome"].kind == "retry"
    assert svc.get(job.job_id).state == "queued"


def test_client_made_tasks_become_one_job_each(store):
    svc = service(store, ScriptedPipeline())
    first = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t1", base_url=None)
    again = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t1", base_url=None)
    other = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t2", base_url=None)
    assert first == again != other and first.startswith("ct-")
    assert svc.queue.enqueued == []  # Cloud Tasks is already delivering them
    bad = svc.adopt_task({"workflow": {"1": {}}}, queue_name="q", task_name="t3", base_url=None)
    assert svc.get(bad).state == "failed"  # recorded, so the task is not retried forever


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

    from handler.jobs_api import Forbidden, TaskTokenVerifier, Unauthorized

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
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
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    signer = crypt.RSASigner.from_string(pem, key_id="k1")

    def token(**claims) -> str:
        base = {"iss": "https://accounts.google.com", "aud": "https://svc.run.app",
                "email": "tasks@p.iam.gserviceaccount.com", "email_verified": True,
                "iat": int(time.time()), "exp": int(time.time()) + 300}
        base.update(claims)
        return "Bearer " + jwt.encode(signer, base).decode()

    verifier = TaskTokenVerifier("https://svc.run.app", "tasks@p.iam.gserviceaccount.com",
                                 certs_url=f"http://127.0.0.1:{server.server_address[1]}/certs")
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
