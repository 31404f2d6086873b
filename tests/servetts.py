"""A TTS server on the tiny synthetic model for the serve TTS tests, and a client of moshi-server's
TTS protocol written from the protocol (msgpack over ``websockets``), not from moshikit's code."""

from __future__ import annotations

import contextlib
from urllib.parse import urlencode

import msgpack
import numpy as np


@contextlib.contextmanager
def tts_server(*, batch: int = 2, queue: int = 0, backend: str | None = None, dtype: str | None = None, **cfg):
    """(running server, its log lines) serving ``synthetic`` greedily (temp 0: runs can be compared)."""
    from moshikit.serve.app import ServerApp
    from moshikit.serve.running import RunningServer
    from moshikit.serve.session import ServeConfig
    from moshikit.serve.tts import load_tts_service

    service = load_tts_service("synthetic", backend=backend, dtype=dtype, batch=batch, temp=0.0, queue=queue)
    lines: list[str] = []
    app = ServerApp([service], ServeConfig(host="127.0.0.1", port=0, **cfg), log=lines.append)
    with RunningServer(app) as running:
        running.service = service
        yield running, lines


def ws_url(base: str, **params) -> str:
    return base.replace("http://", "ws://") + "/api/tts_streaming?" + urlencode(params)


def speak_stream(base: str, words, *, voice: str | None = None, fmt: str = "PcmMessagePack", eos: bool = True,
                 headers: dict | None = None, timeout: float = 120.0):
    """Send ``words`` one Text message each, then Eos; read until the server closes.
    Returns (messages: decoded maps, or raw bytes for the raw formats, close code)."""
    from websockets.sync.client import connect

    params = {"format": fmt}
    if voice is not None:
        params["voice"] = voice
    with connect(ws_url(base, **params), additional_headers=headers or {}, open_timeout=30,
                 close_timeout=10) as ws:
        for w in words:
            ws.send(msgpack.packb({"type": "Text", "text": w}))
        if eos:
            ws.send(msgpack.packb({"type": "Eos"}))
        ws.socket.settimeout(timeout)
        out = received(ws, fmt.endswith("MessagePack"))
    return out, ws.close_code


def received(ws, packed: bool = True) -> list:
    """Every message until the server closes (with any code)."""
    from websockets.exceptions import ConnectionClosed

    out = []
    try:
        for raw in ws:
            out.append(msgpack.unpackb(raw) if packed else raw)
    except ConnectionClosed:
        pass
    return out


def audio_of(messages) -> np.ndarray:
    pcm = [np.asarray(m["pcm"], np.float32) for m in messages if m.get("type") == "Audio"]
    return np.concatenate(pcm) if pcm else np.zeros(0, np.float32)


def words_of(messages) -> list[tuple[str, float, float]]:
    return [(m["text"], m["start_s"], m["stop_s"]) for m in messages if m.get("type") == "Text"]
