"""Per-key limits, answered 429 with `Retry-After`: a rate of /predict requests (a token bucket
holding a minute's worth) and a cap on runs at once (sync runs in flight plus async jobs not yet
final). Both are counted per instance: Cloud Run's max-instances bounds the sum.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from handler.access.keys import ApiKey
from handler.errors import TooManyRequests

CAP_RETRY_AFTER_S = 5


@dataclass(kw_only=True)
class _Usage:
    tokens: float
    refilled_at: float
    in_flight: int = 0
    jobs: set[str] = field(default_factory=set)


class Limits:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    def _of(self, key: ApiKey) -> _Usage:
        usage = self._usage.get(key.key_id)
        if usage is None:
            usage = self._usage[key.key_id] = _Usage(tokens=key.rate_per_minute or 0.0, refilled_at=self._clock())
        return usage

    def take(self, key: ApiKey | None) -> None:
        """One request of the key's rate, or 429."""
        if key is None or key.rate_per_minute is None:
            return
        per_s = key.rate_per_minute / 60.0
        with self._lock:
            usage = self._of(key)
            now = self._clock()
            usage.tokens = min(key.rate_per_minute, usage.tokens + (now - usage.refilled_at) * per_s)
            usage.refilled_at = now
            if usage.tokens < 1.0:
                wait = math.ceil((1.0 - usage.tokens) / per_s)
                raise TooManyRequests(
                    f"this key may send {key.rate_per_minute:g} requests a minute", retry_after_s=wait
                )
            usage.tokens -= 1.0

    @contextlib.contextmanager
    def running(self, key: ApiKey | None, still_open: Callable[[str], bool]) -> Iterator[Callable[[str], None]]:
        """One run held against the key's cap while the block lasts, or 429 at once. The block
        may call what it is given with the id of an async job the run became: the job then holds
        its place until `still_open(job_id)` says it is final (asked outside the lock: it reads
        the store)."""
        kept: list[str] = []
        if key is None or key.max_jobs is None:
            yield kept.append
            return
        with self._lock:
            jobs = set(self._of(key).jobs)
        done = {job_id for job_id in jobs if not still_open(job_id)}
        with self._lock:
            usage = self._of(key)
            usage.jobs -= done
            if usage.in_flight + len(usage.jobs) >= key.max_jobs:
                raise TooManyRequests(f"this key may have {key.max_jobs} runs at once", retry_after_s=CAP_RETRY_AFTER_S)
            usage.in_flight += 1
        try:
            yield kept.append
        finally:
            with self._lock:
                usage.in_flight -= 1
                usage.jobs.update(kept)
