"""``serve --agent``: the agent (``moshikit.agent``: Kyutai STT -> an OpenAI-compatible chat model ->
Kyutai TTS) on ``/api/chat``, in Moshi's wire protocol, so the page, ``python -m moshi.client`` and
``moshikit chat --url`` talk to it unchanged.

Per session: the client's Ogg Opus is decoded to 80 ms frames that a worker thread feeds to
``OfflineAgent.run_frames`` (the frames' timeline is the client's audio); the agent's audio goes back
as Ogg Opus, paced at real time (one 80 ms frame each 80 ms, silence between replies, as Moshi's
server sends), so a barge-in drops what was not sent yet; the LLM's text goes back as text messages
(kind 2) as it streams. A client that asks for them (``?events=1``, as the page does) also gets
metadata messages (kind 4, JSON): ``{"user": piece}`` for the user's words as the STT hears them,
``{"turn": {...}}`` when a turn is over (what was said and heard, its latency parts) and
``{"error": line}`` for an LLM failure (the session goes on; the next turn retries).

One session at a time (the STT and TTS models are shared): a second client gets chat's refusal
(an error message, then close code 1013). The bounds are chat's: message size, Ogg packets per
message, queued input (back-pressure), unread output, idle input. The socket closing cancels the
reply in flight; the slot is free once the worker has stopped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import wire
from ..agent.llm import Cancelled
from ..clienttext import shown
from .app import Logs
from .http import CLOSE_BUSY, CLOSE_FAILED, gone, refuse_ws
from .session import FRAME, FRAMES_PER_SECOND, Drop, ServeConfig, client_messages

FRAME_SECONDS = FRAME / wire.SAMPLE_RATE


class TappedReply:
    """An LLM reply whose pieces are also handed to ``on_piece`` as they arrive; refused before it
    starts when its session has ended."""

    def __init__(self, reply, on_piece, ended: threading.Event) -> None:
        self.reply, self.on_piece, self.ended = reply, on_piece, ended

    def cancel(self) -> None:
        self.reply.cancel()

    def __iter__(self):
        if self.ended.is_set():
            raise Cancelled()
        for piece in self.reply:
            self.on_piece(piece)
            yield piece


class TappedClient:
    """A ``ChatClient`` for one session: its replies' text goes to the session as it streams, and the
    session ending cancels the reply in flight (and refuses the next)."""

    def __init__(self, client, on_piece) -> None:
        self.client, self.on_piece = client, on_piece
        self.ended = threading.Event()
        self.current: TappedReply | None = None

    def stream(self, messages: list[dict]) -> TappedReply:
        self.current = TappedReply(self.client.stream(messages), self.on_piece, self.ended)
        return self.current

    def end(self) -> None:
        self.ended.set()
        if self.current is not None:
            self.current.cancel()


@dataclass
class AgentSession:
    ws: object
    peer: str
    events: bool  # the client asked for metadata messages (the user's words, turns, errors)
    outbox: asyncio.Queue
    inbox: queue.Queue = field(default_factory=queue.Queue)  # 80 ms frames for the worker; None ends
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    play: collections.deque = field(default_factory=collections.deque)  # the agent's audio not yet sent
    closed: bool = False
    started: float = field(default_factory=time.monotonic)
    frames_in: int = 0
    turns: int = 0
    idle: bool = False
    client: TappedClient | None = None
    agent: object | None = None  # the session's OfflineAgent, once the worker made it
    tasks: list = field(default_factory=list)  # the sender and the pacer
    reader: asyncio.Task | None = None

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` samples of the agent's audio (silence where there are none)."""
        from ..audio import drain_into

        out = np.empty(n, np.float32)
        drain_into(self.play, out)
        return out


class AgentServer(Logs):
    """The agent as the ``chat`` service: ``AgentServer(stt, tts, voices, settings, client, options)``."""

    kind = "chat"

    def __init__(self, stt_model, tts, voices: list, settings, client, options=None, cfg: ServeConfig | None = None,
                 *, system: str | None = None, max_history_chars: int | None = None) -> None:
        self.stt, self.tts, self.voices, self.settings, self.client = stt_model, tts, voices, settings, client
        self.options, self.system, self.max_history_chars = options, system, max_history_chars
        self.cfg = cfg or ServeConfig()
        self.max_message = self.cfg.max_message
        self.session: AgentSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ the service

    def models(self) -> list[dict]:
        return [{"id": "agent", "route": "/api/chat", "protocol": "moshi", "mode": "agent", "llm": self.client.model,
                 "stt": self.stt.name, "tts": self.tts.name, "voice": getattr(self.voices[0], "name", None),
                 "slots": 1, "busy": int(self.session is not None)}]

    def routes(self) -> list:
        from starlette.routing import WebSocketRoute

        return [WebSocketRoute("/api/chat", self.handle_chat)]

    async def start(self, ctx) -> None:
        self.ctx = ctx
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="moshikit-agent")

    async def stop(self) -> None:
        s = self.session
        if s is not None and s.reader is not None:
            s.reader.cancel()  # its handler closes the socket, saying why
            await asyncio.sleep(0.1)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ one session

    async def handle_chat(self, ws):
        import sphn

        peer = ws.client.host if ws.client else "?"
        await ws.accept()
        if self.session is not None:
            self.count("refused")
            self.log(f"refused {peer}: the agent is talking with another client")
            return await refuse_ws(ws, CLOSE_BUSY, "busy", message=wire.error_message(
                "busy: another session is running, try again later"))
        out_limit = max(4, int(self.cfg.max_output_seconds * FRAMES_PER_SECOND * 4))
        s = AgentSession(ws, peer, ws.query_params.get("events") == "1", asyncio.Queue(out_limit))
        self.session = s
        self.count("sessions")
        self.log(f"agent session from {peer}")
        reason, code = "client left", None
        worker = None
        try:
            await ws.send_bytes(wire.message(wire.HANDSHAKE))
            s.tasks = [asyncio.ensure_future(self._send_loop(s)), asyncio.ensure_future(self._pace(s))]
            worker = asyncio.ensure_future(self._loop.run_in_executor(self._executor, self._work, s))
            reader = s.reader = asyncio.ensure_future(self._recv_loop(s, sphn.OpusStreamReader(wire.SAMPLE_RATE)))
            sender, pacer = s.tasks
            await asyncio.wait({reader, worker, sender, pacer}, return_when=asyncio.FIRST_COMPLETED)
            if reader.cancelled():  # stop()
                reason, code = "the server is shutting down", 1001
            elif reader.done():
                exc = reader.exception()
                if isinstance(exc, Drop):
                    reason, code = exc.reason, exc.code
                elif exc is not None and not gone(exc):
                    raise exc
            else:  # the worker ended first (idle input, a failure), or the client stopped reading or left
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
                if worker.done():
                    failure = worker.result()
                    reason, code = (failure, CLOSE_FAILED) if failure else \
                        (f"no audio for {self.cfg.idle_timeout:g} s" if s.idle else "input ended", 1000)
                elif pacer.done():
                    reason, code = f"the client left more than {self.cfg.max_output_seconds:g} s of replies unread", \
                        1008
                else:
                    reason = "connection lost"
        finally:
            self._end(s)
            for t in s.tasks:
                t.cancel()
            if code is not None:
                self.count("dropped")
                await refuse_ws(ws, code, reason, message=wire.error_message(reason))
            if worker is not None:
                failure = await worker  # the slot stays taken until the models are free
                if failure and code != CLOSE_FAILED:
                    reason = failure
            self.session = None
            secs = time.monotonic() - s.started
            self.log(f"agent session from {peer} ended after {secs:.1f} s ({s.frames_in} frames in, "
                     f"{s.turns} turns): {shown(reason)}")

    async def _recv_loop(self, s: AgentSession, opus_in) -> None:
        max_in = max(1, int(self.cfg.max_input_seconds * FRAMES_PER_SECOND))
        async for kind, data in client_messages(s.ws, self.cfg, opus_in, lambda: s.closed):
            if kind == "audio":
                self._queue_audio(s, data)
                while s.inbox.qsize() > max_in and not s.closed:  # back-pressure: stop reading for a while
                    await asyncio.sleep(0.02)

    @staticmethod
    def _queue_audio(s: AgentSession, pcm: np.ndarray) -> None:
        if not pcm.size:
            return
        buf = np.concatenate([s.pending, pcm]) if s.pending.size else pcm
        n = buf.size // FRAME
        for i in range(n):
            s.inbox.put(buf[i * FRAME:(i + 1) * FRAME].copy())
        s.frames_in += n
        s.pending = buf[n * FRAME:].copy()

    async def _send_loop(self, s: AgentSession) -> None:
        try:
            while True:
                await s.ws.send_bytes(await s.outbox.get())
        except Exception as exc:  # noqa: BLE001
            if not gone(exc):
                raise

    async def _pace(self, s: AgentSession) -> None:
        """The agent's audio at real time: one 80 ms frame every 80 ms (silence between replies)."""
        import sphn

        opus_out = sphn.OpusStreamWriter(wire.SAMPLE_RATE)
        t0, k = time.monotonic(), 0
        while not s.closed:
            k += 1
            wait = t0 + k * FRAME_SECONDS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -1.0:  # the loop stalled: go on from now rather than send a burst
                t0, k = time.monotonic(), 0
            data = opus_out.append_pcm(s.take(FRAME))
            if data and not self._send(s, wire.message(wire.AUDIO, data)):
                return

    def _send(self, s: AgentSession, msg: bytes) -> bool:
        """Queue ``msg`` for the client (on the event loop); False when it left too much unread."""
        if s.closed:
            return True
        try:
            s.outbox.put_nowait(msg)
        except asyncio.QueueFull:
            return False
        return True

    def _end(self, s: AgentSession) -> None:
        """The session is over: the worker's input ends and the reply in flight is cancelled."""
        if s.closed:
            return
        s.closed = True
        s.play.clear()
        while True:  # frames still queued are not worth the STT's time
            try:
                s.inbox.get_nowait()
            except queue.Empty:
                break
        s.inbox.put(None)
        if s.client is not None:
            s.client.end()
        responder = getattr(s.agent, "responder", None)
        if responder is not None:
            responder.cancel()

    # ------------------------------------------------------------------ the worker thread

    def _work(self, s: AgentSession) -> str | None:
        """Runs the agent over the session's frames; a failure as one line (None when none)."""
        from ..agent.offline import OfflineAgent

        loop = self._loop

        def call(fn, *args) -> None:
            if not s.closed:
                loop.call_soon_threadsafe(fn, *args)

        def send(msg: bytes) -> None:
            call(self._send, s, msg)

        def event(obj: dict) -> None:
            if s.events:
                send(wire.message(wire.METADATA, json.dumps(obj, ensure_ascii=False).encode()))

        def on_turn(turn) -> None:
            s.turns += 1
            self.count("agent_turns")
            event({"turn": {"index": turn.index, "user": turn.user, "agent": turn.heard, "status": turn.status,
                            "by": turn.by, "latency": turn.latency()}})

        def on_error(line: str) -> None:
            self.log(f"{s.peer}: llm: {shown(line, 300)} (the next turn tries again)")
            event({"error": line})

        s.client = TappedClient(self.client, lambda piece: send(wire.text_message(piece)))
        if s.closed:
            s.client.end()
        s.agent = OfflineAgent(self.stt, self.tts, self.voices, self.settings, s.client, self.options,
                               system=self.system, max_history_chars=self.max_history_chars, on_turn=on_turn,
                               on_error=on_error, on_text=lambda piece: event({"user": piece}),
                               on_audio=lambda at, block: call(s.play.append, np.asarray(block, np.float32)),
                               on_cut=lambda at: call(s.play.clear))

        def frames():
            while True:
                try:
                    block = s.inbox.get(timeout=self.cfg.idle_timeout)
                except queue.Empty:
                    s.idle = True
                    return
                if block is None:
                    return
                yield block

        try:
            s.agent.run_frames(frames(), f"client {s.peer}")
        except Exception as exc:  # noqa: BLE001 (a model failure ends the session, not the server)
            self.log(f"{s.peer}: the agent failed: {type(exc).__name__}: {shown(exc, 300)}")
            return "the agent failed"
        return None


def load_agent_service(llm_url: str, llm_model: str, cfg: ServeConfig | None = None, *, system: str | None = None,
                       voice: str | None = None, stt: str | None = None, tts: str | None = None,
                       device: str | None = None, seed: int | None = None, turn_threshold: float = 0.5,
                       turn_silence: float | None = None, history_chars: int | None = None,
                       llm_timeout: float = 30.0, api_key: str | None = None,
                       tts_backend: str | None = None) -> AgentServer:
    """The agent's models loaded (``stt``/``tts`` None: this machine's) behind ``AgentServer``."""
    from ..agent import models
    from ..agent.llm import ChatClient
    from ..agent.turns import TurnOptions, read_system
    from ..tts.engine import Settings

    prompt = read_system(system)
    client = ChatClient(llm_url, llm_model, timeout=llm_timeout, api_key=api_key)
    s, t = models.load(stt, tts, device, tts_backend)  # as `agent` chooses them (the `agent` row of `moshikit info`)
    return AgentServer(s, t, [t.resolve_voice(voice)], Settings(seed=seed, temp=t.default_temp), client,
                       TurnOptions(threshold=turn_threshold, silence=turn_silence), cfg, system=prompt,
                       max_history_chars=history_chars)
