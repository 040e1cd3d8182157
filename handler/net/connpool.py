"""HTTP connections dialled to a vetted address (urlguard decides which), kept alive for reuse.

A connection goes to the address urlguard vetted, never to whatever the name resolves to at
connect time (DNS rebinding); TLS still checks the certificate against the host name.

Webhook receivers are called again and again, so a connection whose answer was read to the end
(and that the server did not close) waits in a small pool keyed by scheme, host, port and the
vetted address, and serves the next call that was vetted to that same address: no TCP or TLS
handshake per delivery. A pooled connection the server closed meanwhile fails at once on reuse
(before any answer); the call then goes out once more on a fresh connection. Receivers already
deduplicate on `webhook-id`, and an input fetch is a GET.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IDLE_PER_KEY = 4  # idle connections kept per (scheme, host, port, address)
IDLE_TOTAL = 64  # in all: input URLs name many hosts, most never called again
IDLE_S = 15.0  # servers drop idle keep-alive connections after 5–60 s: reuse only fresher ones
# A reused connection the server had closed fails like this, before any answer.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True)
class Key:
    scheme: str
    host: str
    port: int
    address: str


def _dial(address: str, port: int, timeout: float | None) -> socket.socket:
    sock = socket.create_connection((address, port), timeout)
    # http.client sends the headers and the body apart; with Nagle on, a kept-alive connection
    # holds the body back until the receiver's delayed ACK (40 ms on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, key: Key, timeout: float):
        super().__init__(key.host, key.port, timeout=timeout)
        self.key = key

    def connect(self) -> None:
        self.sock = _dial(self.key.address, self.port, self.timeout)


class PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, key: Key, timeout: float):
        # Kept here too: the base class holds it as `_context`, which typeshed does not declare.
        self._tls = ssl.create_default_context()
        super().__init__(key.host, key.port, timeout=timeout, context=self._tls)
        self.key = key

    def connect(self) -> None:
        sock = _dial(self.key.address, self.port, self.timeout)
        # The certificate is checked against the host name, not the address we dialled.
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


Connection = PinnedHTTP | PinnedHTTPS


class Pool:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle: dict[Key, list[tuple[float, Connection]]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def take(self, key: Key, timeout: float) -> Connection | None:
        now = self._clock()
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                since, conn = idle.pop()
                if now - since < IDLE_S and conn.sock is not None:
                    conn.sock.settimeout(timeout)
                    return conn
                conn.close()
        return None

    def give(self, conn: Connection, response: http.client.HTTPResponse) -> None:
        """After the answer was read to its end: keep the connection unless it is done for."""
        if not response.isclosed():
            response.read()  # an empty body leaves the answer open; reading it ends it at once
        if response.will_close or not response.isclosed() or conn.sock is None:
            conn.close()
            return
        now = self._clock()
        with self._lock:
            closing = self._expire(now)
            idle = self._idle.setdefault(conn.key, [])
            kept = len(idle) < IDLE_PER_KEY and sum(map(len, self._idle.values())) < IDLE_TOTAL
            if kept:
                idle.append((now, conn))
        for old in closing:
            old.close()
        if not kept:
            conn.close()

    def _expire(self, now: float) -> list[Connection]:
        """Under the lock: take out every connection idle too long (its socket would stay open)."""
        closing: list[Connection] = []
        for key in list(self._idle):
            fresh = [(since, conn) for since, conn in self._idle[key] if now - since < IDLE_S]
            closing += [conn for since, conn in self._idle[key] if now - since >= IDLE_S]
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
        return closing


_POOL = Pool()


def send(
    scheme: str,
    host: str,
    port: int,
    addresses: tuple[IPAddress, ...],
    request: tuple[str, str, bytes | None, Mapping[str, str]],
    timeout: float,
    opened: list[Connection],
) -> tuple[Connection, http.client.HTTPResponse]:
    """Send `request` (method, path, body, headers) to the first address that answers; every
    connection used is added to `opened` (the caller's watchdog may cut it). Hand the
    connection back with `release` once the answer is read."""
    method, path, body, headers = request
    kind = PinnedHTTPS if scheme == "https" else PinnedHTTP
    last: OSError | None = None
    for ip in addresses:
        key = Key(scheme, host, port, str(ip))
        reused = _POOL.take(key, timeout)
        if reused is not None:
            opened.append(reused)
            try:
                reused.request(method, path, body=body, headers=dict(headers))
                return reused, reused.getresponse()
            except STALE:
                reused.close()  # closed by the server while idle: a fresh connection below
        conn = kind(key, timeout)
        opened.append(conn)
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            return conn, conn.getresponse()
        except OSError as exc:  # refused, unreachable, TLS failure, timeout: try the next address
            conn.close()
            last = exc
    assert last is not None
    raise last


def release(conn: Connection, response: http.client.HTTPResponse, *, complete: bool) -> None:
    """The caller is done with the answer; `complete`: it was read to its end."""
    if complete:
        _POOL.give(conn, response)
    else:
        conn.close()
