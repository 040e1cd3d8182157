"""Connections to vetted addresses are kept alive and reused, and a stale one is replaced."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from handler.config import Settings
from handler.net import urlguard
from tests.fixtures.sections import sections


class Counting:
    """A loopback HTTP/1.1 server counting connections and requests."""

    def __init__(self, idle_timeout_s: float | None = None, close: bool = False):
        self.connections = 0
        self.requests: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout_s  # the server drops a connection idle this long

            def setup(self) -> None:
                super().setup()
                outer.connections += 1

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                outer.requests.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                if close:
                    self.send_header("Connection", "close")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def settings() -> Settings:
    return Settings(url_allowlist=("127.0.0.1",))


def post(url: str, settings: Settings, n: int) -> int:
    return urlguard.post_json(
        url, f'{{"n": {n}}}'.encode(), {}, **sections(settings, "urls", "cloud"), timeout=10
    ).status


def test_calls_to_one_receiver_share_a_kept_alive_connection(settings):
    server = Counting()
    try:
        assert [post(server.url, settings, n) for n in range(5)] == [204] * 5
        assert server.connections == 1 and len(server.requests) == 5
    finally:
        server.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_call_goes_out_once(settings):
    server = Counting(idle_timeout_s=0.2)
    try:
        assert post(server.url, settings, 1) == 204
        time.sleep(0.6)  # the server has dropped the idle connection by now
        assert post(server.url, settings, 2) == 204
        assert server.requests == [b'{"n": 1}', b'{"n": 2}']
        assert server.connections == 2
    finally:
        server.close()


def test_a_server_that_says_close_gets_a_new_connection_each_time(settings):
    server = Counting(close=True)
    try:
        assert [post(server.url, settings, n) for n in range(3)] == [204] * 3
        assert server.connections == 3
    finally:
        server.close()


def test_a_connection_serves_only_calls_vetted_to_its_own_address(settings):
    # Same port, another host name: the name is part of the key even when the address matches.
    server = Counting()
    try:
        port = server.server.server_address[1]
        allowing = Settings(url_allowlist=("127.0.0.1", "localhost"))
        assert post(f"http://127.0.0.1:{port}/hook", allowing, 1) == 204
        assert post(f"http://localhost:{port}/hook", allowing, 2) == 204
        assert server.connections == 2
    finally:
        server.close()


def test_kept_connections_send_without_nagle(settings):
    # http.client writes headers and body apart: with Nagle on, a reused connection would hold the
    # body back until the receiver's delayed ACK (40 ms a call on Linux).
    import socket

    from handler.net import connpool

    server = Counting()
    try:
        assert post(server.url, settings, 1) == 204
        port = server.server.server_address[1]
        conn = connpool._POOL.take(connpool.Key("http", "127.0.0.1", port, "127.0.0.1"), timeout=5)
        assert conn is not None and conn.sock is not None
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()
    finally:
        server.close()


class _Conn:
    """Just what the pool looks at: a key, a socket, close()."""

    def __init__(self, n: int):
        from handler.net import connpool

        self.key = connpool.Key("http", f"host{n}.test", 80, f"10.0.0.{n % 250}")
        self.sock: object | None = object()

    def close(self) -> None:
        self.sock = None


class _Answered:
    will_close = False

    def isclosed(self) -> bool:
        return True


def test_the_pool_keeps_few_idle_connections_and_closes_stale_ones():
    from handler.net import connpool

    now = [100.0]
    pool = connpool.Pool(clock=lambda: now[0])
    conns = [_Conn(n) for n in range(connpool.IDLE_TOTAL + 10)]
    for conn in conns:  # one call each to many hosts, as input URLs are
        pool.give(conn, _Answered())  # type: ignore[arg-type]
    kept = [conn for conn in conns if conn.sock is not None]
    assert len(kept) == connpool.IDLE_TOTAL  # the rest were closed at once, not kept open
    now[0] += connpool.IDLE_S + 1
    pool.give(_Conn(999), _Answered())  # type: ignore[arg-type]
    assert all(conn.sock is None for conn in kept)  # idle too long: closed on the next hand-back
