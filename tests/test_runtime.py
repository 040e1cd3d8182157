"""Runtime: long runs on their own limiter, tracked threads, and the linked shutdown signal."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread

from handler.config import Settings
from handler.runtime import Runtime, Trigger, link

ANYIO_DEFAULT_THREADS = 40


def test_long_runs_leave_anyios_default_pool_free():
    runtime = Runtime(http=Settings(long_run_threads=ANYIO_DEFAULT_THREADS + 5).http)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def long_run() -> str:
        entered.release()
        release.wait(30)
        return "done"

    async def main() -> list[str]:
        results: list[str] = []

        async def one() -> None:
            results.append(await runtime.run_long(long_run))

        async with anyio.create_task_group() as group:
            for _ in range(ANYIO_DEFAULT_THREADS + 5):
                group.start_soon(one)
            for _ in range(ANYIO_DEFAULT_THREADS + 5):
                await anyio.to_thread.run_sync(entered.acquire)  # every long run holds a thread
            assert runtime.long_runs == ANYIO_DEFAULT_THREADS + 5
            with anyio.fail_after(10):  # a short call still gets a thread of the default pool
                assert await anyio.to_thread.run_sync(lambda: "short") == "short"
            release.set()
        return results

    assert anyio.run(main) == ["done"] * (ANYIO_DEFAULT_THREADS + 5)


def test_run_long_passes_arguments():
    runtime = Runtime(http=Settings().http)
    assert anyio.run(lambda: runtime.run_long(lambda a, b=0: a + b, 1, b=2)) == 3


def test_stop_sets_stopping_and_joins_tracked_threads():
    runtime = Runtime(http=Settings().http)
    seen: list[str] = []
    worker = runtime.thread("worker", lambda: seen.append("stopped" if runtime.stopping.wait(30) else "timeout"))
    runtime.stop(10)
    assert runtime.stopping.is_set() and not worker.is_alive() and seen == ["stopped"]


def test_a_trigger_wakes_linked_events_only_while_linked():
    trigger, waiter, later = Trigger(), threading.Event(), threading.Event()
    with trigger.linked(waiter):
        assert not waiter.is_set()
        trigger.set()
        assert waiter.is_set()
    trigger.clear()
    trigger.set()
    with link(trigger, later):  # already set: the link tells the waiter at once
        assert later.is_set()
    plain = threading.Event()
    with link(plain, waiter):  # a plain Event cannot be linked; nothing happens
        pass


def test_signal_stop_tells_listeners_once():
    runtime = Runtime(http=Settings().http)
    calls: list[int] = []
    runtime.on_stop(lambda: calls.append(1))
    runtime.signal_stop()
    runtime.signal_stop()
    assert calls == [1] and runtime.stopping.is_set()
