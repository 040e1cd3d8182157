"""Settings of who may call: API keys and the IAM identities with the admin role (handler/access/,
docs/security.md "Access"). One section of `Settings` (handler/config/settings.py).

`PUBLIC_SERVICE` (handler/config/cloud.py) needs keys: `Settings.from_env` refuses it without any,
and with `INGRESS_VERIFIES_TOKENS` on (nothing in front of a public service checks a token)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from handler.config.declare import Section, setting


@dataclass(frozen=True, kw_only=True)
class AccessSettings(Section):
    """With no keys, calls are let in by Cloud Run's IAM alone, as before keys existed; with keys,
    every call needs a key or an identity Cloud Run checked. Keys are kept as hashes, one JSON
    object a line, made by `python -m handler.access.cli create`."""

    TITLE: ClassVar[str] = "Access"

    api_keys_file: Path | None = setting(
        env="API_KEYS_FILE",
        default=None,
        secret=True,  # only a path, but where the keys are is nobody's business
        help="the API keys' hashes, one JSON object a line (a Secret Manager secret mounted as a file: "
        "read again when it changes)",
    )
    api_keys: str | None = setting(
        env="API_KEYS",
        default=None,
        secret=True,
        help="the same text as `API_KEYS_FILE` holds, in a variable (a Secret Manager secret as an env var)",
    )
    admin_emails: tuple[str, ...] = setting(
        env="ADMIN_EMAILS",
        default=(),
        help="verified emails of IAM callers with the admin role (the dashboard, `/system`, every job), "
        "comma-separated",
    )
