"""Webhook delivery to a real receiver that verifies signatures with the standardwebhooks library."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from handler import webhooks
from handler.config import Settings

SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two byte").decode()


class Receiver:
    """An HTTP server on loopback that verifies every delivery it gets."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None, secret: str = SECRET):
        self.received: list[dict] = []
        self.statuses = list(statuses or [])
        verifier = Webhook(secret)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    payload = verifier.verify(body, dict(self.headers))
                    verified = True
                except WebhookVerificationError:
                    payload, verified = json.loads(body), False
                outer.received.append({"headers": dict(self.headers), "payload": payload, "verified": verified})
                status = outer.statuses.pop(0) if outer.statuses else (204 if verified else 401)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/comfy?token=t0p"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


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
    record = webhooks.deliver(receiver.url, BODY, settings())
    assert record.delivered and record.attempts == 1 and record.last_status == 204
    assert record.signed and record.error is None
    assert record.url.endswith("/hooks/comfy")  # the query (a token) is not recorded
    (got,) = receiver.received
    assert got["verified"] and got["payload"]["data"]["job_id"] == "j1"
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["webhook-id"] == record.webhook_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")


def test_a_wrong_secret_fails_verification(receiver):
    other = "whsec_" + base64.b64encode(b"another secret entirely, 32 byte").decode()
    record = webhooks.deliver(receiver.url, BODY, settings(webhook_secret=other))
    assert not record.delivered and record.last_status == 401 and record.attempts == 1
    assert receiver.received[0]["verified"] is False


def test_5xx_is_retried_with_the_same_id_then_succeeds(receiver):
    receiver.statuses = [503, 500]
    record = webhooks.deliver(receiver.url, BODY, settings())
    assert record.delivered and record.attempts == 3
    ids = {r["headers"]["webhook-id"] for r in receiver.received}
    assert len(ids) == 1 and all(r["verified"] for r in receiver.received)


def test_permanent_failure_after_the_attempt_limit(receiver):
    receiver.statuses = [500] * 10
    record = webhooks.deliver(receiver.url, BODY, settings(webhook_max_attempts=3))
    assert not record.delivered and record.attempts == 3 and len(receiver.received) == 3
    assert record.last_status == 500 and "HTTP 500" in record.error


def test_a_4xx_is_final(receiver):
    receiver.statuses = [410]
    record = webhooks.deliver(receiver.url, BODY, settings())
    assert record.attempts == 1 and record.last_status == 410 and not record.delivered


def test_target_down_then_up():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    holder: dict = {}

    def bring_up_later():
        time.sleep(0.4)
        holder["receiver"] = Receiver(port=port)

    threading.Thread(target=bring_up_later).start()
    record = webhooks.deliver(url, BODY, settings(webhook_backoff_s=0.25, webhook_max_attempts=6))
    try:
        assert record.delivered and record.attempts >= 2
        assert len(holder["receiver"].received) == 1 and holder["receiver"].received[0]["verified"]
    finally:
        holder["receiver"].close()


def test_unsafe_urls_are_never_called():
    for url in ["http://169.254.169.254/hook", "http://127.0.0.1:9/hook", "ftp://example.com/hook"]:
        record = webhooks.deliver(url, BODY, settings(url_allowlist=()))
        assert record.attempts == 1 and record.last_status is None and not record.delivered
        assert "webhook URL" in record.error


def test_stop_cuts_the_backoff_short(receiver):
    receiver.statuses = [500] * 10
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    record = webhooks.deliver(receiver.url, BODY, settings(webhook_backoff_s=30), stop=stop)
    assert time.monotonic() - started < 5
    assert not record.delivered and "shutdown" in record.error


def test_unsigned_when_no_secret_is_configured(receiver):
    receiver.statuses = [200]
    record = webhooks.deliver(receiver.url, BODY, settings(webhook_secret=None))
    assert record.delivered and not record.signed
    assert "webhook-signature" not in {k.lower() for k in receiver.received[0]["headers"]}


def test_secret_and_payload_never_reach_the_logs(receiver, caplog):
    receiver.statuses = [500, 204]
    with caplog.at_level(logging.DEBUG):
        webhooks.deliver(receiver.url, BODY, settings())
    text = caplog.text
    assert SECRET not in text and SECRET[6:] not in text
    assert "job.succeeded" not in text and "t0p" not in text
    assert "v1," not in text
