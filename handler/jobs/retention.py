"""How long a job's data lives.

A job's request (with its base64 images) is deleted as soon as the job is final: nothing reads
it again. Outputs are kept `OUTPUT_RETENTION_DAYS` (default 7, the longest a signed URL lives)
and job records `max(that, 30)` days. In the cloud the bucket's lifecycle rules (deploy.sh) do
the same; locally a sweep in this process does, at start and then hourly.
"""

from __future__ import annotations

import logging

from handler.comfyui.progress import progress_key
from handler.config.jobs import JobSettings
from handler.jobs.model import now
from handler.jobs.repo import JobRepo, job_key, request_key

log = logging.getLogger("handler.jobs.retention")

DAY_S = 24 * 3600.0
RECORD_MIN_DAYS = 30
SWEEP_EVERY_S = 3600.0


def record_days(jobs: JobSettings) -> float:
    return max(jobs.output_retention_days, RECORD_MIN_DAYS)


def discard_request(repo: JobRepo, job_id: str) -> None:
    """The job is final: its stored request (and images) goes now."""
    try:
        repo.store.delete(request_key(job_id))  # the one object under inputs/{id}/ (the sweep takes all)
    except Exception as exc:  # the sweep (or the bucket's lifecycle) takes it later
        log.info("job %s: could not delete its request yet: %s", job_id, exc)


def sweep(repo: JobRepo, *, jobs: JobSettings) -> int:
    """Delete what outlived its retention; returns how many jobs were touched."""
    touched = 0
    at = now()
    for job in repo.all():
        if not job.final or job.finished_at is None:
            continue
        age_days = (at - job.finished_at) / DAY_S
        if age_days >= jobs.output_retention_days:
            if repo.store.delete_prefix(f"outputs/{job.job_id}/") or repo.store.delete_prefix(f"inputs/{job.job_id}/"):
                touched += 1
        if age_days >= record_days(jobs):
            repo.store.delete(job_key(job.job_id))
            repo.store.delete(progress_key(job.job_id))  # left only by a run that died
            touched += 1
    if touched:
        log.info("retention: removed the data of %d job(s)", touched)
    return touched
