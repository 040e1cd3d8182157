"""Reads a WebSocket server's messages from the socket in large chunks (RFC 6455, client side).

websocket-client does the handshake and every send; its reader asks the socket for each
frame's header and payload separately, two or three system calls and a dozen Python objects per
message. ComfyUI sends about sixteen messages per prompt, so the listener reads here instead:
one `recv` brings whatever has arrived, and whole messages are cut out of the buffer.

`next()` returns a whole message: (OPCODE_TEXT or OPCODE_BINARY, payload) with fragments joined,
or (OPCODE_CLOSE, payload). Pings are answered through `pong` (the library's locked sender).
A closed socket raises ConnectionError; a frame that breaks the protocol raises FrameError.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

CHUNK = 65536
# No ComfyUI message comes near this (previews are a few MB); a larger length is garbage.
MAX_MESSAGE = 256 * 1024 * 1024


class FrameError(Exception):
    """The server broke the WebSocket protocol."""


class FrameReader:
    def __init__(self, sock: socket.socket, pong: Callable[[bytes], object], max_message: int = MAX_MESSAGE):
        self.sock = sock
        self.pong = pong
        self.max_message = max_message
        self._buf = bytearray()
        self._pos = 0  # start of the unread bytes in _buf

    def next(self) -> tuple[int, bytes]:
        opcode: int | None = None
        parts: list[bytes] = []
        size = 0
        while True:
            fin, frame_opcode, payload = self._frame()
            if frame_opcode >= OPCODE_CLOSE:  # control frames may come between fragments
                if frame_opcode == OPCODE_PING:
                    self.pong(payload)
                elif frame_opcode == OPCODE_CLOSE:
                    return OPCODE_CLOSE, payload
                continue
            if frame_opcode == OPCODE_CONTINUATION:
                if opcode is None:
                    raise FrameError("a continuation frame without a message to continue")
            elif opcode is not None:
                raise FrameError("a new message before the last one ended")
            elif frame_opcode in (OPCODE_TEXT, OPCODE_BINARY):
                opcode = frame_opcode
            else:
                raise FrameError(f"unknown opcode {frame_opcode:#x}")
            size += len(payload)
            if size > self.max_message:
                raise FrameError("message too large")
            if fin and not parts:
                return opcode, payload
            parts.append(payload)
            if fin:
                return opcode, b"".join(parts)

    def _frame(self) -> tuple[bool, int, bytes]:
        head = self._take(2)
        first, second = head[0], head[1]
        if first & 0x70:
            raise FrameError("reserved bits set (no extension was negotiated)")
        opcode = first & 0x0F
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        if opcode >= OPCODE_CLOSE and length > 125:
            raise FrameError("a control frame longer than 125 bytes")
        if length > self.max_message:
            raise FrameError("message too large")
        key = self._take(4) if second & 0x80 else b""
        payload = self._take(length)
        if key:  # servers must not mask, but unmasking costs nothing to get right
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return bool(first & 0x80), opcode, payload

    def _take(self, n: int) -> bytes:
        """The next n bytes, reading from the socket as needed."""
        while len(self._buf) - self._pos < n:
            if self._pos:
                del self._buf[: self._pos]  # keep only what is unread before growing
                self._pos = 0
            chunk = self.sock.recv(max(CHUNK, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buf += chunk
        start = self._pos
        self._pos += n
        with memoryview(self._buf) as view:  # one copy, and the view is gone before the buffer changes
            return bytes(view[start : self._pos])
