"""Standard Webhooks: sign a payload and POST it once; the outbox (handler/jobs/outbox.py) retries.

Headers per https://www.standardwebhooks.com: `webhook-id` (stable across retries, so the
receiver can deduplicate), `webhook-timestamp` (of this attempt) and `webhook-signature`
(`v1,` + base64 HMAC-SHA256 over `id.timestamp.body` keyed with WEBHOOK_SECRET, a `whsec_…`
base64 secret). Signing is the `standardwebhooks` library's, the same a receiver verifies
with. The secret and the signed payload are never logged.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks import Webhook

from handler import errors
from handler.config.cloud import CloudSettings
from handler.config.urls import UrlSettings
from handler.config.webhooks import WebhookSettings
from handler.net import urlguard

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
_RETRYABLE = frozenset({408, 409, 425, 429})  # and every 5xx


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = Webhook(secret).sign(webhook_id, when, body.decode("utf-8"))
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


@dataclass(frozen=True)
class Attempt:
    """One POST of a webhook and what it tells the sender to do next."""

    status: int | None  # the receiver's HTTP status; None when it could not be reached
    error: str | None  # None on a 2xx
    retryable: bool
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None


def attempt(
    url: str, body: bytes, *, webhooks: WebhookSettings, urls: UrlSettings, cloud: CloudSettings, webhook_id: str
) -> Attempt:
    """POST `body` (JSON bytes) to `url` once, signed. Never raises.

    Network errors, 5xx and 408/409/425/429 are retryable (Retry-After is passed on, up to a
    minute); an unsafe URL or any other status is final."""
    when = int(time.time())
    # The id and timestamp go out signed or not: receivers deduplicate on the id either way.
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(when)}
    if webhooks.webhook_secret:
        headers = sign(webhooks.webhook_secret, webhook_id, when, body)
    try:
        resp = urlguard.post_json(
            url, body, headers, urls=urls, cloud=cloud, timeout=webhooks.webhook_timeout_s, purpose="webhook URL"
        )
    except errors.UnsafeURL as exc:
        log.warning("webhook %s refused: %s", webhook_id, exc.message)
        return Attempt(None, exc.message, retryable=False)
    except (OSError, http.client.HTTPException) as exc:
        return Attempt(None, f"could not reach the receiver: {urlguard.describe_error(exc)}", retryable=True)
    if 200 <= resp.status < 300:
        log.info("webhook %s delivered to %s", webhook_id, urlguard.redact_url(url))
        return Attempt(resp.status, None, retryable=False)
    retryable = resp.status >= 500 or resp.status in _RETRYABLE
    return Attempt(
        resp.status, f"receiver answered HTTP {resp.status}", retryable, _retry_after(resp.headers.get("retry-after"))
    )


def backoff(base_s: float, attempt: int) -> float:
    """base, 2×base, 4×base … (±20 % so receivers coming back up are not hit in lockstep)."""
    delay: float = min(MAX_BACKOFF_S, base_s * 2 ** (attempt - 1))
    return delay * random.uniform(0.8, 1.2)


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return min(MAX_BACKOFF_S, float(value))
    return None
