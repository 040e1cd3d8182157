"""Where async jobs keep their requests, state and results; see base.Store."""

from __future__ import annotations

from pathlib import Path

from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.storage.base import BadKey, PreconditionFailed, Store, Versioned

__all__ = ["BadKey", "PreconditionFailed", "Store", "Versioned", "from_settings", "link"]


def from_settings(*, jobs: JobSettings, cloud: CloudSettings, state_dir: Path) -> Store:
    """The store STORAGE_BACKEND names: a GCS bucket, or a folder under `state_dir`."""
    if jobs.storage_backend == "gcs":
        from handler.storage.gcs import GCSStore  # imported lazily: the local mode needs no Google libraries

        assert jobs.gcs_bucket is not None  # Settings.from_env refuses STORAGE_BACKEND=gcs without GCS_BUCKET
        return GCSStore(
            jobs.gcs_bucket,
            project=cloud.gcp_project,
            emulator_host=jobs.storage_emulator_host,
        )
    from handler.storage.local import LocalStore

    return LocalStore(state_dir / "store")


def link(store: Store, key: str, ttl_s: int, base_url: str) -> str | None:
    """Where a caller fetches a stored output: a signed URL, or for the local store this
    service's own `/outputs/…` route; None when the store cannot sign (use its `gs://` URI)."""
    url = store.signed_url(key, ttl_s)
    if url is None and store.on_local_disk:
        url = f"{base_url.rstrip('/')}/{key}"
    return url
