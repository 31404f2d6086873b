"""The chat service: ``/api/chat`` (moshi's protocol), each session's receive and send loops, and
the engine that steps every slot of the batched conversation one 80 ms frame at a time."""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .. import access, wire
from ..backends.base import SamplingControl
from ..conversation import Conversation
from .http import CLOSE_BUSY, CLOSE_POLICY, gone, refuse_ws
from .session import Drop, FRAME, FRAMES_PER_SECOND, ServeConfig, Session, client_messages

class ChatServer:
    """The chat service around one batched ``Conversation`` (a ``Service`` of ``ServerApp``)."""

    kind = "chat"

    def __init__(self, conv: Conversation, config: ServeConfig | None = None, *,
                 log: Callable[[str], None] | None = None, model: str | None = None) -> None:
        self.conv = conv
        self.model = model or "moshi"
        self.cfg = config or ServeConfig()
        self.max_message = self.cfg.max_message
        self.batch = conv.batch_size
        self.slots: list[Session | None] = [None] * self.batch
        self.stats: collections.Counter = collections.Counter()
        #: where one plain-text line per event goes (never read as markup: it holds client text)
        self.log: Callable[[str], None] = log or (lambda msg: None)
        if self.cfg.token:
            access.check_token(self.cfg.token)
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Event | None = None
        self._engine: asyncio.Task | None = None
        # the server's own sampling; None: this LM's cannot change per session
        self.base_sampling = conv.lm.sampling if isinstance(conv.lm, SamplingControl) else None

    # ------------------------------------------------------------------ the service

    def models(self) -> list[dict]:
        busy = sum(s is not None for s in self.slots)
        return [{"id": self.model, "route": "/api/chat", "protocol": "moshi", "slots": self.batch, "busy": busy}]

    def routes(self) -> list:
        from starlette.routing import WebSocketRoute

        return [WebSocketRoute("/api/chat", self.handle_chat)]

    async def start(self, ctx) -> None:
        self.log, self.stats = ctx.log, ctx.stats  # the server's (the same when this is all it serves)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="moshikit-model")
        self._wake = asyncio.Event()
        self._engine = asyncio.ensure_future(self._run_engine())

    async def stop(self) -> None:
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

    async def handle_chat(self, ws):
        import sphn

        # --- per-session sampling (moshikit.chatparams)
        from .. import chatparams

        peer = ws.client.host if ws.client else "?"
        try:
            sampling = (chatparams.session_sampling(self.base_sampling, ws.query_params)
                        if self.base_sampling is not None else None)
        except chatparams.BadParameter as exc:
            self.stats["refused_parameter"] += 1
            self.log(f"refused {peer}: bad parameter: {exc}")
            reason = f"bad parameter: {exc}"
            return await refuse_ws(ws, CLOSE_POLICY, reason, message=wire.error_message(reason))
        if sampling is not None and self.batch > 1:
            self.log(f"{peer}: sampling parameters ignored (the {self.batch} sessions of a batch share one)")
            sampling = None
        # --- end of per-session sampling
        await ws.accept()
        slot = next((i for i, s in enumerate(self.slots) if s is None), None)
        if slot is None:
            self.stats["refused"] += 1
            self.log(f"refused {peer}: all {self.batch} session(s) in use")
            what = "another session is running" if self.batch == 1 else f"all {self.batch} sessions are in use"
            return await refuse_ws(ws, CLOSE_BUSY, "busy",
                                   message=wire.error_message(f"busy: {what}, try again later"))
        out_limit = max(4, int(self.cfg.max_output_seconds * FRAMES_PER_SECOND * 2))
        sess = Session(slot, ws, peer, sphn.OpusStreamReader(wire.SAMPLE_RATE),
                        sphn.OpusStreamWriter(wire.SAMPLE_RATE), asyncio.Queue(out_limit))
        sess.sampling = sampling
        self.slots[slot] = sess
        self.stats["sessions"] += 1
        self.log(f"session from {peer} on slot {slot}")
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
                raise Drop(*sess.drop) from None
        except Drop as exc:
            reason = exc.reason
            self._release(sess)
            self.stats["dropped"] += 1
            # Closed here, where nothing else reads the socket, so close() can wait for
            # the peer's answer (closing under a pending read resets the connection).
            await self._close(sess, exc.code, exc.reason)
        except Exception as exc:  # noqa: BLE001 (only a peer gone is expected; re-raised otherwise)
            if not gone(exc):
                raise
            reason = f"connection lost ({type(exc).__name__})"
        finally:
            self._release(sess)
            secs = time.monotonic() - sess.started
            self.log(f"session from {peer} ended after {secs:.1f} s ({sess.frames_in} frames in, "
                      f"{sess.frames_out} out, {sess.late} late): {reason}")

    async def _recv_loop(self, s: Session) -> None:
        max_in = max(1, int(self.cfg.max_input_seconds * FRAMES_PER_SECOND))
        async for kind, data in client_messages(s.ws, self.cfg, s.opus_in, lambda: s.closed):
            if kind == "audio":
                self._queue_audio(s, data)
                while len(s.inbox) > max_in and not s.closed:
                    s.space.clear()
                    await s.space.wait()
            elif data[:1] == bytes([wire.CONTROL_RESTART]):
                s.inbox.clear()
                s.pending = np.zeros(0, np.float32)
                s.fresh = True

    def _queue_audio(self, s: Session, pcm: np.ndarray) -> None:
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

    async def _send_loop(self, s: Session) -> None:
        try:
            while True:
                msg = await s.outbox.get()
                await s.ws.send_bytes(msg)
        except Exception as exc:  # noqa: BLE001
            if not gone(exc):
                raise
            self._release(s)

    def _release(self, s: Session) -> None:
        """Free the session's slot (at once: the next client may take it)."""
        s.closed = True
        s.space.set()
        if 0 <= s.slot < len(self.slots) and self.slots[s.slot] is s:
            self.slots[s.slot] = None
        if s.sender is not None and asyncio.current_task() is not s.sender:
            s.sender.cancel()

    def _drop(self, s: Session, code: int, reason: str) -> None:
        """Free the session's slot now and have its handler close the socket with ``reason``."""
        self._release(s)
        if s.drop is None:
            s.drop = (code, reason)
            if s.reader is not None and not s.reader.done():
                s.reader.cancel()

    @staticmethod
    async def _close(s: Session, code: int, reason: str) -> None:
        await refuse_ws(s.ws, code, reason, message=wire.error_message(reason))

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
                self.log(f"model step failed: {type(exc).__name__}: {exc}")
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

    def _emit(self, s: Session, frame, b: int) -> None:
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
