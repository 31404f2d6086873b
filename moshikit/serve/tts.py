"""Text-to-speech in ``moshikit serve``: moshi-server's ``/api/tts_streaming`` and OpenAI's
``POST /v1/audio/speech``, both on one loaded model shared by every connection.

The model is loaded as ``moshikit speak`` loads it (``tts.load_tts``: Kyutai TTS on torch or
MLX, Pocket TTS, ``synthetic`` for either) and runs on one worker thread (``tts_engines``):
Kyutai TTS on torch speaks ``batch`` requests at once in slots refilled as requests end, the
others one at a time from a bounded queue. A full server refuses: HTTP 429 with ``Retry-After``,
WebSocket an ``Error`` message and close code 1013.

Voices: a voice of the model (``speak --list-voices``), ``default`` (or none) for its default
voice; OpenAI's own voice names (``alloy``, ``nova``...) also mean the default voice, so
clients written for OpenAI work unchanged. Anything else is refused with the valid names; a
client never names a file of the server.

Speed (OpenAI's ``speed``, 0.25 to 4): Kyutai TTS speaks 0.5 to 2 times its pace (its own pace
control, no resampling: the voice keeps its pitch); Pocket TTS only at its own pace. Other
values are a 400 that says so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .app import Logs
from .. import clienttext
from ..errors import MoshikitError
from .tts_engines import Job, SerialEngine, SlotEngine

#: OpenAI's voice names: clients written for OpenAI send them; they mean the model's default voice.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")
MAX_INPUT = 4096  # characters of ``input`` (OpenAI's own bound)
MAX_STREAM_TEXT = 65536  # characters one /api/tts_streaming connection may send in all
MAX_BODY = 64 << 10
MAX_QUEUED_SECONDS = 120.0  # audio generated but not yet taken by a slow client before it is dropped


@dataclass
class Limits:
    max_input: int = MAX_INPUT
    max_stream_text: int = MAX_STREAM_TEXT
    max_body: int = MAX_BODY
    idle_timeout: float = 30.0  # a WebSocket that sends no text for this long, its text not all in, is closed
    max_queued_seconds: float = MAX_QUEUED_SECONDS


@dataclass
class TtsService(Logs):
    """A ``serve`` service (``kind = "tts"``) over a loaded TTS model and its worker."""

    model: object  # a backends.base.TTSBackend
    engine: object  # SlotEngine | SerialEngine
    name: str
    batch: int
    limits: Limits = field(default_factory=Limits)
    kind: str = "tts"
    ctx: object = None
    voice_names: tuple[str, ...] = ()
    voice_cache: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- Service protocol

    def models(self) -> list[dict]:
        info = self.model.describe()
        return [{"id": self.name, "kind": "tts", "backend": info.get("backend"), "device": info.get("device"),
                 "slots": self.batch, "free": self.engine.free(), "voices": ["default", *self.voice_names],
                 "word_timings": bool(self.model.word_timings)}]

    def routes(self) -> list:
        from starlette.routing import Route, WebSocketRoute

        return [Route("/v1/audio/speech", self.speech, methods=["POST"]),
                WebSocketRoute("/api/tts_streaming", self.streaming)]

    async def start(self, ctx) -> None:
        self.ctx = ctx
        if getattr(ctx, "cfg", None) is not None:
            self.limits.idle_timeout = float(getattr(ctx.cfg, "idle_timeout", self.limits.idle_timeout))
        self.engine.log = self.log
        self.engine.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.engine.stop)


    # ---------------------------------------------------------------- shared checks

    async def voice(self, name: str | None):
        """A client's voice name as the model's ``Voice``; MoshikitError naming valid ones."""
        from ..errors import UsageError

        key = None if name in (None, "", "default") or name in OPENAI_VOICES else name
        if key is not None and key not in self.voice_names:
            shown = ", ".join(["default", *self.voice_names[:6]]) + (" ..." if len(self.voice_names) > 6 else "")
            raise UsageError(f"unknown voice {clienttext.shown(name, 80)!r}: use one of {shown} "
                             "(GET /api/info lists them)")
        if key not in self.voice_cache:
            self.voice_cache[key] = await asyncio.to_thread(self.model.resolve_voice, key)
        return self.voice_cache[key]

    def pace(self, speed) -> float:
        """OpenAI's ``speed`` as this model's padding bonus; MoshikitError for what it cannot do."""
        from ..errors import UsageError

        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            raise UsageError("speed must be a number from 0.25 to 4.0")
        if speed == 1.0:
            return 0.0
        if self.model.backend == "pocket":
            raise UsageError(f"speed {speed:g}: Pocket TTS speaks only at its own pace (speed 1.0)")
        from ..tts.model import SPEED_RANGE, padding_bonus

        lo, hi = SPEED_RANGE
        if not lo <= speed <= hi:
            raise UsageError(f"speed {speed:g}: this model speaks from {lo:g} to {hi:g} times its own pace")
        return padding_bonus(float(speed))

    def check_text(self, text: str) -> None:
        self.model.check_text(text)

    # ---------------------------------------------------------------- POST /v1/audio/speech

    async def speech(self, request):
        from .speech_routes import speech

        return await speech(self, request)

    # ---------------------------------------------------------------- /api/tts_streaming

    async def streaming(self, websocket):
        from .tts_socket import streaming

        await streaming(self, websocket)

    def job(self, voice, loop: asyncio.AbstractEventLoop, *, padding_bonus: float = 0.0) -> tuple[Job, asyncio.Queue]:
        """A job whose events land in an asyncio queue of ``loop``. A client that leaves more than
        ``Limits.max_queued_seconds`` of audio untaken has its job stopped (an ``error`` event ends
        its queue): what a slow reader makes the server hold is bounded."""
        events: asyncio.Queue = asyncio.Queue()
        most = int(self.limits.max_queued_seconds * 12.5)  # 80 ms frames
        stopped = []

        def sink(event: tuple) -> None:
            if stopped:
                return
            if event[0] == "audio" and events.qsize() > most:  # a read from the worker thread: a bound, not a count
                stopped.append(True)
                job.cancel()
                event = ("error", "the client reads the audio too slowly")
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: the server is stopping
                pass

        job = Job(voice, sink, padding_bonus=padding_bonus)
        return job, events


def default_tts_batch(model) -> int:
    """Slots when ``--tts-batch`` is not given: ``speak``'s default for a directory of texts (32 on a
    GPU, fewer where its free memory holds fewer; 4 on a CPU)."""
    from ..tts.files import default_batch

    return default_batch(model)[0]


def load_tts_service(model: str | None = None, *, backend: str | None = None, device: str | None = None,
                     dtype: str | None = None, batch: int | None = None, voice: str | None = None,
                     revision: str | None = None, temp: float | None = None, queue: int | None = None,
                     limits: Limits | None = None) -> TtsService:
    """Load ``model`` as ``moshikit speak`` does and wrap it in a ``TtsService``. ``batch``: requests
    spoken at once (``--tts-batch``; one at a time on backends that cannot batch); ``voice``: the
    default voice (``default`` in requests); ``temp``: sampling temperature (the model's own by
    default; 0 is greedy); ``queue``: requests that may wait beyond the batch (default: ``batch``)."""
    from ..errors import UsageError
    from ..tts import load_tts
    from ..tts.engine import Settings
    from ..tts.model import DEFAULT_CFG
    from ..tts.slots import SlotBatch

    if batch is not None and batch < 1:
        raise UsageError("--tts-batch must be at least 1")
    m = load_tts(model, backend=backend, device=device, dtype=dtype, revision=revision)
    default_voice = m.resolve_voice(voice)
    names, _ = m.list_voices()
    temp = m.default_temp if temp is None else float(temp)
    if SlotBatch.supports(m):
        n = batch or default_tts_batch(m)
        engine = SlotEngine(m, n, default_voice, temp=temp, cfg=DEFAULT_CFG, queue=n if queue is None else queue)
    else:
        n = 1
        engine = SerialEngine(m, Settings(temp=temp, cfg=DEFAULT_CFG), queue=(batch or 4) if queue is None else queue)
    service = TtsService(m, engine, str(model or m.name), n, limits or Limits(), voice_names=tuple(names))
    service.voice_cache[None] = default_voice
    return service


def error_line(exc: BaseException) -> str:
    """A model or usage error as one line for a client (never a traceback)."""
    if isinstance(exc, MoshikitError):
        hint = getattr(exc, "hint", None)
        return f"{exc}" + (f" ({hint})" if hint else "")
    return f"internal error ({type(exc).__name__})"


__all__ = ["Limits", "TtsService", "default_tts_batch", "load_tts_service"]
