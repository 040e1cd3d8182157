"""What the model cache hands out and how a download is shared: the cache's 4xx/503 answers,
`Acquired` (a pinned file and how it came to be there, for the request's answer) and `Flight`
(one download under way, whose outcome and progress the requests that wait on it share).
Used by handler/models/cache.py only; the errors are re-exported there."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from handler.errors import BadRequest, ComfyUnavailable, PayloadTooLarge, ServiceError
from handler.models.index import Entry
from handler.models.progress import Meter
from handler.models.refs import ModelRef
from handler.net.urlguard import redact_url


class ModelTooLarge(PayloadTooLarge):
    code = "model_too_large"


class ChecksumMismatch(BadRequest):
    code = "checksum_mismatch"


class ModelCacheBusy(ComfyUnavailable):
    """The budget is held by files that running or queued prompts use."""

    code = "model_cache_busy"


@dataclass(frozen=True, kw_only=True)
class Acquired:
    """A pinned file and how it came to be there, for the request's answer."""

    entry: Entry
    fetched: bool  # downloaded for this request (False: it was cached, or another request fetched it)
    seconds: float
    resumed: int = 0
    resumed_from: int = 0  # bytes a download cut off earlier had left, kept

    def describe(self) -> dict[str, Any]:
        e = self.entry
        return {
            "folder": e.folder,
            "file": e.name,
            "source": e.source,
            "size": e.size,
            "sha256": e.sha256,
            "verified": e.verified,
            "fetched": self.fetched,
            "stored": e.stored,
            "seconds": round(self.seconds, 3),
            **({"resumed_from": self.resumed_from} if self.resumed_from else {}),
        }


class Flight:
    """One download under way; waiters share its outcome and its progress."""

    def __init__(self, ref: ModelRef) -> None:
        self.meter = Meter(file=ref.filename, folder=ref.folder, source=redact_url(ref.url))
        self.done = threading.Event()
        self.entry: Entry | None = None
        self.error: ServiceError | None = None
        self.reserved = 0
        self.sha256: str | None = None  # what the fetching request expects
