"""API keys, kept as hashes: the secret is shown once when made (scripts/apikey.py) and never
stored. The key file (API_KEYS_FILE, or its text in API_KEYS) holds one JSON object a line:

    {"id": "3f9c2a1b", "sha256": "<hex of the secret's SHA-256>", "role": "caller",
     "name": "acme", "workflows": false, "rate_per_minute": 60, "max_jobs": 4}

`role`: "admin" (raw workflows, dashboard, every job) or "caller" (named workflows with
parameters, its own jobs; raw workflows only with `"workflows": true`). `rate_per_minute`: its
/predict requests a minute; `max_jobs`: its runs at once (sync in flight plus async not final);
either left out or null means no limit. A secret looks like `crk_<id>_<43 random characters>`:
256 random bits, so one SHA-256 is enough (nothing to guess by brute force). A file is read
again when it changes (a Secret Manager volume updates in place); blank lines and `#` lines are
skipped; a line that is not a key stops the service at boot with the line's number.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.config import ConfigError
from handler.config.access import AccessSettings

log = logging.getLogger("handler.access")

PREFIX = "crk_"


class Role(str, enum.Enum):
    ADMIN = "admin"
    CALLER = "caller"


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    key_id: str
    sha256: str
    role: Role
    name: str = ""
    workflows: bool = False  # a caller key may send raw workflows
    rate_per_minute: float | None = None
    max_jobs: int | None = None

    def to_line(self) -> str:
        return json.dumps(
            {
                "id": self.key_id,
                "sha256": self.sha256,
                "role": self.role.value,
                "name": self.name,
                "workflows": self.workflows,
                "rate_per_minute": self.rate_per_minute,
                "max_jobs": self.max_jobs,
            }
        )


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(
    *,
    role: Role,
    name: str = "",
    workflows: bool = False,
    rate_per_minute: float | None = None,
    max_jobs: int | None = None,
) -> tuple[str, ApiKey]:
    """A fresh secret and the record to store for it (the secret itself is never stored)."""
    key_id = secrets.token_hex(4)
    secret = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        key_id=key_id,
        sha256=digest(secret),
        role=role,
        name=name,
        workflows=workflows,
        rate_per_minute=rate_per_minute,
        max_jobs=max_jobs,
    )
    return secret, key


def parse(text: str, source: str = "API_KEYS") -> dict[str, ApiKey]:
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys_of_line = _key(json.loads(line))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{source} line {number} is not an API key: {exc}") from None
        keys[keys_of_line.key_id] = keys_of_line
    return keys


def _key(raw: Any) -> ApiKey:
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    sha = str(raw["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError("sha256 must be 64 hex digits")
    rate, cap = raw.get("rate_per_minute"), raw.get("max_jobs")
    if rate is not None and (not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0):
        raise ValueError("rate_per_minute must be a positive number")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError("max_jobs must be a positive integer")
    return ApiKey(
        key_id=str(raw["id"]),
        sha256=sha,
        role=Role(raw.get("role", "caller")),
        name=str(raw.get("name", "")),
        workflows=raw.get("workflows") is True,
        rate_per_minute=float(rate) if rate is not None else None,
        max_jobs=cap,
    )


class KeyRing:
    """The configured keys: `find` turns a presented secret into its key, or None."""

    def __init__(self, *, text: str | None = None, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._static: dict[str, ApiKey] = parse(text) if text else {}  # API_KEYS
        self._keys: dict[str, ApiKey] = dict(self._static)  # and API_KEYS_FILE's
        if path is not None:
            self._reload()

    @classmethod
    def from_settings(cls, *, access: AccessSettings) -> KeyRing:
        return cls(text=access.api_keys, path=access.api_keys_file)

    @property
    def configured(self) -> bool:
        return self.path is not None or bool(self._keys)

    def find(self, secret: str) -> ApiKey | None:
        if self.path is not None:
            self._reload()
        if not secret.startswith(PREFIX) or secret.count("_") < 2:
            return None
        key = self._keys.get(secret[len(PREFIX) :].split("_", 1)[0])
        if key is None or not hmac.compare_digest(key.sha256, digest(secret)):
            return None
        return key

    def _reload(self) -> None:
        assert self.path is not None
        try:
            stat = self.path.stat()
        except OSError:
            if self._stamp is None:
                raise ConfigError(f"API_KEYS_FILE cannot be read: {self.path.name}") from None
            return  # keep the keys read last (a volume being updated)
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self._keys = {**self._static, **parse(self.path.read_text(), "API_KEYS_FILE")}
            except (ConfigError, OSError):
                if self._stamp is None:
                    raise
                log.error("API_KEYS_FILE changed into something that is not a key file: the keys read last stay")
            self._stamp = stamp
