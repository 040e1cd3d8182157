"""A Store in a local folder: the embedded default, and what tests run against.

Writes go to a temporary file renamed into place, so a reader never sees half an object.
Generations of JSON objects live beside the data under `.gen/`; a lock (a thread lock plus
an flock on `.lock`, so two processes sharing the folder also agree) makes cas_json atomic.
Generations come from the clock and only grow, so a deleted-and-recreated object never
matches a generation read before the delete.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .base import PreconditionFailed, Versioned, check_key, check_prefix, dump_json

_GEN = ".gen"
_TMP = ".tmp-"


class LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / _GEN).mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._lockfile = self.root / ".lock"

    # --- plumbing

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _gen_path(self, key: str) -> Path:
        return self.root / _GEN / check_key(key)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self._lockfile, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # no fsync: a process restart keeps the page cache
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _generation(self, key: str) -> int:
        if not self._path(key).exists():
            return 0
        try:
            return int(self._gen_path(key).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 1  # written by put_bytes, or by hand

    def _write_json(self, key: str, obj: Any, old: int) -> int:
        new = max(old + 1, time.time_ns() // 1000)
        self._write(self._path(key), dump_json(obj))
        self._write(self._gen_path(key), str(new).encode())
        return new

    # --- the Store interface

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with self._locked():
            self._write(self._path(key), data)
            self._gen_path(key).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def put_json(self, key: str, obj: Any) -> int:
        with self._locked():
            return self._write_json(key, obj, self._generation(key))

    def get_json(self, key: str) -> Versioned | None:
        with self._locked():
            data = self.get_bytes(key)
            if data is None:
                return None
            return Versioned(json.loads(data), self._generation(key))

    def cas_json(self, key: str, obj: Any, *, generation: int) -> int:
        with self._locked():
            current = self._generation(key)
            if current != generation:
                raise PreconditionFailed(f"{key}: generation is {current}, not {generation}")
            return self._write_json(key, obj, current)

    def delete(self, key: str) -> None:
        with self._locked():
            self._path(key).unlink(missing_ok=True)
            self._gen_path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        # Walk only the folder the prefix points into, then filter by the full prefix.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != _GEN]
            for name in filenames:
                if name.startswith(_TMP) or (Path(dirpath) == self.root and name == ".lock"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        with self._locked():  # writers hold the lock too, so no folder vanishes under them
            for key in keys:
                self._path(key).unlink(missing_ok=True)
                self._gen_path(key).unlink(missing_ok=True)
            for top in (self.root, self.root / _GEN):
                _prune_empty(top, prefix)
        return len(keys)

    def uri(self, key: str) -> str:
        return f"local://{check_key(key)}"

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        return None  # the service serves local outputs itself

    def path(self, key: str) -> Path:
        """The file behind a key (local stores only): lets the service stream it."""
        return self._path(key)


def _prune_empty(top: Path, prefix: str) -> None:
    """Remove folders that the delete left empty, below `top` and inside the prefix."""
    if "/" not in prefix:
        return
    folder = top / prefix.rsplit("/", 1)[0]
    for dirpath, _dirs, _files in sorted(os.walk(folder), key=lambda w: -len(w[0])):
        try:
            Path(dirpath).rmdir()
        except OSError:
            pass
