"""The process's watchdog: alarms fire once, in deadline order, unless disarmed."""

from __future__ import annotations

import threading
import time

from handler.net.watchdog import Watchdog


def test_alarms_fire_in_deadline_order_and_disarmed_ones_never():
    watchdog = Watchdog()
    fired: list[str] = []
    done = threading.Event()

    def note(name: str):
        def callback() -> None:
            fired.append(name)
            if name == "last":
                done.set()

        return callback

    started = time.monotonic()
    watchdog.arm(0.6, note("last"))
    watchdog.arm(0.3, note("later"))
    watchdog.arm(0.1, note("soon"))  # armed after the others, due before them: wakes the thread
    watchdog.arm(0.2, note("disarmed")).disarm()
    assert done.wait(10)
    assert fired == ["soon", "later", "last"]
    assert time.monotonic() - started >= 0.6


def test_a_failing_callback_does_not_stop_the_watchdog():
    watchdog = Watchdog()
    ran = threading.Event()

    def broken() -> None:
        raise RuntimeError("boom")

    watchdog.arm(0.01, broken)
    watchdog.arm(0.05, ran.set)
    assert ran.wait(10)
