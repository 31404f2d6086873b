"""The Moshi chat wire protocol, shared by ``remote`` (the client) and ``serve`` (the server).

One WebSocket at ``/api/chat``; every message is binary, its first byte the kind:

* ``0x00`` handshake: the server's "ready". moshi's Python server sends the single
  byte; Kyutai's Rust ``moshi-backend`` adds two little-endian u32 (protocol and
  model version) and sends a metadata message *before* it.
* ``0x01`` audio: a piece of an Ogg Opus stream (24 kHz mono), in both directions.
* ``0x02`` text: a UTF-8 text piece of what Moshi says (spaces already in place).
* ``0x03`` control (one byte: start 0, end-turn 1, pause 2, restart 3),
  ``0x04`` metadata (JSON), ``0x05`` error (UTF-8), ``0x06`` ping: Rust server and
  web client only.

No heavy imports here: ``sphn`` is imported when an Opus stream is made.
"""

from __future__ import annotations

import struct

import numpy as np

HANDSHAKE, AUDIO, TEXT, CONTROL, METADATA, ERROR, PING = range(7)
KIND_NAMES = {HANDSHAKE: "handshake", AUDIO: "audio", TEXT: "text", CONTROL: "control",
              METADATA: "metadata", ERROR: "error", PING: "ping"}
CONTROL_START, CONTROL_END_TURN, CONTROL_PAUSE, CONTROL_RESTART = range(4)

SAMPLE_RATE = 24000
FRAME = 1920
#: Samples by which a sphn Opus round trip (encoder lookahead; the reader keeps it) delays audio.
OPUS_DELAY = 155
#: The most Opus packets one message may carry (each decodes to at most 120 ms).
MAX_PACKETS_PER_MESSAGE = 64


def message(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + payload


def text_message(text: str) -> bytes:
    return message(TEXT, text.encode("utf-8"))


def error_message(text: str) -> bytes:
    return message(ERROR, text.encode("utf-8"))


def parse_handshake(payload: bytes) -> tuple[int | None, int | None]:
    """(protocol version, model version) from a handshake's payload; None where absent (Python server)."""
    if len(payload) >= 8:
        return struct.unpack("<II", payload[:8])
    return None, None


class OpusEncoder:
    """Float32 mono 24 kHz samples of any length in, Ogg Opus bytes out (80 ms pages)."""

    def __init__(self) -> None:
        import sphn

        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self._pending = np.zeros(0, np.float32)

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        out = []
        n = buf.size // FRAME * FRAME
        for i in range(0, n, FRAME):
            out.append(self._writer.append_pcm(np.ascontiguousarray(buf[i : i + FRAME])))
        self._pending = buf[n:].copy()
        return b"".join(out)


class OggGuard:
    """Counts the Ogg pages and packets arriving in a stream, without decoding, so a
    server can refuse a message that would decode to more audio than any real client
    sends at once (a few bytes of Opus can expand to 120 ms of samples)."""

    def __init__(self, max_buffer: int = 1 << 17) -> None:
        self._buf = b""
        self._max = max_buffer

    def packets(self, data: bytes) -> int:
        """Packets completed by ``data``; raises ValueError on bytes that are not an Ogg stream."""
        buf = self._buf + data
        count, pos = 0, 0
        while True:
            if len(buf) - pos < 27:
                break
            if buf[pos : pos + 4] != b"OggS":
                raise ValueError("not an Ogg stream")
            nseg = buf[pos + 26]
            if len(buf) - pos < 27 + nseg:
                break
            lacing = buf[pos + 27 : pos + 27 + nseg]
            size = 27 + nseg + sum(lacing)
            if len(buf) - pos < size:
                break
            count += sum(1 for v in lacing if v < 255)
            pos += size
        self._buf = buf[pos:]
        if len(self._buf) > self._max:
            raise ValueError("an Ogg page larger than any Opus client sends")
        return count
