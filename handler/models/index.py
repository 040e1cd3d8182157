"""The model cache's index: what is cached, and the folders made to agree with it at start.

`index.json` under the cache root lists one `Entry` per cached file (source, size, sha256, fetch
time, last use). `load(root)` reads it and keeps only entries written by the cache (a key, a known
folder, a plain file name) whose file is there at its recorded size, and removes the key folders
the index does not know; `save(root, entries)` replaces it atomically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from handler.models.refs import LOADERS

INDEX = "index.json"
KEY = re.compile(r"^[0-9a-f]{24}$")
SAFE_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
FOLDERS = frozenset(LOADERS.values())


@dataclass(kw_only=True)
class Entry:
    """One cached file, as the index records it."""

    key: str
    folder: str
    filename: str
    source: str  # the URL, redacted (no query string, no credentials)
    size: int
    sha256: str
    verified: bool  # a sha256 was given with the URL and matched
    fetched_at: float
    last_used: float
    stored: bool = False  # served from the backing store (a link into MODEL_CACHE_STORE): no local bytes

    @property
    def name(self) -> str:
        """The file name ComfyUI lists in its folder."""
        return f"{self.key}/{self.filename}"

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "file": self.name}


def save(root: Path, entries: list[Entry]) -> None:
    data = {"version": 1, "entries": [asdict(e) for e in entries]}
    tmp = root / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, root / INDEX)


def load(root: Path) -> dict[str, Entry]:
    root.mkdir(parents=True, exist_ok=True)
    try:
        raw = json.loads((root / INDEX).read_text())
        records = raw.get("entries", []) if isinstance(raw, dict) else []
    except (OSError, ValueError):
        records = []
    entries: dict[str, Entry] = {}
    for record in records:
        try:
            entry = Entry(**record)
        except TypeError:
            continue
        if not (KEY.match(entry.key) and entry.folder in FOLDERS and SAFE_FILE.match(entry.filename)):
            continue  # not written by this cache: never a path to follow
        path = root / entry.folder / entry.key / entry.filename
        if path.is_file() and path.stat().st_size == entry.size:
            entries[entry.key] = entry
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        for child in folder.iterdir():
            known = entries.get(child.name)
            if KEY.match(child.name) and (known is None or known.folder != folder.name):
                shutil.rmtree(child, ignore_errors=True)
    return entries
