"""Submitting, adopting and cancelling jobs (handler/jobs/service.py): a submit stores the request
then queues the job, a cancelled queued job never runs, client-made Cloud Tasks become one job
each under a secret id, timeouts beyond the dispatch deadline are refused, and a job started at
once as the job threads stop is still run."""

from __future__ import annotations

import time

import pytest

from handler import errors
from handler.jobs import JobState
from tests.fixtures.jobharness import WORKFLOW, ScriptedPipeline, service


def test_submit_stores_the_request_then_queues_the_job(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW, "async": True, "priority": "low", "inline": True})
    assert svc.queue.enqueued == [(job.job_id, "low")]
    assert store.get_json(f"inputs/{job.job_id}/request.json").data == {"workflow": WORKFLOW}
    view = svc.status(job.job_id)
    assert view["state"] == "queued" and view["priority"] == "low" and view["attempts"] == 0


def test_cancel_of_a_queued_job_means_it_never_runs(store):
    svc = service(store, ScriptedPipeline())
    job = svc.submit({"workflow": WORKFLOW})
    assert svc.cancel(job.job_id)["cancel"] == "dequeued"
    assert svc.run(job.job_id).job.state is JobState.CANCELLED and svc.pipeline.runs == 0
    with pytest.raises(errors.Conflict):
        svc.cancel(job.job_id)


def test_client_made_tasks_become_one_job_each(store):
    svc = service(store, ScriptedPipeline())
    first = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t1", base_url=None)
    again = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t1", base_url=None)
    other = svc.adopt_task({"workflow": WORKFLOW}, queue_name="q", task_name="t2", base_url=None)
    assert first == again != other and first.startswith("ct-")
    assert svc.queue.enqueued == []  # Cloud Tasks is already delivering them
    bad = svc.adopt_task({"workflow": {"1": {}}}, queue_name="q", task_name="t3", base_url=None)
    assert svc.get(bad).state is JobState.FAILED  # recorded, so the task is not retried forever


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
