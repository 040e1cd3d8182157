"""Settings of webhooks: how they are signed, how long one try may take, how often and how far
apart they are tried. One section of `Settings` (handler/config/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from handler.config.declare import Section, setting


@dataclass(frozen=True, kw_only=True)
class WebhookSettings(Section):
    """Webhooks follow Standard Webhooks and are delivered at least once (docs/async.md,
    "Webhooks")."""

    TITLE: ClassVar[str] = "Webhooks"

    webhook_secret: str | None = setting(
        env="WEBHOOK_SECRET",
        default=None,
        secret=True,
        help="signs webhooks (never logged); without it the id and timestamp still come, unsigned",
    )
    webhook_max_attempts: int = setting(
        env="WEBHOOK_MAX_ATTEMPTS", default=10, at_least=1, help="tries of one webhook before it is given up"
    )
    webhook_backoff_s: float = setting(
        env="WEBHOOK_BACKOFF_S",
        default=1.0,
        help="the first wait between two tries of one webhook, doubling after each (locally; Cloud Tasks uses "
        "its queue's backoff)",
    )
    webhook_timeout_s: float = setting(
        env="WEBHOOK_TIMEOUT_S", default=10.0, help="how long one try of a webhook may take"
    )
