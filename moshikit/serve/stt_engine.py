"""One batched speech-to-text model shared by every stream of a server (``serve --stt``).

``SttEngine`` owns the model and runs it on one worker thread. Each stream (a WebSocket
connection, an uploaded file) takes a slot of the batch; a finished stream's slot is restarted
(the LM's per-slot reset, a fresh codec encoder) and the next stream takes it.

Streams arrive at their own pace, so a step runs only the slots whose next frame is there: the
LM steps those rows under a mask (``MaskedStepLM``) and the others wait, unchanged, for their
audio. No stream is ever fed audio it did not send, so each stream's words are the words it gets
alone. Each slot encodes its audio with an encoder of its own (``OwnStateEncoders``): a slot's codes
do not depend on its batch mates either. A model whose backends lack either capability runs one
stream at a time (batch 1).

Nothing here knows about HTTP or WebSockets: a ``Feed`` takes audio (``push``, ``close``) from
any thread and hands what the model made to its ``sink`` on the worker thread (the service
moves it to its event loop).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..transcript import FRAME_RATE, Energy, WordBuilder

FRAME = 1920
SAMPLE_RATE = 24000
#: Frames a file's slot encodes at once (2 s: the codec's whole-file speed), always whole chunks
#: until the file's end (``Feed.take``); live streams encode frame by frame. Either way a stream's
#: codes never depend on how its audio happened to arrive.
FILE_CHUNK = 25


@dataclass
class Token:
    """What one model step gave one stream: its step index (0 = the first frame the model read,
    silence prefix included), the text token and the pause heads' probabilities (or None)."""

    step: int
    token: int
    prs: list[float] | None


class Feed:
    """One stream's audio in and tokens out.

    ``push`` (any thread) appends 24 kHz mono float32 samples; whole frames become available to
    the model. ``close`` says no more audio will come; ``flush=True`` also appends the silence
    that lets the model's delay pass (a file: its last words come out); the feed ends once every
    frame has been stepped. ``sink(feed, tokens)`` runs on the worker thread after each step with
    the stream's new tokens; ``on_end(feed)`` once at the end (``error`` set if the model failed).
    """

    def __init__(self, *, chunk: int = 1, sink: Callable[["Feed", list[Token]], None] | None = None,
                 on_end: Callable[["Feed"], None] | None = None, max_buffered: float | None = None) -> None:
        self.chunk = max(1, int(chunk))
        self.sink, self.on_end = sink, on_end
        self.max_buffered = max_buffered  # seconds of audio waiting for the model (None: no bound)
        self._lock = threading.Lock()
        self._rest = np.zeros(0, np.float32)
        self._frames: deque[np.ndarray] = deque()
        self.frames_in = 0  # whole frames received (silence prefix and flush included)
        self.steps = 0  # frames the model has stepped
        self.closed = False
        self.cancelled = False
        self.ended = False
        self.error: str | None = None
        self.engine: "SttEngine | None" = None
        #: ``tap(frames)``: called on the worker thread with the frames the model is about to read.
        self.tap: Callable[[list[np.ndarray]], None] | None = None

    # --- the producer side (any thread)

    def push(self, pcm) -> bool:
        """Append samples; False (nothing taken) when more than ``max_buffered`` seconds wait."""
        x = np.asarray(pcm, np.float32).reshape(-1)
        with self._lock:
            if self.closed:
                return False
            if self.max_buffered is not None and self.buffered_samples + x.size > self.max_buffered * SAMPLE_RATE:
                return False
            x = np.concatenate([self._rest, x]) if self._rest.size else x
            n = x.size // FRAME
            for i in range(n):
                self._frames.append(x[i * FRAME:(i + 1) * FRAME])
            self._rest = x[n * FRAME:].copy()
            self.frames_in += n
        if n and self.engine is not None:
            self.engine.wake()
        return True

    def push_frames(self, count: int) -> None:
        """``count`` frames of silence (the model's prefix and delay flush)."""
        self.push(np.zeros(count * FRAME, np.float32)) if count else None

    def close(self, *, flush_frames: int = 0) -> None:
        """No more audio: a partial last frame is padded with zeros, then ``flush_frames`` of silence."""
        with self._lock:
            if self.closed:
                return
            if self._rest.size:
                self._frames.append(np.concatenate([self._rest, np.zeros(FRAME - self._rest.size, np.float32)]))
                self._rest = np.zeros(0, np.float32)
                self.frames_in += 1
            for _ in range(flush_frames):
                self._frames.append(np.zeros(FRAME, np.float32))
            self.frames_in += flush_frames
            self.closed = True
        if self.engine is not None:
            self.engine.wake()

    def cancel(self) -> None:
        """The client went away: free the slot at the next step, whatever is left unread."""
        self.cancelled = True
        self.close()

    @property
    def buffered_samples(self) -> int:
        """Samples received and not yet stepped (what moshi-server reports as ``buffered_pcm``)."""
        return len(self._frames) * FRAME + self._rest.size

    # --- the worker side

    def take(self, n: int) -> list[np.ndarray]:
        """Up to ``n`` frames. A file's feed (``chunk`` > 1) hands out ``n`` at a time until it is
        closed: its chunks are then cut where ``transcribe`` cuts them, whatever pace its audio
        arrived at (the codec's float sums, so a code near a tie, may depend on a chunk's length)."""
        with self._lock:
            if self.chunk > 1 and len(self._frames) < n and not self.closed:
                return []
            frames = [self._frames.popleft() for _ in range(min(n, len(self._frames)))]
        if frames and self.tap is not None:
            self.tap(frames)
        return frames

    def waiting(self) -> int:
        return len(self._frames)

    @property
    def done(self) -> bool:
        """Closed, every frame taken: nothing more will come."""
        return self.cancelled or (self.closed and not self._frames)


@dataclass
class _Slot:
    feed: Feed
    encoder: object
    codes: deque = field(default_factory=deque)  # encoded frames ([K] int64) not yet stepped


class SttEngine:
    """``batch`` slots over one ``SttModel``, stepped on one worker thread (``start``/``stop``).

    ``submit(feed)`` takes a free slot (False when all are taken and ``queue`` more already wait);
    streams waiting for a slot start as soon as one frees.
    """

    def __init__(self, model, batch: int, *, queue: int = 0, log: Callable[[str], None] | None = None) -> None:
        from ..backends.base import MaskedStepLM, OwnStateEncoders

        self.model = model
        self.log = log or (lambda line: None)
        can_batch = isinstance(model.lm, MaskedStepLM) and isinstance(model.codec, OwnStateEncoders)
        if batch > 1 and not can_batch:
            self.log(f"stt: the {model.lm.info.backend} LM with the {model.codec.info.backend} codec cannot step "
                     f"streams apart; serving one stream at a time")
            batch = 1
        self.batch = max(1, int(batch))
        self.own_encoders = isinstance(model.codec, OwnStateEncoders)
        self.masked = isinstance(model.lm, MaskedStepLM)
        # moshi-server sends ``Step`` (the pause heads) only for a model with extra heads.
        self.heads = getattr(model.lm.info, "extra_heads", 0) > 0 and hasattr(model.lm, "step_heads")
        self.queue_limit = max(0, int(queue))
        self._slots: list[_Slot | None] = [None] * self.batch
        self._pending: deque[Feed] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self.steps = 0
        self.failed: str | None = None

    # --- admission (event loop)

    def _busy(self) -> int:
        # A cancelled stream's slot counts as free: the worker frees it before it admits the next.
        return (sum(s is not None and not s.feed.cancelled for s in self._slots)
                + sum(not f.cancelled for f in self._pending))

    @property
    def used(self) -> int:
        with self._lock:
            return self._busy()

    @property
    def free(self) -> int:
        return max(0, self.batch - self.used)

    def submit(self, feed: Feed, *, may_wait: bool = False) -> bool:
        """Give ``feed`` a slot (at the next step). False if every slot is taken, unless ``may_wait``
        and fewer than ``queue`` streams already wait for one."""
        with self._lock:
            busy = self._busy()
            if self.failed or not self._running:
                return False
            if busy >= self.batch and not (may_wait and busy < self.batch + self.queue_limit):
                return False
            feed.engine = self
            self._pending.append(feed)
        self.wake()
        return True

    def wake(self) -> None:
        self._wake.set()

    # --- the worker thread

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="moshikit-stt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        codec, lm = self.model.codec, self.model.lm
        try:
            if not self.own_encoders:
                codec.reset_stream(self.batch)
            lm.reset(self.batch)
            self._reserve(lm)
            while self._running:
                self._wake.clear()
                if not self._step_once():
                    self._wake.wait(0.05)
        except Exception as exc:  # noqa: BLE001 - the model broke: every stream fails in one line
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.failed = f"speech-to-text model failed: {type(exc).__name__}: {first}"
            self.log(f"stt: {self.failed}")
            with self._lock:
                feeds = [s.feed for s in self._slots if s is not None] + list(self._pending)
                self._slots = [None] * self.batch
                self._pending.clear()
            for f in feeds:
                self._end(f, self.failed)

    def _reserve(self, lm) -> None:
        """Every slot's state for the model's whole context, now: grown as streams run, the cache
        would stop every stream for seconds at a time on a CPU (``ReservingLM``)."""
        from ..backends.base import ReservingLM

        if isinstance(lm, ReservingLM):
            t0 = time.perf_counter()
            lm.reserve(lm.info.context)
            self.log(f"stt: state for {self.batch} streams x {lm.info.context} frames held "
                     f"({time.perf_counter() - t0:.1f} s)")

    def _admit(self) -> np.ndarray:
        """Fill free slots from the waiting streams; the mask of slots to restart."""
        restart = np.zeros(self.batch, bool)
        with self._lock:
            for b in range(self.batch):
                s = self._slots[b]
                if s is not None and (s.feed.cancelled or (s.feed.done and not s.codes)):
                    self._slots[b] = None
                    self._end(s.feed, None)
                while self._pending and self._pending[0].cancelled:  # gone before it had a slot
                    self._end(self._pending.popleft(), None)
                if self._slots[b] is None and self._pending:
                    feed = self._pending.popleft()
                    encoder = self.model.codec.open_encoder() if self.own_encoders else None
                    self._slots[b] = _Slot(feed, encoder)
                    restart[b] = True
        return restart

    def _end(self, feed: Feed, error: str | None) -> None:
        if feed.ended:
            return
        feed.ended = True
        feed.error = error
        if feed.on_end is not None:
            feed.on_end(feed)

    def _step_once(self) -> bool:
        """One model step over the slots that have a frame; False if none had one."""
        codec, lm = self.model.codec, self.model.lm
        restart = self._admit()
        if restart.any():
            if not self.own_encoders:
                # Batch 1 without own encoders: a fresh codec stream for each new stream.
                codec.reset_stream(self.batch)
            lm.reset_slots(restart) if hasattr(lm, "reset_slots") else lm.reset(self.batch)
        k = lm.info.input_codebooks
        active = np.zeros(self.batch, bool)
        codes = np.zeros((self.batch, k), np.int64)
        for b, s in enumerate(self._slots):
            if s is None or s.feed.cancelled:
                continue
            if not s.codes:
                frames = s.feed.take(s.feed.chunk)
                if frames:
                    pcm = np.concatenate(frames)[None]
                    enc = s.encoder.encode(pcm) if s.encoder is not None else codec.encode_step(pcm)
                    s.codes.extend(np.asarray(enc[0, :k]).T)
            if s.codes:
                codes[b] = s.codes.popleft()
                active[b] = True
        if not active.any():
            return False
        if self.masked and not active.all():
            tokens, probs = lm.step_heads_masked(codes, active)
        elif self.heads:
            tokens, probs = lm.step_heads(codes)
        else:
            tokens, probs = lm.step(codes), None
        self.steps += 1
        for b in np.flatnonzero(active):
            s = self._slots[b]
            f = s.feed
            step = f.steps
            f.steps += 1
            if tokens is None or f.sink is None:
                continue
            prs = None if probs is None else [float(p) for p in probs[b]]
            f.sink(f, [Token(step, int(tokens[b, 0]), prs)])
        return True


# ---------------------------------------------------------------- words as moshi-server sends them


class ServerWords:
    """Text tokens -> moshi-server's ``Word`` / ``EndWord`` events, by its rules (moshi's
    ``asr.rs``): pieces gather into a word; token 0 or 3 closes it (``Word`` with ``start_time``
    the previous word's stop time); token 0 marks a stop time, sent as ``EndWord`` for a word
    not ended yet. As ``transcribe`` does, a piece that begins with ``▁`` also closes the word
    before it when the model left out the token 0 between them (``Word`` then ``EndWord`` at that
    step). Times are moshikit's (``WordBuilder.time``: the frame's audio time, the silence prefix
    and the model's delay taken off), so they match ``transcribe``'s."""

    def __init__(self, tokenizer, offset: float) -> None:
        self._sp, self._offset = tokenizer, offset
        self._piece = tokenizer.id_to_piece
        self._ids: list[int] = []
        self._unended = False
        self._last_stop = 0.0

    def time(self, step: int) -> float:
        return max(0.0, step / FRAME_RATE - self._offset)

    def feed(self, step: int, token: int) -> list[dict]:
        out: list[dict] = []
        if step / FRAME_RATE < self._offset:  # the model's delay has not passed: nothing is about audio yet
            return out
        if token in (0, 3):
            out += self._close()
        elif token > 3:
            if self._ids and self._piece(int(token)).startswith("▁"):
                out += self._close()
                stop = self.time(step)
                if self._unended:
                    self._unended = False
                    out.append({"type": "EndWord", "stop_time": stop})
                self._last_stop = stop
            self._ids.append(int(token))
        if token == 0:
            stop = self.time(step)
            if self._unended:
                self._unended = False
                out.append({"type": "EndWord", "stop_time": stop})
            self._last_stop = stop
        return out


    def _close(self) -> list[dict]:
        text = self._sp.decode(self._ids).strip() if self._ids else ""
        self._ids = []
        if not text:
            return []
        self._unended = True
        return [{"type": "Word", "text": text, "start_time": self._last_stop}]


def transcript_words(model, energy: Energy | None = None) -> WordBuilder:
    """moshikit's own word builder for ``model`` (what ``transcribe`` writes: files, the OpenAI route)."""
    sp = model.tokenizer
    return WordBuilder(lambda ids: sp.decode(ids), sp.id_to_piece, model.offset, energy)
