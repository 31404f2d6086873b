"""``serve --stt``: Kyutai speech-to-text for many clients at once, in the protocols they speak.

* ``/api/asr-streaming`` (WebSocket): moshi-server's streaming protocol (``asr_protocol``), as
  Kyutai's Rust server speaks it and its scripts (delayed-streams-modeling) use it.
* ``POST /v1/audio/transcriptions``: OpenAI's audio API (``openai_stt``).

Every stream and every request takes a slot of ONE batched model (``stt_engine.SttEngine``),
stepped on one worker thread; a slot is freed when its stream ends and the next one takes it.
A full server closes a WebSocket with 1013 (after moshi-server's ``Error`` message) and answers
HTTP requests 429 with ``Retry-After`` once its brief queue is full. Each stream's words are the
words it gets alone: a stream whose audio has not arrived is left out of the step, never fed
silence it did not send.

Bounds: a message's size (``asr_protocol``), audio waiting for the model per stream
(``max_buffered`` seconds: past it the stream is not read until the model catches up), an idle
timeout between messages (not counted while the model is behind), a bounded outgoing queue (a
client that stops reading is dropped); uploads by size and duration. Every refusal is one log line.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from .app import Logs
from ..clienttext import shown
from . import asr_protocol as proto
from .http import CLOSE_BUSY, CLOSE_FAILED, refuse_ws
from .stt_engine import Feed, ServerWords, SttEngine

ROUTE_WS = "/api/asr-streaming"
#: Audio a stream may have waiting for the model (11.5 MB at 120 s): past it the server stops
#: reading the stream's messages until the model catches up (TCP back-pressure on a client far
#: ahead of the model). moshi-server holds any amount; Kyutai's script sends its closing 40 s of
#: silence at full speed, and a client whose messages are not read for long enough stops
#: hearing pongs (websockets' keepalive: 20 s + 20 s), so the bound stays well above that.
MAX_BUFFERED_SECONDS = 120.0
#: Messages waiting to be sent to one client before it counts as not reading.
MAX_OUTBOX = 20_000
#: Streams that may wait for a slot beyond the batch (HTTP requests only; a WebSocket is refused).
QUEUE = 4


def _peer(conn) -> str:
    c = conn.client
    return shown(f"{c.host}:{c.port}" if c else "?")


class SttService(Logs):
    """One loaded STT model behind moshi-server's protocol and OpenAI's transcriptions route."""

    kind = "stt"
    #: The largest WebSocket message taken (the connection guard's bound): 10 s of audio.
    max_message = proto.MAX_MESSAGE_BYTES

    def __init__(self, model, name: str, batch: int, *, queue: int = QUEUE, idle_timeout: float | None = None,
                 max_buffered: float = MAX_BUFFERED_SECONDS, max_upload: int | None = None,
                 max_seconds: float | None = None, why_batch: str = "") -> None:
        from . import openai_stt

        self.model, self.name, self.why_batch = model, name, why_batch
        self.requested_batch, self.queue = batch, queue
        self.idle_timeout, self.max_buffered = idle_timeout, max_buffered
        self.engine: SttEngine | None = None
        self.ctx = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.openai = openai_stt.Transcriptions(self, max_upload=max_upload, max_seconds=max_seconds)

    # --- the Service protocol

    def models(self) -> list[dict]:
        info = self.model.describe()
        e = self.engine
        return [{"id": self.name, "kind": "stt", "object": "model", "owned_by": "kyutai",
                 "backend": info["lm_backend"], "device": info["device"], "precision": info["precision"],
                 "slots": e.batch if e else self.requested_batch, "free": e.free if e else self.requested_batch,
                 "routes": [ROUTE_WS, "/v1/audio/transcriptions"]}]

    def routes(self) -> list:
        from starlette.routing import Route, WebSocketRoute

        return [WebSocketRoute(ROUTE_WS, self.asr_streaming),
                Route("/v1/audio/transcriptions", self.openai.handle, methods=["POST"])]

    async def start(self, ctx) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        if self.idle_timeout is None:
            self.idle_timeout = float(getattr(ctx.cfg, "idle_timeout", 30.0) or 30.0)
        self.engine = SttEngine(self.model, self.requested_batch, queue=self.queue, log=self.log)
        self.engine.start()
        same = self.why_batch and self.engine.batch == self.requested_batch
        self.log(f"stt: {self.name}: {self.why_batch if same else f'{self.engine.batch} streams at once'}")

    async def stop(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)

    # --- helpers


    def post(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the server's loop (from the model's thread)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def prefix_frames(self) -> int:
        return self.model.prefix_frames

    def delay_frames(self) -> int:
        return self.model.delay_frames

    # --- /api/asr-streaming

    async def asr_streaming(self, ws) -> None:
        """One client of moshi-server's streaming protocol (see the module docstring)."""
        from starlette.websockets import WebSocketDisconnect

        peer = _peer(ws)
        engine = self.engine
        outbox: asyncio.Queue = asyncio.Queue()
        words = ServerWords(self.model.tokenizer, self.model.offset)
        markers: list[tuple[int, int]] = []  # (steps the stream must reach, marker id)
        state = {"dropped": None, "steps": 0}  # steps: what the messages delivered so far cover

        def sink(feed: Feed, tokens) -> None:  # the model's thread
            msgs = []
            for t in tokens:
                if t.prs is not None:
                    msgs.append(proto.step(t.step + 1, t.prs, feed.buffered_samples))
                msgs.extend(words.feed(t.step, t.token))
            self.post(deliver, msgs, feed.steps)

        def deliver(msgs: list, steps: int) -> None:  # the loop
            state["steps"] = steps = max(steps, state["steps"])
            for m in msgs:
                outbox.put_nowait(m)
            while markers and markers[0][0] <= steps:
                outbox.put_nowait(proto.marker(markers.pop(0)[1]))
            if outbox.qsize() > MAX_OUTBOX and state["dropped"] is None:
                state["dropped"] = (1008, "not reading the server's messages")
                outbox.put_nowait(None)

        def ended(feed: Feed) -> None:  # the model's thread
            if feed.error:
                self.post(fail, feed.error)

        def fail(message: str) -> None:
            if state["dropped"] is None:
                state["dropped"] = (1011, "the model failed")
                outbox.put_nowait(proto.error(message))
                outbox.put_nowait(None)

        # The feed's own bound is a safety net: reading pauses at ``max_buffered`` (below), so
        # one more message of the largest size always fits.
        feed = Feed(chunk=1, sink=sink, on_end=ended,
                    max_buffered=self.max_buffered + proto.MAX_AUDIO_SAMPLES / 24000 + 1)
        if engine is None or engine.failed:
            self.log(f"stt: {peer} refused: the model has failed")
            await refuse_ws(ws, CLOSE_FAILED, "the model has failed",
                            message=proto.pack(proto.error(engine.failed if engine else "the model is not running")))
            return
        if not engine.submit(feed):
            self.log(f"stt: {peer} refused: every stream slot is taken ({engine.batch if engine else 0})")
            self.count("stt_refused_busy")
            await refuse_ws(ws, CLOSE_BUSY, "busy: every stream slot is taken",
                            message=proto.pack(proto.error("no free channels")))
            return
        await ws.accept()
        self.count("stt_streams")
        started = time.monotonic()
        feed.push_frames(self.prefix_frames())
        outbox.put_nowait(proto.ready())
        sender = asyncio.create_task(self._send(ws, outbox))
        close: tuple[int, str] | None = None
        audio_seconds = 0.0
        try:
            while state["dropped"] is None and not sender.done():
                if feed.buffered_samples > self.max_buffered * 24000:
                    await asyncio.sleep(0.02)  # not read until the model catches up
                    continue
                try:
                    msg = await asyncio.wait_for(ws.receive(), timeout=self.idle_timeout)
                except asyncio.TimeoutError:
                    if feed.waiting():  # the model is behind on this stream's audio: not idle
                        continue
                    self.log(f"stt: {peer} idle for {self.idle_timeout:.0f} s: closed")
                    close = (1000, "idle timeout")
                    break
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes")
                if data is None:  # moshi-server skips text frames
                    continue
                try:
                    m = proto.unpack(data)
                except proto.ProtocolError as exc:
                    self.log(f"stt: {peer} sent a bad message: {exc}")
                    self.count("stt_bad_message")
                    outbox.put_nowait(proto.error(str(exc)))
                    close = (exc.code, "bad message")
                    break
                if m["type"] == "Audio":
                    if not feed.push(m["pcm"]):
                        self.log(f"stt: {peer} sent audio more than {self.max_buffered:.0f} s ahead of the model: "
                                 f"closed")
                        outbox.put_nowait(proto.error(f"too much audio waiting (more than {self.max_buffered:.0f} "
                                                      f"s ahead of the model)"))
                        close = (1008, "too much audio waiting")
                        break
                    audio_seconds += m["pcm"].size / 24000
                elif m["type"] == "Marker":
                    # Echoed once the model has stepped every whole frame before it, and its delay.
                    markers.append((feed.frames_in + self.delay_frames(), m["id"]))
                    deliver([], state["steps"])
                else:  # Init: the stream was reset when it took its slot
                    outbox.put_nowait(proto.ready())
        except WebSocketDisconnect:
            pass
        finally:
            feed.cancel()
            if state["dropped"] is not None and close is None:
                close = state["dropped"]
                if close[0] == 1008:
                    self.log(f"stt: {peer} does not read its messages: closed")
            outbox.put_nowait(None)
            try:
                await asyncio.wait_for(sender, timeout=5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the client is gone
                sender.cancel()
            if close is not None:
                try:
                    await ws.close(close[0], close[1])
                except Exception:  # noqa: BLE001 - already closed by the client
                    pass
            self.log(f"stt: {peer} stream ended after {time.monotonic() - started:.1f} s "
                     f"({audio_seconds:.1f} s of audio, {feed.steps} steps)")

    @staticmethod
    async def _send(ws, outbox: asyncio.Queue) -> None:
        while True:
            m = await outbox.get()
            if m is None:
                return
            await ws.send_bytes(proto.pack(m))


def batch_for(model, batch: int | None) -> tuple[int, str]:
    """(streams at once, why): ``--stt-batch`` or, without it, ``transcribe``'s default for the
    model's device (``stt.default_batch``: sized from a GPU's free memory, 4 on a CPU)."""
    from ..stt import default_batch

    if batch is not None:
        if batch < 1:
            raise ValueError("--stt-batch must be at least 1")
        return int(batch), f"{batch} streams at once (--stt-batch)"
    return default_batch(model)


def load_stt_service(model: str | None, *, backend: str | None = None, device: str | None = None,
                     dtype: str | None = None, batch: int | None = None, revision: str | None = None,
                     queue: int = QUEUE, max_upload: int | None = None, max_seconds: float | None = None,
                     idle_timeout: float | None = None, on_load: Callable[[str], None] | None = None) -> SttService:
    """Load an STT model through ``transcribe``'s path (``stt.load_stt``: a catalog name such as
    ``stt``/``stt-en``, a repo id, a path or ``synthetic``) and wrap it in the service."""
    from ..stt import load_stt

    m = load_stt(model, backend=backend, device=device, dtype=dtype, revision=revision)
    n, why = batch_for(m, batch)
    name = model or m.name or "stt"
    if on_load is not None:
        info = m.describe()
        on_load(f"stt: {name} on {info['lm_backend']}/{info['device']} ({info['precision']}), {n} streams at once")
    return SttService(m, name, n, queue=queue, max_upload=max_upload, max_seconds=max_seconds,
                      idle_timeout=idle_timeout, why_batch=why)


__all__ = ["ROUTE_WS", "SttService", "batch_for", "load_stt_service"]
