"""Settings of the URLs the service fetches (input images) and calls (webhooks): which private
hosts it may reach, how long a fetch may take, how big an input may be. One section of `Settings`
(handler/config/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from handler.config.declare import Section, setting


@dataclass(frozen=True, kw_only=True)
class UrlSettings(Section):
    """Every URL is checked before it is fetched or called: https in cloud mode, and never a
    loopback, private, link-local or metadata address unless `URL_ALLOWLIST` names it; the check is
    made again after DNS and at every redirect (docs/api.md)."""

    TITLE: ClassVar[str] = "Input images and URLs"

    url_allowlist: tuple[str, ...] = setting(
        env="URL_ALLOWLIST",
        default=(),
        help="hosts or CIDRs exempt from the private-address check, comma-separated",
    )
    url_fetch_timeout_s: float = setting(
        env="URL_FETCH_TIMEOUT_S", default=30.0, help="how long fetching one input image by URL may take (seconds)"
    )
    max_input_bytes: int = setting(
        env="MAX_INPUT_BYTES",
        default=50 * 1024 * 1024,
        help="largest input image: sent as base64, fetched by URL or read from `gs://`",
    )
    max_input_pixels: int = setting(
        env="MAX_INPUT_PIXELS",
        default=50_000_000,
        help="the most pixels (width × height) an input image's header may declare, checked before anything "
        "decodes it (then 413)",
    )
