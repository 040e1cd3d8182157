"""The process's threads and its shutdown signal, owned in one place.

`Runtime.stopping` is set the moment SIGTERM arrives (`handler/server.py` chains uvicorn's own
handler to `Runtime.signal_stop`), before uvicorn starts draining connections: work in flight
watches it and answers 503 at once, instead of running past Cloud Run's 10 s grace.

Long blocking work (a sync `/predict` run, a job run) goes through `run_long`, on a capacity
limiter of its own. anyio's default pool (40 threads) is left to short calls, so /healthz,
/status and listings never queue behind runs that take minutes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import anyio.to_thread

from handler.config import ConfigError
from handler.config.http import HttpSettings

log = logging.getLogger("handler.runtime")

T = TypeVar("T")
# How parts that run threads get them: `Runtime.thread` in the service, so that every thread is
# named and joined in one place.
Spawn = Callable[[str, Callable[[], None]], threading.Thread]


def daemon_thread(name: str, target: Callable[[], None]) -> threading.Thread:
    """A Spawn for parts used on their own (tests, tools): an untracked daemon thread."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class Trigger(threading.Event):
    """A `threading.Event` that also sets the events linked to it while they are linked, so a
    thread can wait on one event for several causes (done, cancelled, shutting down)."""

    def __init__(self) -> None:
        super().__init__()
        self._linked: set[threading.Event] = set()
        self._links_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._links_lock:
            linked = list(self._linked)
        for event in linked:
            event.set()

    @contextlib.contextmanager
    def linked(self, event: threading.Event) -> Iterator[None]:
        with self._links_lock:
            self._linked.add(event)
        if self.is_set():
            event.set()  # set before the link: the waiter must still see it
        try:
            yield
        finally:
            with self._links_lock:
                self._linked.discard(event)


def link(source: threading.Event | None, target: threading.Event) -> contextlib.AbstractContextManager[Any]:
    """Link `source` to `target` if it is a Trigger; a plain Event cannot be linked (the waiter
    must then also poll it)."""
    if isinstance(source, Trigger):
        return source.linked(target)
    return contextlib.nullcontext()


class Runtime:
    """Owns the process's threads and its shutdown signal."""

    def __init__(self, *, http: HttpSettings) -> None:
        self.stopping: Trigger = Trigger()
        # Long runs mostly wait on ComfyUI: many threads are cheap, and a full limiter makes
        # callers wait on the event loop, holding no thread.
        self.long_limiter = anyio.CapacityLimiter(http.long_run_threads)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []
        self._state_lock: IO[str] | None = None

    # --- the state folder ------------------------------------------------------------------

    def claim_state_dir(self, path: Path) -> None:
        """Hold STATE_DIR for this process's life: a second process on the same folder would
        drain the same local queue and run the same jobs twice, so it stops at start instead."""
        path.mkdir(parents=True, exist_ok=True)
        handle = open(path / ".owner.lock", "a+")  # noqa: SIM115  (held open until the process ends)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(
                f"another process is already serving from STATE_DIR ({path.name}); give each process its own STATE_DIR"
            ) from None
        self._state_lock = handle

    # --- threads ---------------------------------------------------------------------------

    def thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Start a named daemon thread that `stop` will join."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    async def run_long(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking long work in a worker thread on the runtime's own limiter."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.long_limiter)

    @property
    def long_runs(self) -> int:
        """Long runs now holding a thread."""
        return int(self.long_limiter.borrowed_tokens)

    # --- shutdown --------------------------------------------------------------------------

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` (quickly, from the signal handler's thread) when stopping is set."""
        self._on_stop.append(callback)

    def signal_stop(self) -> None:
        """Set `stopping` and tell whoever asked: called from the SIGTERM handler, so it must
        not block."""
        if self.stopping.is_set():
            return
        log.info("stopping: work in flight is interrupted and answered 503")
        self.stopping.set()
        for callback in list(self._on_stop):
            try:
                callback()
            except Exception:  # a listener's failure must not stop the shutdown
                log.exception("a stop listener failed")

    def stop(self, timeout_s: float) -> None:
        """Set stopping, then join the tracked threads within `timeout_s` in all."""
        self.signal_stop()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("thread %s did not stop within %.1f s", thread.name, timeout_s)
