"""Where async jobs keep their requests, state and results; see base.Store."""

from __future__ import annotations

from handler.config import Settings
from handler.storage.base import BadKey, PreconditionFailed, Store, Versioned

__all__ = ["BadKey", "PreconditionFailed", "Store", "Versioned", "from_settings", "link"]


def from_settings(settings: Settings) -> Store:
    if settings.storage_backend == "gcs":
        from handler.storage.gcs import GCSStore  # imported lazily: the local mode needs no Google libraries

        assert settings.gcs_bucket is not None  # Settings.from_env refuses STORAGE_BACKEND=gcs without GCS_BUCKET
        return GCSStore(
            settings.gcs_bucket,
            project=settings.gcp_project,
            emulator_host=settings.storage_emulator_host,
        )
    from handler.storage.local import LocalStore

    return LocalStore(settings.state_dir / "store")


def link(store: Store, key: str, ttl_s: int, base_url: str) -> str | None:
    """Where a caller fetches a stored output: a signed URL, or for the local store this
    service's own `/outputs/…` route; None when the store cannot sign (use its `gs://` URI)."""
    url = store.signed_url(key, ttl_s)
    if url is None and store.on_local_disk:
        url = f"{base_url.rstrip('/')}/{key}"
    return url
