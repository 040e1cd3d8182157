"""The runs in this process and their leases (handler/jobs/leases.py): two instances never run one
job at once, a cancel reaches a run at its next renewal, a run whose lease was taken over or
lapsed stops and publishes nothing, and shutdown hands a running job back uncounted."""

from __future__ import annotations

import threading
import time

from handler.jobs import JobState, Outcome
from handler.jobs.model import Lease
from tests.fixtures.jobharness import WORKFLOW, ScriptedPipeline, service


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
