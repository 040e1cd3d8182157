"""Named points where a test has this process killed hard, to prove that whatever dies when, no
job and no webhook is lost.

Off unless FAILPOINT_KILL names a point: then the first time the process reaches it, it sends
itself SIGKILL (no shutdown, no hand-back: as an out-of-memory kill or a lost machine would).
The points, in a job's order: `claimed` (the lease is taken), `ran` (ComfyUI finished, outputs not
stored), `uploaded` (outputs stored, the job not final), `final` (final, its event not queued),
`delivered` (the webhook answered 2xx, not recorded yet).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("handler.failpoints")

POINTS = ("claimed", "ran", "uploaded", "final", "delivered")


class Failpoints:
    def __init__(self, kill_at: str | None):
        if kill_at is not None and kill_at not in POINTS:
            raise ValueError(f"FAILPOINT_KILL must be one of {', '.join(POINTS)}, got {kill_at!r}")
        self.kill_at = kill_at

    def reach(self, point: str) -> None:
        if point == self.kill_at:
            log.warning("failpoint %s: killing this process (FAILPOINT_KILL)", point)
            os.kill(os.getpid(), signal.SIGKILL)
