"""Job records in the store (handler/jobs/repo.py): compare-and-swap writes, a committed write whose
answer was lost taken as ours, changes that start from our own last write and are decided again
on a read when it is stale, and writes to one record spaced for Cloud Storage."""

from __future__ import annotations

import time

import pytest

from handler.jobs import Job, JobState, Outcome
from handler.storage.gcs import GCSStore
from tests.fixtures.jobharness import WORKFLOW, ScriptedPipeline, service


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
    from handler.jobs.repo import JobRepo, LeaveUnchanged

    counted = CountsReads(store)
    ours, theirs = JobRepo(store=counted, keeps_line=False), JobRepo(store=store, keeps_line=False)  # two processes
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
            raise LeaveUnchanged("final")
        j.attempts += 1

    with pytest.raises(LeaveUnchanged):
        ours.update(job.job_id, unless_final)
    assert seen == ["placed", "cancelled"] and counted.reads == 1
    assert ours.get(job.job_id).state is JobState.CANCELLED and ours.get(job.job_id).attempts == 5

    # A change that declines on a stale view is not taken at its word either.
    other = Job(job_id="j-declined")
    ours.create(other, None)
    theirs.update(other.job_id, lambda j: j.claim("them", "t2", time.time(), 60))
    decided: list[str] = []

    def only_if_queued(j: Job) -> None:
        decided.append(j.state.value)
        if j.state is not JobState.QUEUED:
            raise LeaveUnchanged("busy")

    with pytest.raises(LeaveUnchanged):
        ours.update(other.job_id, only_if_queued)
    assert decided == ["queued", "placed"]  # queued in our view, then placed in the store's
