"""A Moshi chat server on any backend, speaking the protocol of moshi's own server.

The official web client, ``python -m moshi.client``, ``moshikit chat --url`` and anything
written against moshi's server talk to it unchanged: ``GET /api/chat`` upgrades to a
WebSocket, the server sends the handshake byte, then Ogg Opus audio (kind 1) flows
both ways and Moshi's text pieces come as kind 2 (see ``wire``).

One model serves ``batch`` sessions at once: each session owns one stream (a "slot")
of a batched ``Conversation``; all slots advance together, one 80 ms frame per step.
A session that joins restarts its slot only (``Conversation.reset_slots``). With
``batch=1`` (the default) a second client gets a clear refusal (an error message, kind
5, then close code 1013 "try again later") instead of waiting, as moshi's server does,
for the first to leave.

Robustness: every bound is explicit. Messages over ``max_message`` bytes close the
session (1009); audio that is not Ogg Opus, or a message that would decode to more
than ``wire.MAX_PACKETS_PER_MESSAGE`` Opus packets, closes it (1003/1009); a client
whose queued input exceeds ``max_input_seconds`` is no longer read until the model
catches up (TCP back-pressure); one that leaves more than ``max_output_seconds`` of
replies unread, or sends no audio for ``idle_timeout``, is dropped. In a batch, a
stream whose audio is late by more than ``late_seconds`` gets silence for that step,
so one slow client never holds the others back. The model runs on one worker thread,
so the network loop stays responsive while it computes.

Slot restarts: the LM's streams restart exactly (same tokens as a fresh stream); the
codec decoder of a restarted slot decodes stand-in codes while the LM's delay fills,
which perturbs its first ~0.4 s of output audio (on the synthetic checkpoint: 27% of
the peak in the first answered frame, under 3% in the next four, then float noise). Per-session sampling
parameters in the URL (``text_temperature``, ``text_topk``, ``audio_temperature``,
``audio_topk``, as Kyutai's web client sends them; see ``chatparams``) apply to that
session with ``batch=1``; a batch shares one sampling, so there they are ignored (logged).

The web page (``webpage``) is served at ``/`` unless ``static`` names another client; a
``token`` (``access``) guards the page and ``/api/chat``.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import wire
from .backends.base import SamplingControl
from .conversation import Conversation
from .errors import MoshikitError, UsageError

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
    token: str | None = None  # required on / and /api/chat when set (see access)


@dataclass
class _Session:
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


class _Drop(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ChatServer:
    """The aiohttp application around one batched ``Conversation``."""

    def __init__(self, conv: Conversation, config: ServeConfig | None = None, *,
                 log: Callable[[str], None] | None = None) -> None:
        self.conv = conv
        self.cfg = config or ServeConfig()
        self.batch = conv.batch_size
        self.slots: list[_Session | None] = [None] * self.batch
        self.stats: collections.Counter = collections.Counter()
        self._log = log or (lambda msg: None)
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Event | None = None
        self._engine: asyncio.Task | None = None
        # the server's own sampling; None: this LM's cannot change per session
        self.base_sampling = conv.lm.sampling if isinstance(conv.lm, SamplingControl) else None

    # ------------------------------------------------------------------ the application

    def app(self):
        from aiohttp import web

        # --- web page and access (moshikit.webpage, moshikit.access)
        from . import access, webpage

        middlewares = [access.middleware(self.cfg.token, self._log)] if self.cfg.token else []
        app = web.Application(client_max_size=self.cfg.max_message, middlewares=middlewares)
        app.router.add_get("/api/chat", self.handle_chat)
        app.router.add_get("/api/info", self._info)
        static = self.cfg.static
        if static and not (Path(static) / "index.html").is_file():
            raise UsageError(f"{static}: no index.html in this directory (--static wants a built web client)")
        webpage.add_routes(app, Path(static) if static else None)
        # --- end of web page and access
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _info(self, request):
        from aiohttp import web

        busy = sum(s is not None for s in self.slots)
        return web.Response(text=f"moshikit serve: a Moshi chat server. Connect a client to "
                                 f"/api/chat over WebSocket ({busy}/{self.batch} sessions in use).\n")

    async def _startup(self, _app) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="moshikit-model")
        self._wake = asyncio.Event()
        self._engine = asyncio.ensure_future(self._run_engine())

    async def _shutdown(self, _app) -> None:
        for s in list(self.slots):
            if s is not None:
                self._drop(s, 1001, "the server is shutting down")
        if self._engine is not None:
            self._engine.cancel()
            try:
                await self._engine
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await asyncio.sleep(0.1)  # let the handlers send their close frames
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ one session

    async def handle_chat(self, request):
        import sphn
        from aiohttp import web

        # --- per-session sampling (moshikit.chatparams)
        from . import access, chatparams

        peer = request.remote or "?"
        try:
            sampling = (chatparams.session_sampling(self.base_sampling, request.query)
                        if self.base_sampling is not None else None)
        except chatparams.BadParameter as exc:
            self._log(f"refused {peer}: {exc}")
            return await access.refuse_websocket(request, f"bad parameter: {exc}")
        if sampling is not None and self.batch > 1:
            self._log(f"{peer}: sampling parameters ignored (the {self.batch} sessions of a batch share one)")
            sampling = None
        # --- end of per-session sampling
        ws = web.WebSocketResponse(max_msg_size=self.cfg.max_message, heartbeat=self.cfg.heartbeat)
        await ws.prepare(request)
        slot = next((i for i, s in enumerate(self.slots) if s is None), None)
        if slot is None:
            self.stats["refused"] += 1
            self._log(f"refused {peer}: all {self.batch} session(s) in use")
            what = "another session is running" if self.batch == 1 else f"all {self.batch} sessions are in use"
            try:
                await asyncio.wait_for(ws.send_bytes(wire.error_message(f"busy: {what}, try again later")), 2.0)
                await asyncio.wait_for(ws.close(code=1013, message=b"busy"), 2.0)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass
            return ws
        out_limit = max(4, int(self.cfg.max_output_seconds * FRAMES_PER_SECOND * 2))
        sess = _Session(slot, ws, peer, sphn.OpusStreamReader(wire.SAMPLE_RATE),
                        sphn.OpusStreamWriter(wire.SAMPLE_RATE), asyncio.Queue(out_limit))
        sess.sampling = sampling
        self.slots[slot] = sess
        self.stats["sessions"] += 1
        self._log(f"session from {peer} on slot {slot}")
        reason = "client left"
        try:
            await ws.send_bytes(wire.message(wire.HANDSHAKE))
            sess.sender = asyncio.ensure_future(self._send_loop(sess))
            sess.reader = asyncio.ensure_future(self._recv_loop(sess))
            try:
                await sess.reader
            except asyncio.CancelledError:
                if sess.drop is None:  # the handler itself is cancelled
                    raise
                raise _Drop(*sess.drop) from None
        except _Drop as exc:
            reason = exc.reason
            self._release(sess)
            self.stats["dropped"] += 1
            # Closed here, where nothing else reads the socket, so close() can wait for
            # the peer's answer (closing under a pending read resets the connection).
            await self._close(sess, exc.code, exc.reason)
        except (ConnectionError, RuntimeError, asyncio.TimeoutError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
        finally:
            self._release(sess)
            secs = time.monotonic() - sess.started
            self._log(f"session from {peer} ended after {secs:.1f} s ({sess.frames_in} frames in, "
                      f"{sess.frames_out} out, {sess.late} late): {reason}")
        return ws

    async def _recv_loop(self, s: _Session) -> None:
        from aiohttp import WSMsgType

        guard = wire.OggGuard()
        max_in = max(1, int(self.cfg.max_input_seconds * FRAMES_PER_SECOND))
        async for msg in s.ws:
            if s.closed:
                return
            if msg.type == WSMsgType.ERROR:
                self.stats["errors"] += 1
                return
            if msg.type != WSMsgType.BINARY:
                raise _Drop(1003, "this protocol uses binary messages only")
            data = msg.data
            if not data:
                continue
            kind, payload = data[0], data[1:]
            if kind == wire.AUDIO:
                try:
                    if guard.packets(payload) > wire.MAX_PACKETS_PER_MESSAGE:
                        raise _Drop(1009, "too much audio in one message")
                    pcm = s.opus_in.append_bytes(payload)
                except ValueError as exc:
                    raise _Drop(1003, f"audio must be an Ogg Opus stream ({str(exc)[:80]})") from None
                self._queue_audio(s, np.asarray(pcm, np.float32).reshape(-1))
                while len(s.inbox) > max_in and not s.closed:
                    s.space.clear()
                    await s.space.wait()
            elif kind == wire.CONTROL and payload[:1] == bytes([wire.CONTROL_RESTART]):
                s.inbox.clear()
                s.pending = np.zeros(0, np.float32)
                s.fresh = True
            elif kind in (wire.HANDSHAKE, wire.TEXT, wire.CONTROL, wire.METADATA, wire.PING, wire.ERROR):
                continue  # what the web client may send; nothing to do with it
            else:
                raise _Drop(1003, f"unknown message kind {kind}")

    def _queue_audio(self, s: _Session, pcm: np.ndarray) -> None:
        if not pcm.size:
            return
        now = time.monotonic()
        s.last_input = now
        buf = np.concatenate([s.pending, pcm]) if s.pending.size else pcm
        n = buf.size // FRAME
        if n and not s.inbox:
            s.first_queued = now
        for i in range(n):
            s.inbox.append(buf[i * FRAME : (i + 1) * FRAME])
        s.pending = buf[n * FRAME :].copy()
        if n and self._wake is not None:
            self._wake.set()

    async def _send_loop(self, s: _Session) -> None:
        try:
            while True:
                msg = await s.outbox.get()
                await s.ws.send_bytes(msg)
        except (ConnectionError, RuntimeError):
            self._release(s)

    def _release(self, s: _Session) -> None:
        """Free the session's slot (at once: the next client may take it)."""
        s.closed = True
        s.space.set()
        if 0 <= s.slot < len(self.slots) and self.slots[s.slot] is s:
            self.slots[s.slot] = None
        if s.sender is not None and asyncio.current_task() is not s.sender:
            s.sender.cancel()

    def _drop(self, s: _Session, code: int, reason: str) -> None:
        """Free the session's slot now and have its handler close the socket with ``reason``."""
        self._release(s)
        if s.drop is None:
            s.drop = (code, reason)
            if s.reader is not None and not s.reader.done():
                s.reader.cancel()

    @staticmethod
    async def _close(s: _Session, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(s.ws.send_bytes(wire.error_message(reason)), 1.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        try:
            await asyncio.wait_for(s.ws.close(code=code, message=reason.encode()[:120]), 2.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass

    # ------------------------------------------------------------------ the model loop

    async def _run_engine(self) -> None:
        loop = asyncio.get_running_loop()
        waited_late = False
        while True:
            now = time.monotonic()
            for s in [s for s in self.slots if s is not None]:
                if now - s.last_input > self.cfg.idle_timeout:
                    self._drop(s, 1000, f"no audio for {self.cfg.idle_timeout:g} s")
            active = [s for s in self.slots if s is not None]
            ready = [s for s in active if s.inbox]
            # Wait for the streams that are on time; one already late is not waited for
            # again until it catches up, so a stalled client delays the others only once.
            waited = [s for s in active if not s.behind]
            if not ready or (any(not s.inbox for s in waited)
                             and now - min(s.first_queued for s in ready) < self.cfg.late_seconds):
                wait = min(1.0, self.cfg.idle_timeout / 4)
                if ready:
                    waited_late = True
                    wait = max(0.001, self.cfg.late_seconds - (now - min(s.first_queued for s in ready)))
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            if waited_late:  # this step waited for a stream that had no audio yet
                self.stats["late_waits"] += 1
                waited_late = False
            frames = np.zeros((self.batch, FRAME), np.float32)
            fresh = np.zeros(self.batch, bool)
            occupants = list(self.slots)
            for b, s in enumerate(occupants):
                if s is None:
                    continue
                fresh[b], s.fresh = s.fresh, False
                if s.inbox:
                    frames[b] = s.inbox.popleft()
                    s.frames_in += 1
                    self.stats["frames_in"] += 1
                    s.first_queued = s.last_input = time.monotonic()  # idle counts from an empty queue
                    s.space.set()
                    s.behind = False
                else:
                    s.behind = True
                    s.late += 1
                    self.stats["late_frames"] += 1
            try:
                own = occupants[0].sampling if self.batch == 1 and occupants[0] is not None else None
                frame = await loop.run_in_executor(self._executor, self._step, frames, fresh, own)
            except Exception as exc:  # noqa: BLE001 (a model failure ends the sessions, not the server)
                self._log(f"model step failed: {type(exc).__name__}: {exc}")
                for s in occupants:
                    if s is not None:
                        self._drop(s, 1011, "the model failed")
                continue
            self.stats["steps"] += 1
            for b, s in enumerate(occupants):
                if s is not None and self.slots[b] is s and not s.closed:
                    self._emit(s, frame, b)

    def _step(self, frames: np.ndarray, fresh: np.ndarray, sampling=None):
        if fresh.any():
            if self.batch == 1:
                if self.base_sampling is not None:
                    self.conv.lm.set_sampling(sampling or self.base_sampling)  # this session's, else the server's
                self.conv.reset()
            else:
                self.conv.reset_slots(fresh)
        return self.conv.step(frames)

    def _emit(self, s: _Session, frame, b: int) -> None:
        if frame.tokens is None or int(frame.tokens[b]) < 0:
            return  # the LM's delay is still filling for this stream
        msgs = []
        data = s.opus_out.append_pcm(np.ascontiguousarray(frame.pcm[b], dtype=np.float32))
        if data:
            msgs.append(wire.message(wire.AUDIO, data))
        if frame.text[b]:
            msgs.append(wire.text_message(frame.text[b]))
        s.frames_out += 1
        self.stats["frames_out"] += 1
        for m in msgs:
            try:
                s.outbox.put_nowait(m)
            except asyncio.QueueFull:
                self._drop(s, 1008, f"the client left more than {self.cfg.max_output_seconds:g} s of replies unread")
                return


# ---------------------------------------------------------------------- TLS


def tls_dir() -> Path:
    base = os.environ.get("MOSHIKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "moshikit")
    return Path(base) / "serve-tls"


def self_signed_certificate(directory: str | os.PathLike | None = None, *,
                            hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A self-signed certificate and key (``cert.pem``, ``key.pem``), made with ``openssl`` on
    first use and kept in ``directory`` (default: moshikit's cache) for later runs."""
    d = Path(directory) if directory is not None else tls_dir()
    cert, key = d / "cert.pem", d / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise MoshikitError("--ssl without --ssl-cert/--ssl-key makes a self-signed certificate with openssl, "
                            "which is not installed", hint="install openssl, or pass --ssl-cert and --ssl-key")
    names = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    for h in hosts:
        if h and h not in ("0.0.0.0", "::", "localhost", "127.0.0.1", "::1"):
            try:
                ipaddress.ip_address(h)
                names.append(f"IP:{h}")
            except ValueError:
                names.append(f"DNS:{h}")
    from .atomic import atomic_path

    with atomic_path(key) as tmp_key, atomic_path(cert) as tmp_cert:  # both appear whole, or neither
        cmd = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "825",
               "-keyout", str(tmp_key), "-out", str(tmp_cert), "-subj", "/CN=moshikit serve",
               "-addext", "subjectAltName=" + ",".join(names)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise MoshikitError("openssl could not make a certificate: "
                                f"{(res.stderr or '').strip().splitlines()[-1:]}")
        os.chmod(tmp_key, 0o600)
    return cert, key


def ssl_context(cert: str | os.PathLike, key: str | os.PathLike):
    import ssl

    for what, p in (("certificate", cert), ("key", key)):
        if not Path(p).is_file():
            raise UsageError(f"{p}: no such TLS {what} file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"{cert}: cannot use this certificate and key ({exc})") from None
    return ctx


# ---------------------------------------------------------------------- running


class RunningServer:
    """A server running on its own thread (tests, notebooks): ``url``, ``stop()``."""

    def __init__(self, server: ChatServer, *, ssl_ctx=None) -> None:
        self.server = server
        self.url = ""
        self._ssl = ssl_ctx
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="moshikit-serve", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        def ready(url: str) -> None:
            self.url = url
            self._started.set()

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve_async(self.server, ready, self._stop, ssl_ctx=self._ssl)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 (handed to the starting thread)
            self._error = exc
        finally:
            self._started.set()

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def serve_async(server: ChatServer, on_ready: Callable[[str], None], stop: asyncio.Event, *,
                      ssl_ctx=None) -> None:
    """Serve until ``stop`` is set; ``on_ready(url)`` once listening (with the real port)."""
    from aiohttp import web

    cfg = server.cfg
    runner = web.AppRunner(server.app(), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port, ssl_context=ssl_ctx)
        try:
            await site.start()
        except OSError as exc:
            raise MoshikitError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
                                hint="pick another --port, or stop what is using it") from None
        port = cfg.port
        for sock in getattr(site._server, "sockets", None) or ():  # the real port when 0 was asked
            port = sock.getsockname()[1]
            break
        host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        shown = "localhost" if cfg.host in ("127.0.0.1", "localhost") else host
        on_ready(f"{'wss' if ssl_ctx else 'ws'}://{shown}:{port}/api/chat")
        await stop.wait()
    finally:
        await runner.cleanup()


def serve_forever(server: ChatServer, on_ready: Callable[[str], None], *, ssl_ctx=None) -> None:
    """Serve in the foreground until Ctrl-C."""
    async def main() -> None:
        await serve_async(server, on_ready, asyncio.Event(), ssl_ctx=ssl_ctx)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------- loading


def check_moshi_config(config: dict | None, source: str) -> None:
    """A clear error for a checkpoint of another kind (a config.json of a speech-to-text model,
    or of no Kyutai model at all) before any weights are read."""
    from .errors import ModelError

    if config is None:  # the original Moshi 7B repos have no config.json
        return
    kind = config.get("model_type")
    if kind == "stt" or "stt_config" in config:
        raise ModelError(f"{source} is a speech-to-text checkpoint, not a Moshi dialogue model",
                         hint="use it with `moshikit transcribe --model`; chat with moshika, moshiko or synthetic")
    if kind not in (None, "moshi") and not {"dim", "n_q", "card"} <= config.keys():
        raise ModelError(f"{source}: its config.json is not a Moshi model's (model_type {kind!r})",
                         hint="point --model at a Moshi checkpoint: moshika, moshiko, a local copy or synthetic")


def load_conversation(model: str | None = None, *, backend: str | None = None, device: str | None = None,
                      sampling=None, batch: int = 1, dtype: str | None = None,
                      revision: str | None = None) -> Conversation:
    """Resolve a Moshi model (path, catalog name or repo id), load LM and codec, and wrap them
    in a ``Conversation`` of ``batch`` streams. Batches above 1 need the torch backends
    (they restart one stream of a batch)."""
    from . import platform
    from .errors import BackendError
    from .loading import load_lm_and_codec

    if batch < 1:
        raise UsageError("--batch must be at least 1")
    choice = platform.resolve("lm", backend, device)
    if batch > 1 and choice.backend != "torch":
        raise BackendError(f"--batch {batch} needs the torch backend (the {choice.backend} backend cannot "
                           "restart one session of a batch)", hint="use --backend torch, or --batch 1")
    # Hibiki (translation) is served like Moshi: the same duplex loop, conditioned on "very_good".
    from .catalog import FAMILIES, family_of
    from .hub import SYNTHETIC_HIBIKI

    family = FAMILIES.get(family_of(model) or "") if model else None
    kind = "hibiki" if model == SYNTHETIC_HIBIKI or (family is not None and family.kind == "hibiki") else "moshi"
    loaded = load_lm_and_codec(model, kind=kind, check_config=check_moshi_config, backend=backend,
                               device=device, dtype=dtype, sampling=sampling, revision=revision)
    return Conversation(loaded.codec, loaded.lm, loaded.tokenizer, batch_size=batch)
