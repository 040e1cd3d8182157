"""Audio and video files without FFmpeg: a FLAC writer, a WAV reader and an MP4 (Motion-JPEG) writer.

The stand-in uses PyAV when it is installed, with the codecs ComfyUI uses (h264, aac, flac,
mp3, opus, vp9). Without it these small writers keep the model-free audio/video workflows working:
the files are valid FLAC and MP4 containers, only the video codec differs (JPEG frames, not h264).
"""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
from PIL import Image


# --- FLAC (16-bit, verbatim subframes) --------------------------------------------------------
def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


_CRC16_TABLE = []
for _i in range(256):
    _c = _i << 8
    for _ in range(8):
        _c = ((_c << 1) ^ 0x8005) & 0xFFFF if _c & 0x8000 else (_c << 1) & 0xFFFF
    _CRC16_TABLE.append(_c)


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16_TABLE[(crc >> 8) ^ byte]
    return crc


def _utf8_number(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | (n >> 6), 0x80 | (n & 0x3F)])
    if n < 0x10000:
        return bytes([0xE0 | (n >> 12), 0x80 | ((n >> 6) & 0x3F), 0x80 | (n & 0x3F)])
    return bytes([0xF0 | (n >> 18), 0x80 | ((n >> 12) & 0x3F), 0x80 | ((n >> 6) & 0x3F), 0x80 | (n & 0x3F)])


def write_flac(
    path_or_file, waveform: np.ndarray, sample_rate: int, metadata: dict[str, str] | None = None, block_size: int = 4096
) -> None:
    """waveform: [channels, samples] floats in [-1, 1]."""
    channels, total = waveform.shape
    pcm = np.clip(np.round(waveform * 32767.0), -32768, 32767).astype(">i2")
    streaminfo = bytearray()
    streaminfo += struct.pack(">HH", block_size, block_size)
    streaminfo += b"\x00\x00\x00\x00\x00\x00"  # frame sizes unknown
    packed = (sample_rate << 44) | ((channels - 1) << 41) | (15 << 36) | total
    streaminfo += packed.to_bytes(8, "big")
    streaminfo += b"\x00" * 16  # MD5 unknown
    vendor = b"ComfyUI stand-in"
    comments = [f"{k}={v}".encode() for k, v in (metadata or {}).items()]
    vorbis = struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(comments))
    for comment in comments:
        vorbis += struct.pack("<I", len(comment)) + comment
    out = bytearray(b"fLaC")
    out += bytes([0x00]) + len(streaminfo).to_bytes(3, "big") + streaminfo
    out += bytes([0x80 | 4]) + len(vorbis).to_bytes(3, "big") + vorbis
    for number, start in enumerate(range(0, max(total, 1), block_size)):
        block = pcm[:, start : start + block_size]
        size = block.shape[1]
        if size == 0:
            break
        header = bytearray([0xFF, 0xF8, (0b0111 << 4) | 0b0000, ((channels - 1) << 4) | (0b100 << 1)])
        header += _utf8_number(number) + struct.pack(">H", size - 1)
        header.append(_crc8(bytes(header)))
        frame = bytearray(header)
        for channel in range(channels):
            frame.append(0x02)  # VERBATIM subframe, no wasted bits
            frame += block[channel].tobytes()
        frame += struct.pack(">H", _crc16(bytes(frame)))
        out += frame
    if hasattr(path_or_file, "write"):
        path_or_file.write(bytes(out))
    else:
        with open(path_or_file, "wb") as f:
            f.write(bytes(out))


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """([channels, samples] float32, sample rate) from a PCM WAV file."""
    with wave.open(path, "rb") as w:
        channels, width, rate, count = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        raw = w.readframes(count)
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 2**15
    elif width == 3:
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        ints = (
            bytes3[:, 0].astype(np.int32) | (bytes3[:, 1].astype(np.int32) << 8) | (bytes3[:, 2].astype(np.int32) << 16)
        )
        ints = np.where(ints & 0x800000, ints - 0x1000000, ints)
        data = ints.astype(np.float32) / 2**23
    else:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2**31
    return data.reshape(-1, channels).T.copy(), rate


# --- MP4 with Motion-JPEG frames --------------------------------------------------------------
def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags) + payload)


_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def write_mp4_mjpeg(path: str, frames: np.ndarray, fps: float, quality: int = 90) -> None:
    """frames: [N, H, W, 3] floats in [0, 1]."""
    count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    jpegs = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(np.clip(frame[..., :3] * 255, 0, 255).astype(np.uint8)).save(
            buffer, format="JPEG", quality=quality
        )
        jpegs.append(buffer.getvalue())
    timescale = max(1, round(fps * 1000))
    delta = 1000
    media_duration = count * delta
    movie_duration = round(count / fps * 1000) if fps else 0

    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2mp41")
    mdat = _box(b"mdat", b"".join(jpegs))
    data_offset = len(ftyp) + 8

    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, movie_duration)
        + struct.pack(">IH", 0x00010000, 0x0100)
        + b"\x00" * 10
        + _MATRIX
        + b"\x00" * 24
        + struct.pack(">I", 2),
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        3,
        struct.pack(">IIIII", 0, 0, 1, 0, movie_duration)
        + b"\x00" * 8
        + struct.pack(">hhhH", 0, 0, 0, 0)
        + _MATRIX
        + struct.pack(">II", width << 16, height << 16),
    )
    mdhd = _full_box(
        b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, media_duration) + struct.pack(">HH", 0x55C4, 0)
    )
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I", 0) + b"vide" + b"\x00" * 12 + b"VideoHandler\x00")
    vmhd = _full_box(b"vmhd", 0, 1, struct.pack(">HHHH", 0, 0, 0, 0))
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1) + _full_box(b"url ", 0, 1, b"")))
    name = b"Photo - JPEG"
    entry = _box(
        b"jpeg",
        b"\x00" * 6
        + struct.pack(">H", 1)
        + b"\x00" * 16
        + struct.pack(">HH", width, height)
        + struct.pack(">II", 0x00480000, 0x00480000)
        + struct.pack(">I", 0)
        + struct.pack(">H", 1)
        + bytes([len(name)])
        + name.ljust(31, b"\x00")
        + struct.pack(">Hh", 0x18, -1),
    )
    stsd = _full_box(b"stsd", 0, 0, struct.pack(">I", 1) + entry)
    stts = _full_box(b"stts", 0, 0, struct.pack(">III", 1, count, delta))
    stsc = _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, count, 1))
    stsz = _full_box(b"stsz", 0, 0, struct.pack(">II", 0, count) + b"".join(struct.pack(">I", len(j)) for j in jpegs))
    stco = _full_box(b"stco", 0, 0, struct.pack(">II", 1, data_offset))
    stbl = _box(b"stbl", stsd + stts + stsc + stsz + stco)
    minf = _box(b"minf", vmhd + dinf + stbl)
    mdia = _box(b"mdia", mdhd + hdlr + minf)
    trak = _box(b"trak", tkhd + mdia)
    moov = _box(b"moov", mvhd + trak)
    with open(path, "wb") as f:
        f.write(ftyp + mdat + moov)
