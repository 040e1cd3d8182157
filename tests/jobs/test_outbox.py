"""Webhook events (handler/jobs/outbox.py): a redelivered finished job queues its pending event again,
the outbox retries a failing receiver with one webhook-id and gives up at the limit, and the
first try is made inline within its bound, what it cannot settle queued after the first backoff."""

from __future__ import annotations

import threading

from handler.jobs import Outcome
from tests.fixtures.jobharness import WORKFLOW, RecordingQueue, ScriptedPipeline, service
from tests.fixtures.sections import sections


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
        outbox = Outbox(
            **sections(svc.settings, "webhooks", "urls", "cloud", "observability"),
            repo=shared.repo,
            views=shared.views,
            queue=queue,
            inline_tries=1,
        )
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
        outbox = Outbox(
            **sections(svc.settings, "webhooks", "urls", "cloud", "observability"),
            repo=shared.repo,
            views=shared.views,
            queue=queue,
            inline_tries=1,
        )
        outbox.announce(svc.get(job.job_id), try_now=True)
        assert svc.get(job.job_id).webhook["attempts"] == 1
        assert queue.pending()["normal"] == 1 and queue.next(timeout=0.1) is None  # not before ~0.3 s
        claim = queue.next(timeout=2)
        assert claim is not None and claim.job_id == job.job_id
    finally:
        queue.close()
        server.shutdown()
        server.server_close()
