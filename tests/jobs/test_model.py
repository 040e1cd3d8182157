"""The job's states and transitions (handler/jobs/model.py): a claim places the job in ComfyUI's
queue, it runs only from ComfyUI's start, and a placed job is owned, handed back and ended like a
running one."""

from __future__ import annotations

import pytest

from handler.jobs.model import ACTIVE_STATES, Job, JobState


def claimed(at: float = 100.0) -> Job:
    job = Job(job_id="j1", priority="high")
    job.claim("me", "token-1", at)
    return job


def test_a_claimed_job_is_placed_not_running_and_counts_an_attempt() -> None:
    job = claimed()
    assert job.state is JobState.PLACED and job.attempts == 1
    assert job.placed_at == 100.0 and job.started_at is None
    assert job.owned_by("token-1") and not job.owned_by("token-2")
    assert job.to_dict()["state"] == "placed" and Job.from_dict(job.to_dict()).state is JobState.PLACED


def test_it_runs_when_comfyui_starts_it_and_keeps_its_lease() -> None:
    job = claimed()
    job.start(105.0)
    assert job.state is JobState.RUNNING and job.started_at == 105.0 and job.placed_at == 100.0
    assert job.owned_by("token-1") and job.lease is not None
    with pytest.raises(AssertionError):
        job.start(106.0)  # only a placed job starts


def test_a_placed_job_is_handed_back_or_ended_like_a_running_one() -> None:
    job = claimed()
    job.hand_back({"code": "shutdown"}, counts=False)
    assert job.state is JobState.QUEUED and job.lease is None and job.attempts == 0
    job.claim("me", "token-2", 200.0)
    assert job.placed_at == 200.0 and job.started_at is None  # a new run's times
    job.finish(JobState.CANCELLED, error={"code": "cancelled"})
    assert job.final and job.lease is None


def test_a_new_claim_forgets_the_previous_runs_start() -> None:
    job = claimed()
    job.start(105.0)
    job.hand_back({"code": "comfyui_unavailable"}, counts=True)
    job.claim("me", "token-2", 300.0)
    assert job.state is JobState.PLACED and job.started_at is None and job.attempts == 2


def test_the_states_in_order_and_which_hold_a_lease() -> None:
    assert [s.value for s in JobState] == ["queued", "placed", "running", "succeeded", "failed", "cancelled"]
    assert ACTIVE_STATES == {JobState.PLACED, JobState.RUNNING}
    assert all(state.active == (state in ACTIVE_STATES) for state in JobState)


def test_the_docs_table_lists_every_state() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "async.md").read_text()
    rows = [line.strip() for line in docs.splitlines() if line.strip().startswith("| `")]
    named = [name.strip("` ") for row in rows for name in row.split("|")[1].split("/")]
    assert named == [state.value for state in JobState], named
