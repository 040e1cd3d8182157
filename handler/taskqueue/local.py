"""The embedded queue: SQLite under STATE_DIR, so queued jobs survive a restart.

Strict priority (every high before any normal, every normal before any low), FIFO within a
priority. A claimed job stays in the table until it is done; when the process restarts,
claims of the previous process are void and those jobs are ready again, first in line.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from handler.taskqueue.base import PRIORITIES, Claim, check_priority

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL UNIQUE,
    priority   INTEGER NOT NULL,
    claimed    INTEGER NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ready ON queue (claimed, priority, seq);
"""


class LocalQueue:
    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a process crash or restart; only a power loss may drop the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._cond = threading.Condition()  # reentrant: stop_waiting may run on a thread inside it
        self._closed = False
        self._stopped_waiting = False
        with self._cond:
            # Whoever held these claims is gone: this process is the only consumer.
            self._db.execute("UPDATE queue SET claimed = 0, not_before = 0 WHERE claimed = 1")

    def enqueue(self, job_id: str, priority: str = "normal", delay_s: float = 0.0) -> None:
        rank = PRIORITIES.index(check_priority(priority))
        not_before = time.time() + delay_s if delay_s > 0 else 0
        with self._cond:
            self._db.execute(
                "INSERT OR IGNORE INTO queue (job_id, priority, not_before) VALUES (?, ?, ?)",
                (job_id, rank, not_before),
            )
            self._cond.notify_all()

    def enqueue_claimed(self, job_id: str, priority: str = "normal") -> Claim:
        rank = PRIORITIES.index(check_priority(priority))
        with self._cond:
            self._db.execute(
                "INSERT INTO queue (job_id, priority, claimed, deliveries) VALUES (?, ?, 1, 1)", (job_id, rank)
            )
        return Claim(job_id, PRIORITIES[rank], 1)

    def next(self, timeout: float | None = None) -> Claim | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed and not self._stopped_waiting:
                now = time.time()
                row = self._db.execute(
                    "SELECT job_id, priority, deliveries FROM queue"
                    " WHERE claimed = 0 AND not_before <= ? ORDER BY priority, seq LIMIT 1",
                    (now,),
                ).fetchone()
                if row:
                    job_id, rank, deliveries = row
                    self._db.execute(
                        "UPDATE queue SET claimed = 1, deliveries = deliveries + 1 WHERE job_id = ?",
                        (job_id,),
                    )
                    return Claim(job_id, PRIORITIES[rank], deliveries + 1)
                wait = self._next_wakeup(now)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def _next_wakeup(self, now: float) -> float | None:
        (soonest,) = self._db.execute(
            "SELECT MIN(not_before) FROM queue WHERE claimed = 0 AND not_before > ?", (now,)
        ).fetchone()
        return None if soonest is None else max(0.0, soonest - now)

    def stop_waiting(self) -> None:
        """The process is stopping: `next` returns None at once, now and from now on."""
        with self._cond:
            self._stopped_waiting = True
            self._cond.notify_all()

    def done(self, job_id: str) -> None:
        with self._cond:
            self._db.execute("DELETE FROM queue WHERE job_id = ?", (job_id,))

    def release(self, job_id: str, delay_s: float = 0.0) -> None:
        with self._cond:
            self._db.execute(
                "UPDATE queue SET claimed = 0, not_before = ? WHERE job_id = ?",
                (time.time() + delay_s if delay_s > 0 else 0, job_id),
            )
            self._cond.notify_all()

    def remove(self, job_id: str) -> bool:
        with self._cond:
            cur = self._db.execute("DELETE FROM queue WHERE job_id = ? AND claimed = 0", (job_id,))
            return cur.rowcount > 0

    def pending(self) -> dict[str, int]:
        counts = dict.fromkeys(PRIORITIES, 0)
        with self._cond:
            for rank, n in self._db.execute("SELECT priority, COUNT(*) FROM queue WHERE claimed = 0 GROUP BY priority"):
                counts[PRIORITIES[rank]] = n
        return counts

    def pull_queue(self) -> LocalQueue:
        return self  # this process drains it

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            self._db.close()
