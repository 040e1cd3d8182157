"""The `Store` interface: where async jobs keep requests, state and results.

Keys are relative, slash-separated paths (`jobs/{id}.json`, `inputs/{id}/…`, `outputs/{id}/…`).
JSON objects carry a generation; `cas_json` writes only when the caller saw the latest one,
which is how job state changes and run leases stay consistent across instances.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class PreconditionFailed(Exception):
    """A compare-and-swap lost: the object changed (or appeared, or vanished) since it was read."""


class BadKey(ValueError):
    pass


@dataclass(frozen=True)
class Versioned:
    data: Any
    generation: int  # > 0; 0 in a cas_json call means "must not exist yet"


@runtime_checkable
class Store(Protocol):
    # On this machine's disk: no per-object write rate limit, and nothing expires old objects
    # (the service sweeps them itself; a bucket has lifecycle rules for that).
    on_local_disk: bool

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    def put_json(self, key: str, obj: Any) -> int:
        """Write unconditionally; returns the new generation."""

    def get_json(self, key: str) -> Versioned | None: ...

    def cas_json(self, key: str, obj: Any, *, generation: int) -> int:
        """Write only if the stored generation is `generation` (0: absent); returns the new one.

        Raises PreconditionFailed otherwise.
        """

    def delete(self, key: str) -> None:
        """Delete one object; nothing happens when there is none."""

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""

    def uri(self, key: str) -> str:
        """A stable name for the object: gs://bucket/key, or local://key for a local folder
        (never a server path)."""

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        """A time-limited HTTPS URL anyone can GET, or None when this store cannot sign."""

    def local_file(self, key: str) -> Path | None:
        """The file behind `key` on this machine's disk, for the service to serve itself (its
        `/outputs/…` route); None for a store whose objects are elsewhere (reached by signed URL).
        A malformed key raises BadKey."""


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's root or are ambiguous."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise BadKey(f"bad store key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in ("", ".", ".."):
        raise BadKey(f"bad store key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    if prefix and (prefix.startswith("/") or ".." in prefix.split("/") or "\\" in prefix):
        raise BadKey(f"bad store prefix {prefix!r}")
    return prefix


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
