"""The HTTP server: uvicorn serving the app on $PORT (`serve`, called by `python -m handler`).

Two things uvicorn does not do on its own, done here:

* SIGTERM sets `Runtime.stopping` first, then uvicorn's own handling runs (it stops accepting
  and drains): runs in flight see the flag, interrupt their prompt and answer 503 with
  Retry-After within Cloud Run's 10 s grace. uvicorn waits `SHUTDOWN_GRACE_S` for those answers.
* A request's line and headers must arrive within `HEADER_READ_TIMEOUT_S` of its first byte (or
  of the connection): a client trickling one byte a second is answered 408 and disconnected.
  uvicorn only times out idle keep-alive connections, and any byte resets that timer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from handler.app import create_app
from handler.config import Settings
from handler.runtime import Runtime

log = logging.getLogger("handler.server")

_TIMEOUT_BODY = (
    b'{"status":"error","error":{"code":"request_timeout","message":"the request headers took too long to arrive"}}'
)
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)
_TOO_LARGE_BODY = (
    b'{"status":"error","error":{"code":"headers_too_large","message":"the request line and headers are too large"}}'
)
_TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TOO_LARGE_BODY)).encode() + b"\r\n\r\n" + _TOO_LARGE_BODY
)


# How long a connection closed mid-request keeps draining what the client still sends.
LINGER_S = 2.0


class _LingeringTransport:
    """A transport whose `close()`, while the client is still sending its request, first sends
    our FIN and drops what still arrives, then closes a moment later. Closing with unread data
    makes the kernel send a reset, which can destroy the answer (a 408) before the client has
    read it."""

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, mid_request: Callable[[], bool]
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._mid_request = mid_request
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering:
            return
        if not self._mid_request() or self._transport.is_closing() or not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        try:
            self._transport.write_eof()  # after what is buffered: the answer goes first
            self._transport.resume_reading()
        except (OSError, RuntimeError):
            self._transport.close()
            return
        self._loop.call_later(LINGER_S, self._transport.close)


def header_timeout_protocol(timeout_s: float, max_header_bytes: int = 0) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on each request's line and headers, and a
    cap on their size (`max_header_bytes`, 0: none): past it, 431 and the connection closed,
    before httptools spends the event loop on the rest."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _awaiting_headers = True
        _mid_request = False  # bytes of a request have arrived, and not all of it
        _header_bytes = 0  # of the request whose headers are awaited

        def _arm(self) -> None:
            if self._header_timer is None and self._awaiting_headers and timeout_s > 0:
                self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_LingeringTransport(transport, self.loop, lambda: self._mid_request))  # type: ignore[arg-type]
            self._arm()  # a connection that never sends anything is held no longer either

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return  # answered and lingering: drop the rest
            self._mid_request = True
            self._arm()
            room = max_header_bytes - self._header_bytes
            if max_header_bytes and self._awaiting_headers and len(data) > room:
                # Fed in two parts: the headers may end within the room, the rest is body.
                super().data_received(data[:room])
                if self._still_awaiting_headers():  # a method: the call above changes the flag
                    self._headers_too_large()
                elif not self.transport.is_closing():
                    super().data_received(data[room:])
                return
            if self._awaiting_headers:
                self._header_bytes += len(data)
            super().data_received(data)

        def _still_awaiting_headers(self) -> bool:
            return self._awaiting_headers

        def _headers_too_large(self) -> None:
            self._disarm()
            log.info("closing a connection whose request headers passed %d bytes", max_header_bytes)
            if not self.transport.is_closing():
                self.transport.write(_TOO_LARGE_RESPONSE)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            # Whatever arrives next is a new request; its clock starts with its first byte
            # (until then, uvicorn's keep-alive timeout covers the idle connection).
            self._awaiting_headers = True
            self._mid_request = False
            self._header_bytes = 0
            super().on_message_complete()

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False  # answer the request in progress, then close
                return
            log.info("closing a connection whose request headers took over %.0f s", timeout_s)
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    return HeaderTimeoutProtocol


class Server(uvicorn.Server):
    """uvicorn's server, with the runtime told of SIGTERM/SIGINT before uvicorn drains."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.runtime.signal_stop()
        super().handle_exit(sig, frame)


def serve(settings: Settings, comfy_process: subprocess.Popen[bytes] | None = None) -> int:
    """Build the app and serve it until SIGTERM. `comfy_process`: ComfyUI already spawned
    (`supervisor.boot_early`); killed here if the app cannot be built."""
    try:
        app = create_app(settings, comfy_process=comfy_process)
    except ValueError as exc:
        if comfy_process is not None:
            comfy_process.kill()
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        http=header_timeout_protocol(settings.header_read_timeout_s, settings.max_header_bytes),
        # Answers in flight get this long after SIGTERM; runs see `stopping` and answer 503 at
        # once, so this only bounds slow writers. Cloud Run kills the process 10 s after SIGTERM.
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        # The request observer writes the access lines (with request id and trace), and uvicorn's
        # own loggers go through the root handler configured by `python -m handler`.
        access_log=False,
        log_config=None,
    )
    server = Server(config, app.state.runtime)
    server.run()
    return 0 if server.started else 3
