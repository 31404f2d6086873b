"""moshikit.remote against moshi's own server (started from a tiny synthetic checkpoint),
a fake Rust-style server (wss, versioned handshake after metadata) and broken servers."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

import numpy as np
import pytest

from moshikit import remote, wire
from moshikit.errors import RemoteError


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)  # written once per test session


@pytest.fixture(scope="module")
def official(repo, tmp_path_factory):
    from moshikit.testing.moshi_server import OfficialServer

    log = tmp_path_factory.mktemp("official") / "server.log"
    try:
        server = OfficialServer(repo, log=log)
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")
    yield server
    server.stop()


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("given, expected", [
    ("localhost:8998", "ws://localhost:8998/api/chat"),
    ("http://h:1", "ws://h:1/api/chat"),
    ("https://h/", "wss://h/api/chat"),
    ("wss://h:9/api/chat?text_temperature=0.5", "wss://h:9/api/chat?text_temperature=0.5"),
    ("ws://h:9/other", "ws://h:9/other"),
])
def test_normalize_url(given, expected):
    assert remote.normalize_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://h:1", "ws://", "ws://h:notaport"])
def test_bad_urls(bad):
    with pytest.raises(RemoteError):
        remote.normalize_url(bad)


# --------------------------------------------------------------------------- moshi's own server


def test_chat_file_with_official_server(official, speech):
    pieces = []
    out, transcript = remote.chat_file(official.url, speech[:24000 * 2], tail_seconds=0.5, on_text=pieces.append)
    frames = -(-48000 // 1920) + -(-12000 // 1920)
    assert out.shape == (frames * 1920,) and out.dtype == np.float32
    # the reply covers the timeline but its first frame (the LM's delay) and the Opus lookahead
    assert np.count_nonzero(out) > (frames - 3) * 1920
    assert transcript and [e["text"] for e in transcript] == pieces
    times = [e["time"] for e in transcript]
    assert times == sorted(times) and 0 <= times[0] and times[-1] < frames * 0.08
    assert all(abs(t / 0.08 - round(t / 0.08)) < 1e-6 for t in times)  # on the 80 ms frame grid


def test_connect_and_busy_official_server(official):
    engine = remote.connect(official.url)
    try:
        assert engine.protocol_version is None  # the Python server's handshake is one byte
        engine.send(np.zeros(1920 * 6, np.float32))
        got = []
        for _ in range(100):
            got += engine.receive()
            if sum(a.size for a, _ in got) >= 1920 * 3:
                break
            threading.Event().wait(0.05)
        assert sum(a.size for a, _ in got) >= 1920 * 3
        # moshi's server holds a second client without a handshake until the first leaves
        # (on a loaded machine its event loop, which also runs the model, may not even
        # answer the upgrade in time)
        with pytest.raises(RemoteError, match="no handshake came within|no answer within"):
            remote.connect(official.url, timeout=2.0)
    finally:
        engine.close()
    engine.receive()  # after our own close: leftovers at most, never an error
    again = remote.connect(official.url, timeout=20.0)  # the slot is free again
    again.close()


# --------------------------------------------------------------------------- broken servers


def test_unreachable():
    from moshikit.testing.moshi_server import free_port

    with pytest.raises(RemoteError, match="cannot reach 127.0.0.1"):
        remote.connect(f"ws://127.0.0.1:{free_port()}/api/chat", timeout=3)


def _raw_server(reply: bytes):
    """A TCP server that answers every connection with ``reply`` and closes it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def loop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            try:
                conn.recv(4096)
                conn.sendall(reply)
            finally:
                conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return sock


def test_garbage_and_plain_http_servers():
    garbage = _raw_server(bytes(range(256)) * 4)
    http = _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    try:
        with pytest.raises(RemoteError) as exc:
            remote.connect(f"ws://127.0.0.1:{garbage.getsockname()[1]}", timeout=3)
        assert "\n" not in str(exc.value)
        with pytest.raises(RemoteError, match="not a WebSocket endpoint"):
            remote.connect(f"ws://127.0.0.1:{http.getsockname()[1]}", timeout=3)
    finally:
        garbage.close()
        http.close()


# --------------------------------------------------------------------------- a Rust-style server


class _FakeRust:
    """What Kyutai's moshi-backend does on the wire: TLS, metadata (kind 4) first, then a
    handshake with two u32 version words; replies with Opus audio pages and text pieces."""

    def __init__(self, cert, key, *, refuse: bool = False) -> None:
        from moshikit.serve import ssl_context

        self.ctx = ssl_context(cert, key)
        self.refuse = refuse
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _handler(self, request):
        import sphn
        from aiohttp import web

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.refuse:
            await ws.send_bytes(wire.error_message("no slot available"))
            await ws.close()
            return ws
        meta = json.dumps({"instance_name": "fake", "text_topk": 25}).encode()
        await ws.send_bytes(wire.message(wire.METADATA, meta))
        await ws.send_bytes(wire.message(wire.HANDSHAKE, struct.pack("<II", 0, 7)))
        await ws.send_bytes(wire.message(wire.PING))
        reader, enc = sphn.OpusStreamReader(24000), wire.OpusEncoder()
        async for msg in ws:
            if msg.data[0] == wire.AUDIO:
                pcm = reader.append_bytes(msg.data[1:])
                data = enc.encode(pcm * 0.5)  # answer with the caller's audio, halved
                if data:
                    await ws.send_bytes(wire.message(wire.AUDIO, data))
                    await ws.send_bytes(wire.text_message(" ok"))
        return ws

    async def _main(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/api/chat", self._handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    from moshikit.serve import self_signed_certificate

    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_rust_style_server_over_wss(tls, speech):
    fake = _FakeRust(*tls)
    try:
        url = f"wss://127.0.0.1:{fake.port}/api/chat?text_temperature=0.7"
        with pytest.raises(RemoteError, match="certificate is not trusted") as exc:
            remote.connect(url, timeout=5)
        assert "--insecure" in exc.value.hint
        with remote.connect(url, insecure=True, timeout=5) as engine:
            assert (engine.protocol_version, engine.model_version) == (0, 7)
            assert engine.metadata == {"instance_name": "fake", "text_topk": 25}
        x = speech[:24000]
        out, transcript = remote.chat_file(url, x, insecure=True, tail_seconds=0.24)
        assert {e["text"] for e in transcript} == {" ok"}
        # The echo of what the server heard comes back on the input's timeline: what the
        # server hears lags the input by the Opus lookahead, so the correlation peaks there.
        lags = range(-400, 401, 5)
        score = [float(np.dot(x[2000:20000], out[2000 + k:20000 + k])) for k in lags]
        assert list(lags)[int(np.argmax(score))] == wire.OPUS_DELAY
    finally:
        fake.stop()


def test_refusal_is_one_clear_error(tls):
    fake = _FakeRust(*tls, refuse=True)
    try:
        with pytest.raises(RemoteError, match="refused the session: no slot available"):
            remote.connect(f"wss://127.0.0.1:{fake.port}", insecure=True, timeout=5)
    finally:
        fake.stop()
