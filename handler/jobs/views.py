"""What callers see of a job: the `/status` document and the webhook payload.

Output files are shown as store URIs and signed URLs (or links the service serves itself for
a local store), never as server paths; base64 only when asked and small enough.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.jobs.model import Job, iso, now
from handler.net import urlguard
from handler.storage import Store, link


class JobViews:
    def __init__(self, *, jobs: JobSettings, cloud: CloudSettings, store: Store):
        self.job_settings = jobs
        self.cloud = cloud
        self.store = store

    def status(self, job: Job, *, base_url: str | None = None, inline: bool = False) -> dict[str, Any]:
        base = (base_url or job.base_url or self.cloud.service_url or "").rstrip("/")
        out: dict[str, Any] = {
            "job_id": job.job_id,
            "state": job.state.value,
            "priority": job.priority,
            "attempts": job.attempts,
            "created_at": iso(job.created_at),
            "placed_at": iso(job.placed_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "updated_at": iso(job.updated_at),
            "status_url": f"{base}/status/{job.job_id}",
        }
        if job.cancel_requested and not job.final:
            out["cancel_requested"] = True
        if job.source != "api":
            out["source"] = job.source
        if job.result is not None:
            out["result"] = self._result(job, base, inline)
        if job.error is not None:
            out["error"] = job.error
        elif job.last_error is not None and not job.final:
            out["last_error"] = job.last_error
        if job.webhook_url:
            out["webhook"] = {
                "url": urlguard.redact_url(job.webhook_url),
                "webhook_id": job.webhook_id,
                **(job.webhook or {}),
            }
        return out

    def event(self, job: Job) -> bytes:
        """The webhook body: `{type, timestamp, data}` with `data` the job's status."""
        payload = {
            "type": f"job.{job.state.value}",
            "timestamp": iso(now()),
            "data": self.status(job, inline=job.inline),
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    def _result(self, job: Job, base: str, inline: bool) -> dict[str, Any]:
        result = dict(job.result or {})
        files = []
        total = sum(f.get("size", 0) for f in result.get("files", []))
        embed = inline and total <= self.job_settings.inline_max_bytes
        unsigned = False
        for stored in result.get("files", []):
            entry = dict(stored)
            key = entry.pop("key")
            entry["uri"] = self.store.uri(key)
            url = link(self.store, key, self.job_settings.signed_url_ttl_s, base)
            unsigned = unsigned or url is None
            entry["url"] = url
            if embed:
                entry["base64"] = base64.b64encode(self.store.get_bytes(key) or b"").decode("ascii")
            files.append(entry)
        result["files"] = files
        if inline and not embed:
            result["inline_skipped"] = f"outputs total {total} bytes, over INLINE_MAX_BYTES"
        if unsigned:
            result["url_note"] = "these storage credentials cannot sign URLs; use the gs:// URIs"
        return result
