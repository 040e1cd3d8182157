"""Partial downloads kept for resuming: under the cache's `.partial/` folder, which ComfyUI never
sees (it is shown `<root>/<folder>` only).

Contract:
* A download of key K writes `.partial/K.part`; `.partial/K.json` records the validator of the
  response it came from (a strong ETag, else Last-Modified) and the total size, written before the
  first byte of the body. Only a part with such a record can be resumed (`Range` + `If-Range`);
  one without is started again from zero.
* `Partials.keep(key)` parks a part for a later fetch of the same URL (its bytes count against the
  cache's budget until then); `discard(key)` removes it and its record.
* `sweep(max_age_s, room)` at start: removes strays, parts without a record, parts older than
  `max_age_s`, then the oldest parts until what is left fits in `room` bytes; returns the kept
  parts' sizes by key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARTIAL = ".partial"
MAX_AGE_S = 24 * 3600.0
_PART = re.compile(r"^([0-9a-f]{24})\.part$")


@dataclass(frozen=True, kw_only=True)
class Resumable:
    """What a part file needs to be resumed: its validator and the total the server announced."""

    validator: str
    total: int | None

    def to_json(self) -> str:
        return json.dumps({"validator": self.validator, "total": self.total})

    @staticmethod
    def from_json(text: str) -> Resumable | None:
        try:
            raw: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("validator"), str) or not raw["validator"]:
            return None
        total = raw.get("total")
        return Resumable(validator=raw["validator"], total=total if isinstance(total, int) else None)


def validator_of(etag: str | None, last_modified: str | None) -> str | None:
    """The validator an `If-Range` may carry: a strong ETag (a weak one is not allowed there),
    else Last-Modified."""
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified or None


class Partials:
    def __init__(self, root: Path):
        self.folder = root / PARTIAL

    def part(self, key: str) -> Path:
        return self.folder / f"{key}.part"

    def record(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def resumable(self, key: str) -> Resumable | None:
        """The record of a non-empty part of `key`, or None (then it is started from zero)."""
        try:
            if self.part(key).stat().st_size <= 0:
                return None
            return Resumable.from_json(self.record(key).read_text())
        except OSError:
            return None

    def write_record(self, key: str, resumable: Resumable | None) -> None:
        if resumable is None:
            self.record(key).unlink(missing_ok=True)
            return
        tmp = self.folder / f".{key}.json.tmp"
        tmp.write_text(resumable.to_json())
        os.replace(tmp, self.record(key))

    def size(self, key: str) -> int:
        try:
            return self.part(key).stat().st_size
        except OSError:
            return 0

    def discard(self, key: str) -> None:
        self.part(key).unlink(missing_ok=True)
        self.record(key).unlink(missing_ok=True)

    def sweep(self, *, max_age_s: float, room: int, now: float | None = None) -> dict[str, int]:
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time() if now is None else now
        kept: list[tuple[float, str, int]] = []
        wanted: set[str] = set()
        for path in self.folder.iterdir():
            match = _PART.match(path.name)
            if match is None or not path.is_file():
                continue
            key = match.group(1)
            stat = path.stat()
            if now - stat.st_mtime <= max_age_s and self.resumable(key) is not None:
                kept.append((stat.st_mtime, key, stat.st_size))
                wanted |= {path.name, self.record(key).name}
        for path in self.folder.iterdir():
            if path.name not in wanted:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        kept.sort(reverse=True)  # the newest are kept first
        sizes: dict[str, int] = {}
        for _, key, size in kept:
            if size <= room:
                sizes[key] = size
                room -= size
            else:
                self.discard(key)
        return sizes
