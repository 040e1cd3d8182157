"""The listener's WebSocket frame reader, over a real socket pair, frames built by hand."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
import websocket

from handler.comfyui.wsframes import OPCODE_BINARY, OPCODE_CLOSE, OPCODE_TEXT, FrameError, FrameReader


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv: int = 0) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    flag = 0x80 if mask else 0
    if n < 126:
        head += bytes([flag | n])
    elif n < 1 << 16:
        head += bytes([flag | 126]) + struct.pack("!H", n)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", n)
    if mask:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """More than a socket buffer holds: sent while the reader reads."""
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    return sender


@pytest.fixture
def pair():
    ours, server = socket.socketpair()
    yield ours, server
    ours.close()
    server.close()


def test_messages_of_every_length_come_whole(pair):
    ours, server = pair
    big = os.urandom(200_000)  # 64-bit length, several reads
    middle = b"x" * 40_000  # 16-bit length
    sender = send_in_background(
        server, frame(OPCODE_TEXT, b'{"type":"status"}') + frame(OPCODE_BINARY, middle) + frame(OPCODE_BINARY, big)
    )
    reader = FrameReader(ours, pong=lambda _: None)
    assert reader.next() == (OPCODE_TEXT, b'{"type":"status"}')
    assert reader.next() == (OPCODE_BINARY, middle)
    assert reader.next() == (OPCODE_BINARY, big)
    sender.join()


def test_a_message_split_across_reads_byte_by_byte(pair):
    ours, server = pair
    data = frame(OPCODE_TEXT, b"hello, world" * 20)
    reader = FrameReader(ours, pong=lambda _: None)

    def dribble() -> None:
        for i in range(len(data)):
            server.send(data[i : i + 1])

    sender = threading.Thread(target=dribble)
    sender.start()
    assert reader.next() == (OPCODE_TEXT, b"hello, world" * 20)
    sender.join()


def test_fragments_are_joined_and_pings_between_them_answered(pair):
    ours, server = pair
    pongs: list[bytes] = []
    server.sendall(
        frame(OPCODE_TEXT, b"one ", fin=False)
        + frame(0x9, b"are you there")
        + frame(0x0, b"two ", fin=False)
        + frame(0x0, b"three")
        + frame(OPCODE_CLOSE, struct.pack("!H", 1000))
    )
    reader = FrameReader(ours, pong=pongs.append)
    assert reader.next() == (OPCODE_TEXT, b"one two three")
    assert pongs == [b"are you there"]
    assert reader.next() == (OPCODE_CLOSE, struct.pack("!H", 1000))


def test_a_masked_frame_is_unmasked(pair):
    ours, server = pair
    server.sendall(frame(OPCODE_TEXT, b'{"a": 1}', mask=b"\x01\x02\x03\x04"))
    assert FrameReader(ours, pong=lambda _: None).next() == (OPCODE_TEXT, b'{"a": 1}')


@pytest.mark.parametrize(
    "data",
    [
        frame(0x0, b"orphan"),  # continuation of nothing
        frame(OPCODE_TEXT, b"a", fin=False) + frame(OPCODE_TEXT, b"b"),  # new message inside one
        frame(0x3, b"?"),  # reserved opcode
        frame(OPCODE_TEXT, b"x", rsv=0x40),  # compression was never negotiated
        frame(0x9, b"p" * 126),  # control frames are short
    ],
)
def test_protocol_errors_raise(pair, data):
    ours, server = pair
    server.sendall(data)
    with pytest.raises(FrameError):
        FrameReader(ours, pong=lambda _: None).next()


def test_a_length_beyond_the_cap_is_refused_before_reading_it(pair):
    ours, server = pair
    server.sendall(bytes([0x82, 127]) + struct.pack("!Q", 1 << 40))
    with pytest.raises(FrameError, match="too large"):
        FrameReader(ours, pong=lambda _: None).next()
    server.sendall(frame(OPCODE_BINARY, b"a" * 600, fin=False) + frame(0x0, b"b" * 600))
    with pytest.raises(FrameError, match="too large"):
        FrameReader(ours, pong=lambda _: None, max_message=1000).next()


def test_a_closed_socket_ends_the_reader(pair):
    ours, server = pair
    server.sendall(frame(OPCODE_TEXT, b"last")[:3])  # half a frame, then the server goes
    server.close()
    reader = FrameReader(ours, pong=lambda _: None)
    with pytest.raises(ConnectionError):
        reader.next()


def test_reads_what_websocket_client_itself_sends(pair):
    """The library's own frame encoder (masked, as a client sends) as a second opinion."""
    ours, server = pair
    payload = os.urandom(70_000)
    sender = send_in_background(server, websocket.ABNF.create_frame(payload, websocket.ABNF.OPCODE_BINARY).format())
    assert FrameReader(ours, pong=lambda _: None).next() == (OPCODE_BINARY, payload)
    sender.join()
