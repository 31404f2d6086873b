"""What the server knows of one client: its configuration limits, its slot, queues and Opus state."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import numpy as np

from .. import wire


FRAME = wire.FRAME
FRAMES_PER_SECOND = wire.SAMPLE_RATE / FRAME


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8998  # moshi's default; 0 picks a free port
    ssl_cert: str | None = None
    ssl_key: str | None = None
    static: str | None = None  # a directory with a web client (index.html) to serve at /
    idle_timeout: float = 30.0
    max_message: int = 1 << 16
    max_input_seconds: float = 2.0
    max_output_seconds: float = 10.0
    late_seconds: float = 0.2
    heartbeat: float | None = 20.0  # WebSocket pings; a peer that stops answering is dropped
    token: str | None = None  # required on every path when set (see access)
    allow_origins: tuple[str, ...] = ()  # pages of other origins allowed to use the server (see origins)
    max_connections: int = 200  # open at once, in total (see serve.limits)
    max_connections_per_client: int = 32  # open at once from one client address
    header_timeout: float = 10.0  # seconds for a request's head (and a TLS handshake) to arrive


@dataclass
class Session:
    slot: int
    ws: object
    peer: str
    opus_in: object
    opus_out: object
    outbox: asyncio.Queue
    inbox: collections.deque = field(default_factory=collections.deque)
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    space: asyncio.Event = field(default_factory=asyncio.Event)
    fresh: bool = True
    closed: bool = False
    started: float = field(default_factory=time.monotonic)
    last_input: float = field(default_factory=time.monotonic)
    first_queued: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    late: int = 0
    behind: bool = False  # its last frame came late: not waited for until it catches up
    sender: asyncio.Task | None = None
    reader: asyncio.Task | None = None
    drop: tuple[int, str] | None = None
    sampling: object | None = None  # the session's own SamplingConfig (batch 1), None: the server's


class Drop(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def client_messages(ws, cfg: "ServeConfig", opus_in, closed):
    """What a client of ``/api/chat`` (moshi's protocol) sends, checked: ``("audio", pcm)`` for each
    audio message (float32 at 24 kHz, decoded from the client's Ogg Opus stream through ``opus_in``)
    and ``("control", payload)``; what clients may send and needs nothing is skipped; anything else,
    an oversized message or a broken Ogg stream ends the session (``Drop``). Ends when the client
    goes or ``closed()``."""
    from .http import CLOSE_BAD_DATA, CLOSE_TOO_BIG

    guard = wire.OggGuard()
    while True:
        msg = await ws.receive()
        if closed() or msg["type"] == "websocket.disconnect":
            return
        data = msg.get("bytes")
        if data is None:
            raise Drop(CLOSE_BAD_DATA, "this protocol uses binary messages only")
        if len(data) > cfg.max_message:
            raise Drop(CLOSE_TOO_BIG, f"a message over {cfg.max_message} bytes")
        if not data:
            continue
        kind, payload = data[0], data[1:]
        if kind == wire.AUDIO:
            try:
                if guard.packets(payload) > wire.MAX_PACKETS_PER_MESSAGE:
                    raise Drop(CLOSE_TOO_BIG, "too much audio in one message")
                pcm = opus_in.append_bytes(payload)
            except ValueError as exc:
                raise Drop(CLOSE_BAD_DATA, f"audio must be an Ogg Opus stream ({str(exc)[:80]})") from None
            yield "audio", np.asarray(pcm, np.float32).reshape(-1)
        elif kind == wire.CONTROL:
            yield "control", payload
        elif kind not in (wire.HANDSHAKE, wire.TEXT, wire.METADATA, wire.PING, wire.ERROR):
            raise Drop(CLOSE_BAD_DATA, f"unknown message kind {kind}")

