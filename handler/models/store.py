"""The model cache's backing store: a folder that outlives the instance (on Cloud Run a read-write
Cloud Storage volume, MODEL_CACHE_STORE), where each verified download is kept for the instances
that come after.

Layout under the store's root, one folder per cache key (handler/models/refs.py `ModelRef.key`:
a hash of the model folder and the whole URL, query included):

    <key>/<sha256>-<filename>   the file, named by its digest: two writers of different bytes
                                never write the same name
    <key>/record.json           {key, folder, filename, source (redacted), sha256, size, fetched_at}

Contract:
* `find(ref)` returns the stored file only when its record is there, is this key's and folder's,
  names a plain file name and a digest, the file has the recorded size, and, when the request
  gives a sha256, the recorded digest is that one. Anything else is a miss (None): the caller
  downloads. The path is built from the key and the record's checked fields, never read from it.
* `put(entry, file)` copies a verified file in: under a temporary name, renamed into place, the
  record written last (also renamed into place), so an entry without its record, a half-copied
  one, is never taken. It is skipped when the record already names that digest.
* `remove(key)` deletes the key's folder. Errors of the store are the caller's to log: a store
  never fails a request.
* A store is reached by key only: a file fetched by one URL is never found under another's key.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from handler.models.index import FOLDERS, KEY, SAFE_FILE, Entry
from handler.models.refs import ModelRef

log = logging.getLogger("handler.models.store")

RECORD = "record.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Record:
    """What the store keeps beside a file."""

    key: str
    folder: str
    filename: str
    source: str
    sha256: str
    size: int
    fetched_at: float


class Store:
    def __init__(self, *, root: Path):
        self.root = root.absolute()  # links into the store name it from anywhere
        self._copies: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def link(self, record: Record, where: Path) -> None:
        """Make `where` (a cache key's folder) hold a link named `record.filename` to the stored
        file: one atomic step, so ComfyUI sees the complete file or nothing."""
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        (where / record.filename).symlink_to(self.file(record))

    def entry(self, record: Record, *, verified: bool, now: float) -> Entry:
        return Entry(
            key=record.key,
            folder=record.folder,
            filename=record.filename,
            source=record.source,
            size=record.size,
            sha256=record.sha256,
            verified=verified,
            fetched_at=record.fetched_at,
            last_used=now,
            stored=True,
        )

    def file(self, record: Record) -> Path:
        return self.root / record.key / f"{record.sha256}-{record.filename}"

    def read(self, key: str) -> Record | None:
        """The record of `key`, when it is there and well-formed (its file is not looked at)."""
        if not KEY.match(key):
            return None
        try:
            raw = json.loads((self.root / key / RECORD).read_text())
            record = Record(**raw)
        except (OSError, ValueError, TypeError):
            return None
        if not (
            record.key == key
            and record.folder in FOLDERS
            and isinstance(record.filename, str)
            and SAFE_FILE.match(record.filename)
            and isinstance(record.sha256, str)
            and _HEX64.match(record.sha256)
            and isinstance(record.size, int)
            and isinstance(record.source, str)
            and isinstance(record.fetched_at, (int, float))
        ):
            return None
        return record

    def find(self, ref: ModelRef) -> Record | None:
        record = self.read(ref.key)
        if record is None or record.folder != ref.folder:
            return None
        if ref.sha256 is not None and ref.sha256 != record.sha256:
            return None  # not the file the request demands: downloaded again, and stored anew
        try:
            if self.file(record).stat().st_size != record.size:
                return None
        except OSError:
            return None
        return record

    def put(self, entry: Entry, file: Path) -> bool:
        """Copy `file` in as `entry`'s; False when the store already had it."""
        if not KEY.match(entry.key):
            raise ValueError("not a cache key")
        record = Record(
            key=entry.key,
            folder=entry.folder,
            filename=entry.filename,
            source=entry.source,
            sha256=entry.sha256,
            size=entry.size,
            fetched_at=entry.fetched_at,
        )
        folder = self.root / entry.key
        try:
            known = json.loads((folder / RECORD).read_text())
            if isinstance(known, dict) and known.get("sha256") == entry.sha256 and self.file(record).is_file():
                return False
        except (OSError, ValueError):
            pass
        folder.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:12]
        tmp = folder / f".{tag}.tmp"
        try:
            with file.open("rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
            if tmp.stat().st_size != entry.size:
                raise OSError(0, "the copy is not the file's size")
            os.replace(tmp, self.file(record))
            record_tmp = folder / f".{tag}.json.tmp"
            record_tmp.write_text(json.dumps(asdict(record)))
            os.replace(record_tmp, folder / RECORD)  # last: only now is the entry taken
        finally:
            tmp.unlink(missing_ok=True)
            (folder / f".{tag}.json.tmp").unlink(missing_ok=True)
        return True

    def put_later(self, entry: Entry, file: Path) -> None:
        """`put` in the background: the answer does not wait for it; a failure is logged only."""

        def copy() -> None:
            try:
                if self.put(entry, file):
                    log.info("model %s: copied into the model cache's store", entry.source)
            except Exception as exc:  # noqa: BLE001 - the store never fails a request
                log.warning("model %s: not copied into the model cache's store: %s", entry.source, exc)
            finally:
                with self._lock:
                    self._copies.discard(threading.current_thread())

        thread = threading.Thread(target=copy, name=f"model-store-{entry.key}", daemon=True)
        with self._lock:
            self._copies.add(thread)
        thread.start()

    def wait(self, timeout_s: float) -> None:
        """Wait for the copies under way."""
        end = time.monotonic() + timeout_s
        with self._lock:
            copies = list(self._copies)
        for thread in copies:
            thread.join(max(0.0, end - time.monotonic()))

    def remove(self, key: str) -> None:
        if KEY.match(key):
            (self.root / key / RECORD).unlink(missing_ok=True)  # first: a half-removed entry is never taken
            shutil.rmtree(self.root / key, ignore_errors=True)
