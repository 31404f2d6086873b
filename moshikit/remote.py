"""Chat with any Moshi server over its WebSocket protocol (see ``wire``).

``connect(url)`` returns a ``DuplexEngine`` (the interface the live chat loop drives):
it works against moshi's Python server (``python -m moshi.server``), Kyutai's Rust
``moshi-backend`` (wss, a versioned handshake after a metadata message) and
``moshikit serve``. ``chat_file`` streams a file to a server in real time and
records the reply: a smoke test for any Moshi server.

The connection runs on its own thread with its own asyncio loop, so ``send`` (called
from an audio callback) only appends to a buffer and never waits on the network.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import threading
import time
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from . import wire
from .errors import RemoteError

DEFAULT_PATH = "/api/chat"
#: Audio waiting to be sent beyond this is dropped, oldest first (a link slower than real time).
MAX_PENDING_SECONDS = 30.0
#: The largest message accepted from a server.
MAX_MESSAGE = 1 << 22
_INSECURE_HINT = "pass --insecure to accept a self-signed certificate (moshi-backend, moshikit serve --ssl)"


def normalize_url(url: str) -> str:
    """``ws(s)://`` URL of the chat endpoint: ``http(s)`` map to ``ws(s)``, a bare
    ``host:port`` means ``ws://``, and an empty path means ``/api/chat``."""
    raw = url.strip()
    if "://" not in raw:
        raw = "ws://" + raw
    parts = urlsplit(raw)
    scheme = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise RemoteError(f"{url}: not a ws://, wss://, http:// or https:// URL")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise RemoteError(f"{url}: not a valid port") from None
    if not host:
        raise RemoteError(f"{url}: no host in this URL")
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RemoteEngine:
    """One chat session with a Moshi server (a ``DuplexEngine``); see ``connect``."""

    def __init__(self, url: str, *, insecure: bool = False, timeout: float = 10.0) -> None:
        self.url = normalize_url(url)
        self.insecure = insecure
        self.timeout = timeout
        #: What the server said about itself: Rust metadata (JSON) and handshake versions.
        self.metadata: dict | None = None
        self.protocol_version: int | None = None
        self.model_version: int | None = None
        self.samples_sent = 0
        self.samples_received = 0
        self.dropped_samples = 0  # audio dropped because the link fell behind
        #: Reply delay: from sending the user's audio at a point of the conversation to receiving
        #: Moshi's audio for that same point (the network both ways, the server's queue and step,
        #: Opus buffering): what the client can measure of the server's speed.
        from .live import LatencyWindow

        self.reply_delay = LatencyWindow(10.0)
        self._sent_marks: collections.deque[tuple[int, float]] = collections.deque(maxlen=8192)
        self.error: RemoteError | None = None
        self._lock = threading.Lock()
        self._in: collections.deque[np.ndarray] = collections.deque()
        self._in_samples = 0
        self._out: collections.deque[tuple[np.ndarray, str]] = collections.deque()
        self._closing = False
        self._ended = threading.Event()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run, name="moshikit-remote", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            err = self.error
            self.close()
            raise err

    # ------------------------------------------------------------------ the DuplexEngine side

    def send(self, pcm: np.ndarray) -> None:
        """Queue float32 mono 24 kHz samples (any length) for the server; never waits on the network."""
        if self._ended.is_set() or self._closing:
            return
        x = np.asarray(pcm, dtype=np.float32).reshape(-1).copy()
        if not x.size:
            return
        limit = int(MAX_PENDING_SECONDS * wire.SAMPLE_RATE)
        with self._lock:
            self._in.append(x)
            self._in_samples += x.size
            while self._in_samples > limit and len(self._in) > 1:
                old = self._in.popleft()
                self._in_samples -= old.size
                self.dropped_samples += old.size
        try:
            self._loop.call_soon_threadsafe(self._wake_sender)
        except RuntimeError:  # the loop has stopped
            pass

    def receive(self) -> list[tuple[np.ndarray, str]]:
        """Everything received since the last call: (audio, "") and (empty audio, text piece) in
        arrival order. Raises ``RemoteError`` once the session has ended on the server's side
        (refused, closed, broken) and nothing is left to return."""
        with self._lock:
            items = list(self._out)
            self._out.clear()
        if not items and self.error is not None and not self._closing:
            raise self.error
        return items

    def close(self) -> None:
        """End the session (a clean WebSocket close, so the server frees its slot at once)."""
        if self._closing:
            return
        self._closing = True
        if self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._cancel)
            except RuntimeError:
                pass
            self._thread.join(timeout=5.0)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    @property
    def ended(self) -> bool:
        """True once the connection is gone (closed by either side, or failed)."""
        return self._ended.is_set()

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the network side

    def _wake_sender(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _fail(self, err: RemoteError) -> None:
        if self.error is None:
            self.error = err

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._task = self._loop.create_task(self._main())
            self._loop.run_until_complete(self._task)
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 (reported through self.error)
            pass
        finally:
            self._ended.set()
            self._ready.set()
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            except Exception:  # noqa: BLE001
                pass

    async def _main(self) -> None:
        import aiohttp

        self._wake = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:
                ws = await self._connect(session)
                try:
                    try:
                        await asyncio.wait_for(self._handshake(ws), self.timeout)
                    except asyncio.TimeoutError:
                        raise RemoteError(f"{self.url}: connected, but no handshake came within {self.timeout:g} s "
                                          "(the server may be busy with another session)") from None
                    self._ready.set()
                    sender = asyncio.ensure_future(self._send_loop(ws))
                    try:
                        await self._recv_loop(ws)
                    finally:
                        sender.cancel()
                        if not sender.cancelled() and sender.done() and sender.exception() is not None:
                            self._fail(RemoteError(f"{self.url}: sending failed: {_reason(sender.exception())}"))
                finally:
                    try:
                        await asyncio.wait_for(ws.close(), 2.0)
                    except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                        pass
        except RemoteError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            if not self._closing:
                self._fail(RemoteError(f"{self.url}: the session was cancelled"))
        except Exception as exc:  # noqa: BLE001 (anything else from the network is a remote failure)
            self._fail(RemoteError(f"{self.url}: {type(exc).__name__}: {_reason(exc)}"))

    async def _connect(self, session):
        import aiohttp

        parts = urlsplit(self.url)
        where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
        ssl = False if (self.insecure and parts.scheme == "wss") else True
        try:
            return await asyncio.wait_for(
                session.ws_connect(self.url, ssl=ssl, max_msg_size=MAX_MESSAGE, autoping=True),
                self.timeout)
        except asyncio.TimeoutError:
            raise RemoteError(f"{self.url}: no answer within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise RemoteError(f"{where}: its TLS certificate is not trusted ({_reason(exc.certificate_error)})",
                              hint=_INSECURE_HINT) from None
        except aiohttp.ClientSSLError as exc:
            raise RemoteError(f"{where}: TLS failed ({_reason(exc)})",
                              hint="use ws:// for a server without TLS, wss:// for one with it") from None
        except aiohttp.WSServerHandshakeError as exc:
            hint = "a Moshi server's chat endpoint is /api/chat"
            if exc.status == 404:
                raise RemoteError(f"{self.url}: no such endpoint (HTTP 404)", hint=hint) from None
            raise RemoteError(f"{self.url}: not a WebSocket endpoint (HTTP {exc.status}: {exc.message})",
                              hint=hint) from None
        except aiohttp.ClientConnectorError as exc:
            why = getattr(exc.os_error, "strerror", None) or _reason(exc)
            raise RemoteError(f"cannot reach {where}: {why}",
                              hint="is the server running, and is the URL's host and port right?") from None
        except aiohttp.ClientError as exc:
            raise RemoteError(f"{self.url}: not an answer a WebSocket server gives ({_reason(exc)})") from None

    async def _handshake(self, ws) -> None:
        import aiohttp

        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                extra = f" (code {ws.close_code}{': ' + msg.extra if msg.extra else ''})" if ws.close_code else ""
                raise RemoteError(f"{self.url}: the server closed the connection before the handshake{extra}")
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise RemoteError(f"{self.url}: connection failed: {_reason(ws.exception() or msg.data)}")
            if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                raise RemoteError(f"{self.url}: not a Moshi server (its first message is not a handshake)")
            kind, payload = msg.data[0], msg.data[1:]
            if kind == wire.HANDSHAKE:
                self.protocol_version, self.model_version = wire.parse_handshake(payload)
                return
            if kind == wire.METADATA:
                self._metadata(payload)
            elif kind == wire.ERROR:
                text = payload.decode("utf-8", "replace").strip() or "no reason given"
                raise RemoteError(f"{self.url}: the server refused the session: {text}")
            elif kind not in (wire.CONTROL, wire.PING):
                raise RemoteError(f"{self.url}: not a Moshi server (message kind {kind} before the handshake)")

    def _metadata(self, payload: bytes) -> None:
        try:
            data = json.loads(payload.decode("utf-8"))
        except ValueError:
            return
        if isinstance(data, dict):
            self.metadata = data

    async def _recv_loop(self, ws) -> None:
        import aiohttp
        import sphn

        reader = sphn.OpusStreamReader(wire.SAMPLE_RATE)
        empty = np.zeros(0, np.float32)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise RemoteError(f"{self.url}: connection failed: {_reason(ws.exception() or msg.data)}")
            if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                continue
            kind, payload = msg.data[0], msg.data[1:]
            if kind == wire.AUDIO:
                try:
                    pcm = reader.append_bytes(payload)
                except ValueError as exc:
                    raise RemoteError(f"{self.url}: the server sent audio that is not Ogg Opus ({_reason(exc)})") \
                        from None
                if pcm.size:
                    with self._lock:
                        self._out.append((np.asarray(pcm, np.float32), ""))
                        self.samples_received += pcm.size
                    self._mark_reply(self.samples_received)
            elif kind == wire.TEXT:
                text = payload.decode("utf-8", "replace")
                if text:
                    with self._lock:
                        self._out.append((empty, text))
            elif kind == wire.ERROR:
                text = payload.decode("utf-8", "replace").strip() or "no reason given"
                raise RemoteError(f"{self.url}: the server ended the session: {text}")
            elif kind == wire.METADATA:
                self._metadata(payload)
            # handshake, control, ping and unknown kinds carry nothing for us
        if not self._closing:
            code = f" (code {ws.close_code})" if ws.close_code not in (None, 1000) else ""
            raise RemoteError(f"{self.url}: the server closed the connection{code}")

    async def _send_loop(self, ws) -> None:
        enc = wire.OpusEncoder()
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                chunks = list(self._in)
                self._in.clear()
                self._in_samples = 0
            if not chunks:
                continue
            pcm = np.concatenate(chunks)
            data = enc.encode(pcm)
            if data:
                await ws.send_bytes(wire.message(wire.AUDIO, data))
            self.samples_sent += pcm.size
            self._sent_marks.append((self.samples_sent, time.monotonic()))

    def _mark_reply(self, received: int) -> None:
        """The reply delay of the audio received up to sample ``received``: the server answers
        each 80 ms frame with one frame, so it is Moshi's audio for the user's sample ``received``."""
        marks = self._sent_marks
        while marks and marks[0][0] < received:
            marks.popleft()
        if marks:
            self.reply_delay.add(time.monotonic() - marks[0][1])


def connect(url: str, *, insecure: bool = False, timeout: float = 10.0) -> RemoteEngine:
    """Open a chat session with the Moshi server at ``url`` and wait for its handshake.

    ``url``: ``ws://host:port/api/chat``, ``wss://...`` (TLS; ``insecure`` accepts a
    self-signed certificate), ``http(s)://`` or ``host:port`` (the path defaults to
    ``/api/chat``; query parameters are passed on, e.g. the Rust server's
    ``text_temperature``). Raises ``RemoteError`` with one line when the server cannot
    be reached, refuses the session (busy), or does not speak the protocol.
    """
    return RemoteEngine(url, insecure=insecure, timeout=timeout)


def chat_file(url: str, pcm: np.ndarray, *, insecure: bool = False, on_text: Callable[[str], None] | None = None,
              tail_seconds: float = 2.0, timeout: float = 10.0, quiet_seconds: float = 1.5,
              drain_seconds: float = 60.0) -> tuple[np.ndarray, list[dict]]:
    """Stream ``pcm`` (float32 mono 24 kHz) to a Moshi server in real time, then
    ``tail_seconds`` of silence, and record what comes back.

    Returns Moshi's audio on the input's timeline (``ceil`` of input plus tail, in 80 ms
    frames) and the transcript: ``{"time": seconds, "text": piece}`` per text piece.
    Alignment: a Moshi server answers every 80 ms input frame with one output frame,
    except the first few while its delay fills, so once every frame has been answered
    the reply's *end* lines up with the input's end; the Opus round trip's fixed delay
    (``wire.OPUS_DELAY`` samples) is taken out. A text piece is placed at the start of
    the audio frame received just before it (how the servers send them). ``on_text``
    receives each piece as it arrives. After the last frame, waits until the server
    has been quiet for ``quiet_seconds`` (at most ``drain_seconds``).
    """
    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    F = wire.FRAME
    frame_seconds = F / wire.SAMPLE_RATE
    n = math.ceil(pcm.size / F) + math.ceil(max(tail_seconds, 0.0) / frame_seconds)
    padded = np.zeros(n * F, np.float32)
    padded[: pcm.size] = pcm
    chunks: list[np.ndarray] = []
    texts: list[tuple[int, str]] = []
    received = 0

    engine = connect(url, insecure=insecure, timeout=timeout)

    def collect() -> None:
        nonlocal received
        for audio, text in engine.receive():
            if audio.size:
                chunks.append(audio)
                received += audio.size
            if text:
                texts.append((received, text))
                if on_text is not None:
                    on_text(text)

    try:
        t0 = time.monotonic()
        for i in range(n):
            wait = t0 + i * frame_seconds - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            engine.send(padded[i * F : (i + 1) * F])
            collect()
        last, start = time.monotonic(), time.monotonic()
        while time.monotonic() - start < drain_seconds:
            before = (received, len(texts))
            time.sleep(0.05)
            collect()
            now = time.monotonic()
            if (received, len(texts)) != before:
                last = now
            elif now - last >= quiet_seconds or (received >= n * F - 2 * F and now - last >= 0.3):
                break
    finally:
        engine.close()

    out = np.zeros(n * F, np.float32)
    got = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    start = n * F - got.size  # where the server's first output sample lands on the input's timeline
    body = got[wire.OPUS_DELAY:]
    lo = max(start, 0)
    hi = min(start + body.size, out.size)
    if hi > lo:
        out[lo:hi] = body[lo - start : hi - start]
    transcript = []
    for count, text in texts:
        frame = max(0, round((start + count - F) / F))
        transcript.append({"time": round(frame * frame_seconds, 3), "text": text})
    return out, transcript
