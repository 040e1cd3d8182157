"""Webhook delivery to a real receiver that verifies signatures with the standardwebhooks library."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time

import pytest

from handler.config import Settings
from handler.net import webhooks
from tests.fixtures.receiver import SECRET, Receiver
from tests.fixtures.sections import sections


def settings(**kw) -> Settings:
    values = dict(
        webhook_secret=SECRET,
        url_allowlist=("127.0.0.1",),
        webhook_backoff_s=0.05,
        webhook_max_attempts=4,
        webhook_timeout_s=2,
    )
    values.update(kw)
    return Settings(**values)


BODY = json.dumps({"type": "job.succeeded", "data": {"job_id": "j1"}}).encode()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_signed_delivery_verifies_with_the_standard_library(receiver):
    result = webhooks.attempt(
        receiver.url, BODY, **sections(settings(), "webhooks", "urls", "cloud"), webhook_id="msg_1"
    )
    assert result.delivered and result.status == 204 and result.error is None
    (got,) = receiver.received
    assert got["verified"] and got["payload"]["data"]["job_id"] == "j1"
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["webhook-id"] == "msg_1"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")


def test_a_wrong_secret_fails_verification(receiver):
    other = "whsec_" + base64.b64encode(b"another secret entirely, 32 byte").decode()
    result = webhooks.attempt(
        receiver.url, BODY, **sections(settings(webhook_secret=other), "webhooks", "urls", "cloud"), webhook_id="msg_2"
    )
    assert not result.delivered and result.status == 401 and not result.retryable
    assert receiver.received[0]["verified"] is False


@pytest.mark.parametrize(
    "status, retryable", [(500, True), (503, True), (429, True), (408, True), (410, False), (400, False)]
)
def test_what_is_worth_another_try(receiver, status, retryable):
    receiver.statuses = [status]
    result = webhooks.attempt(
        receiver.url, BODY, **sections(settings(), "webhooks", "urls", "cloud"), webhook_id="msg_3"
    )
    assert not result.delivered and result.status == status and result.retryable is retryable
    assert f"HTTP {status}" in (result.error or "")


def test_a_receiver_that_is_down_is_worth_another_try():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = webhooks.attempt(
        f"http://127.0.0.1:{port}/hook", BODY, **sections(settings(), "webhooks", "urls", "cloud"), webhook_id="msg_4"
    )
    assert not result.delivered and result.status is None and result.retryable
    assert "could not reach" in (result.error or "")


def test_unsafe_urls_are_never_called():
    for url in ["http://169.254.169.254/hook", "http://127.0.0.1:9/hook", "ftp://example.com/hook"]:
        result = webhooks.attempt(
            url, BODY, **sections(settings(url_allowlist=()), "webhooks", "urls", "cloud"), webhook_id="msg_5"
        )
        assert result.status is None and not result.delivered and not result.retryable
        assert "webhook URL" in (result.error or "")


def test_unsigned_when_no_secret_is_configured(receiver):
    receiver.statuses = [200]
    result = webhooks.attempt(
        receiver.url, BODY, **sections(settings(webhook_secret=None), "webhooks", "urls", "cloud"), webhook_id="msg_6"
    )
    assert result.delivered
    headers = {k.lower(): v for k, v in receiver.received[0]["headers"].items()}
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == "msg_6" and headers["webhook-timestamp"].isdigit()  # dedupe works unsigned too


def test_secret_and_payload_never_reach_the_logs(receiver, caplog):
    receiver.statuses = [500, 204]
    with caplog.at_level(logging.DEBUG):
        webhooks.attempt(receiver.url, BODY, **sections(settings(), "webhooks", "urls", "cloud"), webhook_id="msg_7")
        webhooks.attempt(receiver.url, BODY, **sections(settings(), "webhooks", "urls", "cloud"), webhook_id="msg_7")
    text = caplog.text
    assert SECRET not in text and SECRET[6:] not in text
    assert "job.succeeded" not in text and "t0p" not in text
    assert "v1," not in text


def test_backoff_doubles_with_jitter_and_is_capped():
    assert 0.8 <= webhooks.backoff(1.0, 1) <= 1.2 and 3.2 <= webhooks.backoff(1.0, 3) <= 4.8
    assert webhooks.backoff(1.0, 30) <= webhooks.MAX_BACKOFF_S * 1.2
