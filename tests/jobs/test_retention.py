"""Retention (handler/jobs/retention.py): a final job's request goes at once, its outputs after the
retention, its record later still."""

from __future__ import annotations

import time

from tests.fixtures.jobharness import WORKFLOW, ScriptedPipeline, service


def test_a_final_jobs_request_goes_at_once_and_its_outputs_after_the_retention(store):
    from handler.jobs import retention

    svc = service(store, ScriptedPipeline(), output_retention_days=7)
    job = svc.submit({"workflow": WORKFLOW})
    assert store.list(f"inputs/{job.job_id}/")
    svc.run(job.job_id)
    assert store.list(f"inputs/{job.job_id}/") == []  # the request and its images: gone when final
    assert store.list(f"outputs/{job.job_id}/")
    repo = svc.service.repo
    assert retention.sweep(repo, jobs=svc.settings.jobs) == 0  # young outputs stay
    repo.update(job.job_id, lambda j: setattr(j, "finished_at", time.time() - 8 * 24 * 3600))
    retention.sweep(repo, jobs=svc.settings.jobs)
    assert store.list(f"outputs/{job.job_id}/") == [] and repo.find(job.job_id) is not None
    repo.update(job.job_id, lambda j: setattr(j, "finished_at", time.time() - 31 * 24 * 3600))
    retention.sweep(repo, jobs=svc.settings.jobs)
    assert repo.find(job.job_id) is None
