"""The runner (handler/jobs/runner.py): a delivery claims the job under a lease, runs it once,
publishes its outcome; transient failures go back in line until the attempts run out, permanent
ones are final, a foreign lease is respected until it expires, and a Cloud Tasks delivery runs
the first job in line. On real stores with a scripted pipeline."""

from __future__ import annotations

import threading
import time

import pytest

from handler.access import Caller, Role
from handler.jobs import Job, JobState, Outcome
from handler.jobs.model import Lease
from tests.fixtures.jobharness import WORKFLOW, ScriptedPipeline, service
from tests.fixtures.waiting import wait_until


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


def test_a_callers_raw_graph_is_run_confined_from_its_stored_job(store):
    """Whether ComfyUI keeps prompts apart is known where the job runs, not where it was
    submitted (the api role): the job carries the fact to the run, which reads the stored body."""
    pipeline = ScriptedPipeline()
    svc = service(store, pipeline)
    caller = Caller(owner="key:abc", role=Role.CALLER, workflows=True)
    admin = Caller(owner="key:ops", role=Role.ADMIN, workflows=True)
    jobs = [
        svc.submit({"workflow": WORKFLOW}, caller=caller),
        svc.submit({"workflow": WORKFLOW}, caller=admin),
        svc.submit({"workflow": WORKFLOW}),  # a client-made task's: its token vouches for it
    ]
    assert [job.caller for job in jobs] == ["key:abc", "key:ops", None]
    for job in jobs:
        assert svc.run(job.job_id).job.state is JobState.SUCCEEDED
    assert [request.confined for request in pipeline.requests] == [True, False, False]


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


def test_a_cloud_tasks_delivery_runs_the_first_job_in_line_whatever_it_named(store):
    svc = service(store, ScriptedPipeline())
    low = svc.submit({"workflow": WORKFLOW, "priority": "low"})
    normal = svc.submit({"workflow": WORKFLOW})
    high = svc.submit({"workflow": WORKFLOW, "priority": "high"})
    order = [svc.runner.run_next(low.job_id).job.job_id for _ in range(3)]
    assert order == [high.job_id, normal.job_id, low.job_id]
    assert svc.runner.run_next(low.job_id).kind is Outcome.FINAL  # its own job, long done
    assert svc.service.repo.line() == []


def test_a_run_is_placed_until_comfyui_starts_it_then_running(store):
    pipeline = ScriptedPipeline("held")
    svc = service(store, pipeline)
    job = svc.submit({"workflow": WORKFLOW})
    outcome: list = []
    run = threading.Thread(target=lambda: outcome.append(svc.run(job.job_id)), daemon=True)
    run.start()
    try:
        assert pipeline.started.wait(10)
        placed = svc.status(job.job_id)
        assert placed["state"] == "placed" and placed["placed_at"] and placed["started_at"] is None
        pipeline.start.set()  # ComfyUI starts the prompt: the run's own thread records it
        running = wait_until(lambda: (s := svc.status(job.job_id))["state"] == "running" and s, 10)
        assert running["started_at"] >= running["placed_at"]
    finally:
        pipeline.start.set()
        pipeline.finish.set()
        run.join(10)
        svc.stop()
    (done,) = outcome
    assert done.job.state is JobState.SUCCEEDED and svc.status(job.job_id)["started_at"] == running["started_at"]


def test_a_run_that_ends_before_its_running_write_keeps_its_start(store):
    svc = service(store, ScriptedPipeline("starts"))
    job = svc.submit({"workflow": WORKFLOW})
    done = svc.run(job.job_id)
    svc.stop()
    assert done.job.state is JobState.SUCCEEDED and done.job.started_at is not None
    assert done.job.placed_at is not None and done.job.placed_at <= done.job.started_at <= done.job.finished_at


@pytest.mark.parametrize("state", [JobState.PLACED, JobState.RUNNING])
def test_a_placed_or_running_job_whose_run_died_is_taken_over(store, state):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})
    svc.service.repo.update(
        job.job_id,
        lambda j: (setattr(j, "state", state), setattr(j, "lease", Lease("x", "t", time.time() + 60))),
    )
    assert svc.run(job.job_id).kind is Outcome.BUSY  # a live lease: respected
    svc.service.repo.update(job.job_id, lambda j: setattr(j.lease, "expires_at", time.time() - 1))
    taken = svc.run(job.job_id)
    assert taken.kind is Outcome.FINAL and taken.job.state is JobState.SUCCEEDED
