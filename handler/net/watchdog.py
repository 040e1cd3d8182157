"""Deadlines for blocking calls, kept by one thread for the whole process.

`arm(seconds, callback)` returns an `Alarm`; unless it is disarmed first, `callback` runs on the
watchdog thread once `seconds` have passed. Callbacks must be quick and must not raise (a
failure is logged): urlguard's cuts the sockets of an outbound call that outlived its deadline.

One daemon thread, started on first use, serves every alarm: a `threading.Timer` per call would
start (and tear down) a thread for each webhook and each input fetch. The thread holds no work
of its own, so it is not joined at shutdown.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("handler.net.watchdog")


class Alarm:
    __slots__ = ("at", "callback", "armed")

    def __init__(self, at: float, callback: Callable[[], None]):
        self.at = at
        self.callback = callback
        self.armed = True

    def disarm(self) -> None:
        """The call ended in time: the callback will not run (a disarmed alarm is dropped lazily)."""
        self.armed = False


class Watchdog:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()  # ties on `at` never compare alarms
        self._changed = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, callback: Callable[[], None]) -> Alarm:
        alarm = Alarm(time.monotonic() + seconds, callback)
        with self._changed:
            heapq.heappush(self._heap, (alarm.at, next(self._order), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is alarm:
                self._changed.notify()  # the earliest deadline moved closer
        return alarm

    def _loop(self) -> None:
        while True:
            alarm = self._next_due()
            if alarm.armed:
                try:
                    alarm.callback()
                except Exception:
                    log.exception("a watchdog callback failed")

    def _next_due(self) -> Alarm:
        with self._changed:
            while True:
                while self._heap and not self._heap[0][2].armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._changed.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._changed.wait(wait)


_WATCHDOG = Watchdog()


def arm(seconds: float, callback: Callable[[], None]) -> Alarm:
    """Run `callback` after `seconds` on the process's watchdog thread, unless disarmed first."""
    return _WATCHDOG.arm(seconds, callback)
