"""urlguard against a real HTTP server on loopback (which itself needs the allowlist)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from handler import errors
from handler.config import Settings
from handler.net import urlguard
from tests.fixtures.sections import sections

LOCAL = Settings(url_allowlist=("127.0.0.1",), url_fetch_timeout_s=5.0)
STRICT = Settings()
CLOUD = Settings(cloud_mode=True)


class _Handler(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def _record(self, body: bytes = b"") -> None:
        self.seen.append({"path": self.path, "method": self.command, "headers": dict(self.headers), "body": body})

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, length: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._record()
        port = self.server.server_address[1]
        p = self.path.split("?", 1)[0]
        if p == "/image.png":
            self._send(200, b"\x89PNG fake image")
        elif p.startswith("/hop/"):
            n = int(p.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/hop/{n - 1}" if n > 0 else "/image.png"})
        elif p == "/to-private":
            self._send(302, headers={"Location": "http://10.1.2.3/secret"})
        elif p == "/to-metadata":
            self._send(301, headers={"Location": "http://169.254.169.254/computeMetadata/v1/"})
        elif p == "/to-localhost":
            self._send(307, headers={"Location": f"http://localhost:{port}/image.png"})
        elif p == "/big":
            self._send(200, b"x" * 5000)
        elif p == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"400\r\n" + b"y" * 0x400 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif p == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            time.sleep(2)
        else:
            self._send(404, b"nope")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._record(body)
        if self.path == "/hook":
            self._send(200, b'{"ok": true}', {"Content-Type": "application/json"})
        elif self.path == "/moved":
            self._send(308, headers={"Location": "/hook"})
        elif self.path == "/found":
            self._send(302, headers={"Location": "/hook"})
        elif self.path == "/fail":
            self._send(500, b"boom")
        else:
            self._send(404)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _clear_seen():
    _Handler.seen.clear()


# --- the policy, no connection made ----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1/",  # short form of loopback
        "http://2130706433/",  # decimal form of 127.0.0.1
        "http://localhost:8080/",  # a name that resolves to loopback
        "http://[::1]/",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # shared address space
        "http://169.254.169.254/computeMetadata/v1/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://metadata/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",  # IPv4-mapped IPv6
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[2002:c0a8:101::1]/",  # 6to4 of 192.168.1.1
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
    ],
)
def test_non_global_addresses_are_refused(url):
    with pytest.raises(errors.UnsafeURL) as info:
        urlguard.check_url(url, **sections(STRICT, "urls", "cloud"), purpose="input image URL")
    assert info.value.message.startswith("input image URL: ")
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    "url, why",
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("//example.com/x", "scheme"),
        ("http:///nohost", "no host"),
        ("https://user:pw@8.8.8.8/", "credentials"),
        ("http://[::1/", "not a valid URL"),
        ("", "required"),
    ],
)
def test_malformed_urls_are_refused(url, why):
    with pytest.raises(errors.UnsafeURL, match=why):
        urlguard.check_url(url, **sections(STRICT, "urls", "cloud"), purpose="webhook URL")


def test_public_addresses_pass_and_cloud_mode_demands_https():
    urlguard.check_url("http://8.8.8.8/x.png", **sections(STRICT, "urls", "cloud"), purpose="t")
    urlguard.check_url("https://[2001:4860:4860::8888]/x.png", **sections(CLOUD, "urls", "cloud"), purpose="t")
    with pytest.raises(errors.UnsafeURL, match="scheme must be https"):
        urlguard.check_url("http://8.8.8.8/x.png", **sections(CLOUD, "urls", "cloud"), purpose="t")


def test_allowlist_by_host_by_cidr_and_by_wildcard(monkeypatch):
    urlguard.check_url(
        "http://127.0.0.1:9/", **sections(Settings(url_allowlist=("127.0.0.1",)), "urls", "cloud"), purpose="t"
    )
    urlguard.check_url(
        "http://127.0.0.5/", **sections(Settings(url_allowlist=("127.0.0.0/8",)), "urls", "cloud"), purpose="t"
    )
    urlguard.check_url(
        "http://[fd00::7]/", **sections(Settings(url_allowlist=("fd00::/8",)), "urls", "cloud"), purpose="t"
    )
    with pytest.raises(errors.UnsafeURL):
        urlguard.check_url(
            "http://10.0.0.1/", **sections(Settings(url_allowlist=("127.0.0.0/8",)), "urls", "cloud"), purpose="t"
        )
    _fake_dns(monkeypatch, {"cache.internal.test": "10.9.8.7"})
    urlguard.check_url(
        "http://cache.internal.test/",
        **sections(Settings(url_allowlist=("*.internal.test",)), "urls", "cloud"),
        purpose="t",
    )
    with pytest.raises(errors.UnsafeURL, match=r"cache.internal.test \(10.9.8.7\) is a private address"):
        urlguard.check_url("http://cache.internal.test/", **sections(STRICT, "urls", "cloud"), purpose="t")
    # The metadata server is refused by name even before DNS, unless allowlisted by name.
    with pytest.raises(errors.UnsafeURL, match="metadata server"):
        urlguard.check_url(
            "http://metadata.google.internal/",
            **sections(Settings(url_allowlist=("10.0.0.0/8",)), "urls", "cloud"),
            purpose="t",
        )


def test_a_name_with_any_private_answer_is_refused(monkeypatch):
    _fake_dns(monkeypatch, {"mixed.test": ["8.8.8.8", "192.168.0.10"]})
    with pytest.raises(errors.UnsafeURL, match="192.168.0.10"):
        urlguard.check_url("http://mixed.test/", **sections(STRICT, "urls", "cloud"), purpose="t")


def test_unresolvable_names_are_refused(monkeypatch):
    _fake_dns(monkeypatch, {})
    with pytest.raises(errors.UnsafeURL, match="cannot resolve"):
        urlguard.check_url("http://no-such-host.test/", **sections(STRICT, "urls", "cloud"), purpose="t")


# --- fetching over a real socket -------------------------------------------------------------


def test_loopback_server_needs_the_allowlist(server):
    with pytest.raises(errors.UnsafeURL, match="loopback"):
        urlguard.fetch_bytes(f"{server}/image.png", **sections(STRICT, "urls", "cloud"), max_bytes=1000)
    assert _Handler.seen == []  # refused before connecting
    assert (
        urlguard.fetch_bytes(f"{server}/image.png", **sections(LOCAL, "urls", "cloud"), max_bytes=1000)
        == b"\x89PNG fake image"
    )


def test_redirects_are_followed_and_each_hop_is_checked(server):
    assert urlguard.fetch_bytes(f"{server}/hop/4", **sections(LOCAL, "urls", "cloud"), max_bytes=1000).startswith(
        b"\x89PNG"
    )
    with pytest.raises(urlguard.FetchFailed, match="more than 5 redirects"):
        urlguard.fetch_bytes(f"{server}/hop/5", **sections(LOCAL, "urls", "cloud"), max_bytes=1000)
    with pytest.raises(errors.UnsafeURL, match="10.1.2.3"):
        urlguard.fetch_bytes(f"{server}/to-private", **sections(LOCAL, "urls", "cloud"), max_bytes=1000)
    with pytest.raises(errors.UnsafeURL, match="metadata server"):
        urlguard.fetch_bytes(f"{server}/to-metadata", **sections(LOCAL, "urls", "cloud"), max_bytes=1000)


def test_an_allowlisted_name_does_not_allow_other_names(server, monkeypatch):
    port = server.rsplit(":", 1)[1]
    _fake_dns(monkeypatch, {"images.test": "127.0.0.1"})
    settings = Settings(url_allowlist=("images.test",))
    # The first hop is allowed by name; its redirect to "localhost" (same address) is not.
    with pytest.raises(errors.UnsafeURL, match=r"localhost \(\S+\) is a loopback"):
        urlguard.fetch_bytes(
            f"http://images.test:{port}/to-localhost", **sections(settings, "urls", "cloud"), max_bytes=1000
        )
    assert [s["path"] for s in _Handler.seen] == ["/to-localhost"]


def test_size_cap_with_and_without_content_length(server):
    assert len(urlguard.fetch_bytes(f"{server}/big", **sections(LOCAL, "urls", "cloud"), max_bytes=5000)) == 5000
    with pytest.raises(errors.PayloadTooLarge):
        urlguard.fetch_bytes(f"{server}/big", **sections(LOCAL, "urls", "cloud"), max_bytes=4999)
    assert (
        len(urlguard.fetch_bytes(f"{server}/big-chunked", **sections(LOCAL, "urls", "cloud"), max_bytes=10240)) == 10240
    )
    with pytest.raises(errors.PayloadTooLarge):
        urlguard.fetch_bytes(f"{server}/big-chunked", **sections(LOCAL, "urls", "cloud"), max_bytes=10000)


def test_http_errors_and_timeouts_are_fetch_failures(server):
    with pytest.raises(urlguard.FetchFailed, match="HTTP 404"):
        urlguard.fetch_bytes(f"{server}/missing?token=secret", **sections(LOCAL, "urls", "cloud"), max_bytes=1000)
    quick = Settings(url_allowlist=("127.0.0.1",), url_fetch_timeout_s=0.5)
    with pytest.raises(urlguard.FetchFailed, match="timed out") as info:
        urlguard.fetch_bytes(f"{server}/slow?token=secret", **sections(quick, "urls", "cloud"), max_bytes=1000)
    assert "secret" not in info.value.message


def test_connection_goes_to_the_vetted_address_not_a_second_lookup(server, monkeypatch):
    port = server.rsplit(":", 1)[1]
    calls = _fake_dns(monkeypatch, {"images.test": "127.0.0.1"})
    settings = Settings(url_allowlist=("images.test",))
    data = urlguard.fetch_bytes(
        f"http://images.test:{port}/image.png", **sections(settings, "urls", "cloud"), max_bytes=1000
    )
    assert data.startswith(b"\x89PNG")
    assert _Handler.seen[-1]["headers"]["Host"] == f"images.test:{port}"
    assert calls == ["images.test"]  # resolved once; the socket dialled the vetted address


def test_post_json_sends_body_and_follows_only_body_keeping_redirects(server):
    body = json.dumps({"hello": "world"}).encode()
    resp = urlguard.post_json(f"{server}/hook", body, {"X-Test": "1"}, **sections(LOCAL, "urls", "cloud"), timeout=5)
    assert resp.status == 200 and resp.body == b'{"ok": true}'
    assert _Handler.seen[-1]["body"] == body
    assert _Handler.seen[-1]["headers"]["Content-Type"] == "application/json"
    assert _Handler.seen[-1]["headers"]["X-Test"] == "1"

    resp = urlguard.post_json(f"{server}/moved", body, {}, **sections(LOCAL, "urls", "cloud"), timeout=5)
    assert resp.status == 200 and resp.url.endswith("/hook") and len(resp.redirects) == 1
    assert [s["method"] for s in _Handler.seen[-2:]] == ["POST", "POST"]

    resp = urlguard.post_json(f"{server}/found", body, {}, **sections(LOCAL, "urls", "cloud"), timeout=5)
    assert resp.status == 302  # a 302 would turn the POST into a GET: reported, not followed

    with pytest.raises(errors.UnsafeURL):
        urlguard.post_json(f"{server}/hook", body, {}, **sections(STRICT, "urls", "cloud"), timeout=5)


def test_post_json_to_a_closed_port_raises_oserror():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        urlguard.post_json(f"http://127.0.0.1:{port}/hook", b"{}", {}, **sections(LOCAL, "urls", "cloud"), timeout=2)


# --- helpers ---------------------------------------------------------------------------------


def _fake_dns(monkeypatch, table: dict[str, str | list[str]]) -> list[str]:
    """Answer for made-up names; real resolution (of literals) for everything else."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            calls.append(host)
            answers = table[host]
            answers = [answers] if isinstance(answers, str) else answers
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers
            ]
        if host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls
