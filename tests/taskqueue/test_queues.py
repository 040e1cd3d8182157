"""The local queue (priority, FIFO, restart) and Cloud Tasks against a real emulator."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from handler import taskqueue
from handler.config import Settings
from handler.taskqueue.cloudtasks import CloudTasksQueue
from handler.taskqueue.local import LocalQueue
from tests.fixtures.sections import sections
from tests.fixtures.waiting import stays


@pytest.fixture
def queue(tmp_path):
    q = LocalQueue(tmp_path / "queue.sqlite")
    yield q
    q.close()


def drain(q: LocalQueue) -> list[str]:
    order = []
    while (claim := q.next(timeout=0)) is not None:
        order.append(claim.job_id)
        q.done(claim.job_id)
    return order


def test_strict_priority_and_fifo_within_a_priority(queue):
    for job, prio in [("a", "low"), ("b", "normal"), ("c", "high"), ("d", "normal"), ("e", "high"), ("f", "low")]:
        queue.enqueue(job, prio)
    assert queue.pending() == {"high": 2, "normal": 2, "low": 2}
    assert drain(queue) == ["c", "e", "b", "d", "a", "f"]


def test_enqueue_is_idempotent_per_job(queue):
    queue.enqueue("a", "normal")
    queue.enqueue("a", "high")  # the first enqueue decides
    queue.enqueue("b", "normal")
    assert drain(queue) == ["a", "b"]


def test_unknown_priorities_are_refused(queue):
    with pytest.raises(ValueError, match="priority"):
        queue.enqueue("a", "urgent")


def test_restart_keeps_waiting_and_claimed_jobs(tmp_path):
    path = tmp_path / "queue.sqlite"
    q = LocalQueue(path)
    for job in ["n1", "n2", "n3"]:
        q.enqueue(job, "normal")
    q.enqueue("l1", "low")
    claim = q.next(timeout=0)
    assert (claim.job_id, claim.deliveries) == ("n1", 1)
    q.close()  # the process dies while n1 runs

    q = LocalQueue(path)
    claim = q.next(timeout=0)
    assert (claim.job_id, claim.deliveries) == ("n1", 2)  # back, and first in line
    q.done("n1")
    assert drain(q) == ["n2", "n3", "l1"]
    q.close()


def test_release_keeps_the_place_and_honours_the_delay(queue):
    queue.enqueue("a", "normal")
    queue.enqueue("b", "normal")
    assert queue.next(timeout=0).job_id == "a"
    queue.release("a", delay_s=0.3)
    assert queue.next(timeout=0).job_id == "b"  # a is not ready yet
    assert queue.next(timeout=0.05) is None
    started = time.monotonic()
    claim = queue.next(timeout=2)
    assert claim.job_id == "a" and claim.deliveries == 2
    assert time.monotonic() - started >= 0.15


def test_remove_only_unclaimed_jobs(queue):
    queue.enqueue("a", "normal")
    queue.enqueue("b", "normal")
    assert queue.next(timeout=0).job_id == "a"
    assert queue.remove("a") is False  # claimed: the runner decides
    assert queue.remove("b") is True
    assert queue.remove("zzz") is False
    assert queue.next(timeout=0) is None


def test_next_blocks_until_enqueue_and_close_wakes_it(queue):
    got = []
    t = threading.Thread(target=lambda: got.append(queue.next(timeout=5)))
    t.start()
    time.sleep(0.1)
    queue.enqueue("late", "low")
    t.join(2)
    assert got[0].job_id == "late"

    t = threading.Thread(target=lambda: got.append(queue.next()))
    t.start()
    time.sleep(0.1)
    queue.close()
    t.join(2)
    assert not t.is_alive() and got[1] is None


def test_from_settings_defaults_to_local(tmp_path):
    q = taskqueue.from_settings(**sections(Settings(), "jobs", "cloud"), state_dir=tmp_path)
    assert isinstance(q, LocalQueue) and isinstance(q, taskqueue.PullQueue)
    q.close()
    assert (tmp_path / "queue.sqlite").exists()


# --- Cloud Tasks ------------------------------------------------------------------------------


def test_task_shape_oidc_token_and_deadline_cap():
    settings = Settings(
        queue_backend="cloudtasks",
        gcp_project="p",
        tasks_location="europe-west1",
        tasks_queue_prefix="comfy",
        service_url="https://svc-abc.a.run.app",
        tasks_service_account="tasks@p.iam.gserviceaccount.com",
        tasks_dispatch_deadline_s=7200,
    )
    q = CloudTasksQueue(**sections(settings, "jobs", "cloud"), client=_OfflineClient())
    task = q.build_task("0f4c2a", "low")
    assert task.name == "projects/p/locations/europe-west1/queues/comfy-low/tasks/0f4c2a"
    assert task.http_request.url == "https://svc-abc.a.run.app/tasks/run"
    assert json.loads(task.http_request.body) == {"job_id": "0f4c2a"}
    assert task.http_request.oidc_token.service_account_email == "tasks@p.iam.gserviceaccount.com"
    assert task.http_request.oidc_token.audience == "https://svc-abc.a.run.app"
    assert task.dispatch_deadline.total_seconds() == 1800  # Cloud Tasks' cap
    with pytest.raises(ValueError):
        q.build_task("../evil", "low")
    with pytest.raises(ValueError):
        q.build_task("ok", "urgent")
    with pytest.raises(ValueError, match="SERVICE_URL"):
        CloudTasksQueue(
            **sections(Settings(queue_backend="cloudtasks", gcp_project="p", tasks_location="l"), "jobs", "cloud")
        )


class _OfflineClient:
    """Just the path helpers of CloudTasksClient; build_task makes no call."""

    from google.cloud.tasks_v2 import CloudTasksClient as _C

    queue_path = staticmethod(_C.queue_path)


class _Receiver(BaseHTTPRequestHandler):
    """Stands in for /tasks/run: records deliveries, fails the first `fail_first` of them."""

    deliveries: list[dict] = []
    fail_first = 0
    arrived = threading.Condition()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.arrived:
            self.deliveries.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            fail = len(self.deliveries) <= self.fail_first
            self.arrived.notify_all()
        self.send_response(503 if fail else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    @classmethod
    def wait_for(cls, n: int, timeout: float = 15) -> list[dict]:
        with cls.arrived:
            cls.arrived.wait_for(lambda: len(cls.deliveries) >= n, timeout)
            return list(cls.deliveries)


@pytest.fixture
def receiver():
    _Receiver.deliveries = []
    _Receiver.fail_first = 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_cloud_tasks_delivers_to_tasks_run_with_its_headers(tasks_emulator, receiver):
    settings = tasks_emulator.settings(receiver)
    tasks_emulator.create_queues(settings)
    q = taskqueue.from_settings(**sections(settings, "jobs", "cloud"), state_dir=settings.state_dir)
    try:
        q.enqueue("job-high-1", "high")
        (delivery,) = _Receiver.wait_for(1)
    finally:
        q.close()
    assert delivery["path"] == "/tasks/run"
    assert delivery["body"] == {"job_id": "job-high-1"}
    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    assert headers["x-cloudtasks-queuename"].endswith(f"/queues/{settings.tasks_queue_prefix}-high")
    assert headers["x-cloudtasks-taskname"] == "job-high-1"
    assert headers["x-cloudtasks-taskretrycount"] == "0"
    assert headers["content-type"] == "application/json"


def test_cloud_tasks_retries_a_5xx(tasks_emulator, receiver):
    _Receiver.fail_first = 1
    settings = tasks_emulator.settings(receiver)
    tasks_emulator.create_queues(settings)
    q = CloudTasksQueue(**sections(settings, "jobs", "cloud"))
    try:
        q.enqueue("job-retry", "low")
        first, second = _Receiver.wait_for(2)
        assert stays(lambda: len(_Receiver.deliveries) == 2, 0.5)  # a 2xx ends it: no third delivery
    finally:
        q.close()
    assert first["body"] == second["body"] == {"job_id": "job-retry"}
    headers = {k.lower(): v for k, v in second["headers"].items()}
    assert headers["x-cloudtasks-taskretrycount"] == "1"


def test_stop_waiting_ends_every_wait_for_good_and_keeps_the_jobs(queue):
    started, got = threading.Event(), []

    def wait() -> None:
        started.set()
        got.append(queue.next())  # no timeout: only a job or stop_waiting ends it

    t = threading.Thread(target=wait)
    t.start()
    assert started.wait(2)
    queue.stop_waiting()
    t.join(2)
    assert not t.is_alive() and got == [None]
    queue.enqueue("after", "high")
    assert queue.next() is None  # stopping: nothing more is handed out
    assert queue.pending() == {"high": 1, "normal": 0, "low": 0}  # kept for the next start
