"""The caller a request speaks for, and what its role lets it do.

In order:

1. An API key (`X-API-Key: crk_…`, or `Authorization: Bearer crk_…`): it must be one of the
   configured keys (401 otherwise); the caller is `key:<id>` with the key's role.
2. The identity Cloud Run's IAM checked (only where INGRESS_VERIFIES_TOKENS is on, never on a
   public deployment): the token in `X-Serverless-Authorization` when there is one, else in
   `Authorization`, carrying `SIGNATURE_REMOVED_BY_GOOGLE` (Cloud Run strips what it checked;
   `Authorization` beside `X-Serverless-Authorization` was not checked and names nobody) with
   `email_verified` the boolean true. The caller is `iam:<email>`: admin when listed in
   ADMIN_EMAILS, otherwise a caller who may send raw workflows, as before keys existed.
3. Nobody: refused (401) when keys are configured; otherwise an anonymous admin (local mode,
   and direct calls to a service behind IAM, which only Cloud Run itself can make).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handler.access.keys import PREFIX, ApiKey, KeyRing, Role
from handler.config.access import AccessSettings
from handler.config.cloud import CloudSettings
from handler.errors import Forbidden, Unauthorized

STRIPPED_SIGNATURE = "SIGNATURE_REMOVED_BY_GOOGLE"


@dataclass(frozen=True, kw_only=True)
class Caller:
    owner: str | None  # what its jobs are marked with: "key:<id>", "iam:<email>", None (anonymous)
    role: Role
    workflows: bool  # may send raw workflows (admins always)
    key: ApiKey | None = None

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN

    def owns(self, owner: str | None) -> bool:
        """Whether a job marked `owner` is this caller's to see and cancel."""
        return self.admin or (self.owner is not None and owner == self.owner)

    def confine(self, workflow_id: str | None) -> bool:
        """Whether a graph this caller sends may run only where ComfyUI confines each prompt
        to its own folders: a raw one from anyone but an admin (named workflows are the
        operator's). Without that, nodes made while a graph runs escape the node policy."""
        return not self.admin and workflow_id is None

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this needs an admin key")

    def check_body(self, body: Any) -> None:
        """A caller without `workflows` runs named workflows only."""
        if self.workflows or self.admin or not isinstance(body, dict):
            return
        envelope = body.get("input")
        if "workflow" in body or (isinstance(envelope, dict) and "workflow" in envelope):
            raise Forbidden("this key runs named workflows only: send workflow_id and params")


ANONYMOUS = Caller(owner=None, role=Role.ADMIN, workflows=True)


def identify(headers: Mapping[str, str], *, access: AccessSettings, cloud: CloudSettings, keys: KeyRing) -> Caller:
    presented = headers.get("x-api-key") or _bearer_key(headers.get("authorization"))
    if presented is not None:
        if not keys.configured:
            raise Unauthorized("this service has no API keys: it is called through Cloud Run's IAM")
        key = keys.find(presented.strip())
        if key is None:
            raise Unauthorized("the API key is not valid")
        return Caller(owner=f"key:{key.key_id}", role=key.role, workflows=key.workflows, key=key)
    email = iam_email(headers, cloud=cloud)
    if email is not None:
        admin = email in access.admin_emails
        return Caller(owner=f"iam:{email}", role=Role.ADMIN if admin else Role.CALLER, workflows=True)
    if keys.configured or cloud.public_service:
        raise Unauthorized("an API key is required: send X-API-Key or Authorization: Bearer")
    return ANONYMOUS


def _bearer_key(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization.split(" ", 1)[1].strip()
        if token.startswith(PREFIX):
            return token
    return None


def iam_email(headers: Mapping[str, str], *, cloud: CloudSettings) -> str | None:
    """The verified email of the token Cloud Run's IAM checked, or None."""
    if not cloud.ingress_verifies_tokens or cloud.public_service:
        return None
    authorization = headers.get("x-serverless-authorization") or headers.get("authorization")
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    claims = stripped_claims(authorization.split(" ", 1)[1].strip())
    if claims is None or claims.get("email_verified") is not True:
        return None
    email = claims.get("email")
    return email if isinstance(email, str) and email else None


def stripped_claims(token: str) -> dict[str, Any] | None:
    """The claims of a token Cloud Run checked and stripped; None for anything else."""
    parts = token.split(".")
    if len(parts) != 3 or parts[2] != STRIPPED_SIGNATURE:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None
