"""Who may deliver tasks: the OIDC token Cloud Tasks sends with every dispatch.

A token must be for our SERVICE_URL (`aud`), issued by Google (`iss`), unexpired (`exp`), and
minted for TASKS_SERVICE_ACCOUNT (`email`, verified). Its signature is checked against Google's
certificates, except where Cloud Run's IAM has already checked it: behind
`--no-allow-unauthenticated`, Cloud Run verifies the token itself and hands it on with the
signature replaced by `SIGNATURE_REMOVED_BY_GOOGLE`. Such a token is accepted only when the
service sits behind that IAM check (INGRESS_VERIFIES_TOKENS, on by default on Cloud Run unless
PUBLIC_SERVICE, and never on a public deployment); the claims are checked all the same. A token
that carries a signature is always verified in full. `email_verified` must be the boolean true.

Two headers: when a request carries `X-Serverless-Authorization`, Cloud Run checks that one and
passes `Authorization` through untouched, so the identity comes from `X-Serverless-Authorization`
and a token in `Authorization` counts only if its own signature verifies: a stripped one there
was never seen by Cloud Run and is refused (401), whoever it names.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import google.auth.exceptions
import requests
from google.auth import jwt

from handler import errors
from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.errors import Forbidden, Unauthorized

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
STRIPPED_SIGNATURE = "SIGNATURE_REMOVED_BY_GOOGLE"
CLOCK_SKEW_S = 30


class TaskTokenVerifier:
    def __init__(
        self,
        audience: str | None,
        service_account: str | None,
        *,
        ingress_verified: bool = False,
        certs_url: str = GOOGLE_CERTS_URL,
        certs_ttl_s: float = 3600.0,
    ):
        self.audience = audience
        self.service_account = service_account
        self.ingress_verified = ingress_verified
        self.certs_url = certs_url
        self.certs_ttl_s = certs_ttl_s
        self._certs: tuple[float, dict[str, str]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, *, cloud: CloudSettings, jobs: JobSettings) -> TaskTokenVerifier:
        return cls(cloud.service_url, jobs.tasks_service_account, ingress_verified=cloud.ingress_verifies_tokens)

    def verify(self, authorization: str | None, serverless_authorization: str | None = None) -> dict[str, Any]:
        """The claims of the task token, checked. `serverless_authorization`: the request's
        X-Serverless-Authorization, when it has one (then it names the caller)."""
        if not self.audience or not self.service_account:
            raise Forbidden("task tokens cannot be checked: set SERVICE_URL and TASKS_SERVICE_ACCOUNT")
        if serverless_authorization is not None:
            # Cloud Run checked this header, not Authorization: that one must carry its signature.
            if authorization and authorization.lower().startswith("bearer "):
                passed = _jwt_of(authorization)
                if passed is not None:
                    if passed.rsplit(".", 1)[1] == STRIPPED_SIGNATURE:
                        raise Unauthorized(
                            "a token without its signature in Authorization was not checked by Cloud Run"
                        )
                    self._verified_claims(passed)
            authorization = serverless_authorization
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("a Cloud Tasks OIDC token is required")
        token = _jwt_of(authorization)
        if token is None:
            raise Unauthorized("the token is not a JWT")
        if token.rsplit(".", 1)[1] == STRIPPED_SIGNATURE:
            if not self.ingress_verified:
                raise Unauthorized("a token without its signature is only accepted behind Cloud Run's IAM")
            claims = _unverified_claims(token)
            self._check_time(claims)
        else:
            claims = self._verified_claims(token)
        if claims.get("aud") != self.audience:
            raise Unauthorized("the task token is for another audience")
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthorized("the task token was not issued by Google")
        if claims.get("email") != self.service_account or claims.get("email_verified") is not True:
            raise Forbidden("the task token is not for the configured TASKS_SERVICE_ACCOUNT")
        return claims

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.decode_header(token)  # type: ignore[no-untyped-call]  # unannotated in google-auth
        except (ValueError, TypeError):
            raise Unauthorized("the token is not a JWT") from None
        try:
            certs = self._fetch()
            if header.get("kid") not in certs:
                certs = self._fetch(force=True)  # Google rotated its keys
        except (requests.RequestException, ValueError):
            raise errors.ComfyUnavailable("cannot fetch Google's token certificates; retry shortly") from None
        try:
            claims: dict[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]  # unannotated in google-auth
                token, certs=certs, audience=self.audience, clock_skew_in_seconds=CLOCK_SKEW_S
            )
        except (ValueError, google.auth.exceptions.GoogleAuthError):
            raise Unauthorized("the task token is not valid (signature, audience or expiry)") from None
        return claims

    @staticmethod
    def _check_time(claims: dict[str, Any]) -> None:
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat", 0)
        if not isinstance(exp, (int, float)) or exp + CLOCK_SKEW_S < now:
            raise Unauthorized("the task token has expired")
        if isinstance(iat, (int, float)) and iat - CLOCK_SKEW_S > now:
            raise Unauthorized("the task token is not valid yet")

    def _fetch(self, force: bool = False) -> dict[str, str]:
        with self._lock:
            if not force and self._certs and time.monotonic() - self._certs[0] < self.certs_ttl_s:
                return self._certs[1]
            response = requests.get(self.certs_url, timeout=10)
            response.raise_for_status()
            self._certs = (time.monotonic(), response.json())
            return self._certs[1]


def _jwt_of(authorization: str) -> str | None:
    """The token of a `Bearer` header when it has the shape of a JWT."""
    token = authorization.split(" ", 1)[1].strip() if " " in authorization else ""
    return token if token.count(".") == 2 else None


def _unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        raise Unauthorized("the token is not a JWT") from None
    if not isinstance(claims, dict):
        raise Unauthorized("the token is not a JWT")
    return claims
