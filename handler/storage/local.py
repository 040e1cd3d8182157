"""A Store in a local folder: the embedded default, and what tests run against.

JSON objects (job records, requests, the catalogue) live in one SQLite database in the folder,
`objects.sqlite`: each change is one transaction, cas_json compares and writes in the same
immediate transaction, and SQLite's own locking keeps two processes sharing the folder
consistent. Generations come from the clock and only grow, so a deleted-and-recreated object
never matches a generation read before the delete.

Bytes (output files) are files under the folder, written to a temporary name and renamed into
place, so a reader never sees half a file; the service streams them from there (`path`).
Renaming over an existing file costs a flush on ext4; job records changing several times per job
are therefore kept out of files.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from handler.storage.base import PreconditionFailed, Versioned, check_key, check_prefix, dump_json

_TMP = ".tmp-"
_DB = "objects.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, data BLOB NOT NULL, generation INTEGER NOT NULL)"


class LocalStore:
    on_local_disk = True

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, shared by this process's threads
        self._db = sqlite3.connect(self.root / _DB, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a process crash or restart; only a power loss may drop the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    # --- plumbing

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _generation_row(db: sqlite3.Connection, key: str) -> int:
        row = db.execute("SELECT generation FROM objects WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _write_json(db: sqlite3.Connection, key: str, obj: Any, old: int) -> int:
        new = max(old + 1, time.time_ns() // 1000)
        db.execute(
            "INSERT INTO objects (key, data, generation) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET data = excluded.data, generation = excluded.generation",
            (key, dump_json(obj), new),
        )
        return new

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=path.parent)
        except FileNotFoundError:  # folders are made on the first write into them, not checked on each
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # no fsync: a process restart keeps the page cache
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- the Store interface

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._write_file(self._path(key), data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        with self._lock:
            row = self._db.execute("SELECT data FROM objects WHERE key = ?", (check_key(key),)).fetchone()
        return bytes(row[0]) if row else None

    def put_json(self, key: str, obj: Any) -> int:
        with self._transaction() as db:
            return self._write_json(db, check_key(key), obj, self._generation_row(db, key))

    def get_json(self, key: str) -> Versioned | None:
        with self._lock:
            row = self._db.execute("SELECT data, generation FROM objects WHERE key = ?", (check_key(key),)).fetchone()
        return None if row is None else Versioned(json.loads(row[0]), int(row[1]))

    def cas_json(self, key: str, obj: Any, *, generation: int) -> int:
        with self._transaction() as db:
            current = self._generation_row(db, check_key(key))
            if current != generation:
                raise PreconditionFailed(f"{key}: generation is {current}, not {generation}")
            return self._write_json(db, key, obj, current)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        with self._transaction() as db:
            db.execute("DELETE FROM objects WHERE key = ?", (key,))

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        with self._lock:
            rows = self._db.execute("SELECT key FROM objects WHERE " + _IN_PREFIX, _bounds(prefix)).fetchall()
        keys = [row[0] for row in rows]
        # Files: walk only the folder the prefix points into, then filter by the full prefix.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if base.is_dir():
            for dirpath, _dirnames, filenames in os.walk(base):
                for name in filenames:
                    if name.startswith(_TMP) or (Path(dirpath) == self.root and name.startswith(_DB)):
                        continue
                    key = Path(dirpath, name).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        with self._transaction() as db:
            db.execute("DELETE FROM objects WHERE " + _IN_PREFIX, _bounds(prefix))
        _prune_empty(self.root, prefix)
        return len(keys)

    def uri(self, key: str) -> str:
        return f"local://{check_key(key)}"

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        return None  # the service serves local outputs itself

    def local_file(self, key: str) -> Path | None:
        return self._path(key)


# A key range, not substr(): the primary key's index answers it without reading every row.
_IN_PREFIX = "key >= ? AND key < ?"


def _bounds(prefix: str) -> tuple[str, str]:
    """[prefix, the prefix with its last character incremented): exactly the keys that start
    with it (TEXT compares as UTF-8 bytes, which sort as code points)."""
    if not prefix:
        return "", chr(0x10FFFF) * 2
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


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
