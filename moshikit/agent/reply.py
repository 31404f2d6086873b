"""One agent reply: the LLM's text streamed straight into TTS (the streaming ``speak`` path:
each word goes to the model as soon as the space after it arrives), on two threads, with the
wall time of every event, and a ``cancel()`` that stops both at once (a barge-in).

The LLM thread reads the reply piece by piece into a queue; the TTS thread speaks the words
from that queue as they come. Audio frames wait in ``frames`` for whoever plays or places
them. Markdown marks and characters the TTS model cannot speak (emoji...) are dropped from
what is spoken, never from the text kept in the history.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import MoshikitError
from .llm import Cancelled, ChatClient

SAMPLE_RATE = 24000
_MARKS = re.compile(r"[*_#`~<>|\[\]]+")
_END = object()


@dataclass
class ReplyState:
    """What happened so far; times are wall seconds after ``start()``."""

    text: str = ""
    first_token: float | None = None
    llm_end: float | None = None
    first_audio: float | None = None
    status: str = "waiting"  # waiting, streaming, done, cancelled, error
    error: str | None = None
    tts_error: str | None = None
    samples: int = 0  # agent audio generated (24 kHz)
    words: list[tuple[str, float]] = field(default_factory=list)  # spoken words, start in the reply's audio


class Responder:
    """``Responder(client, tts, voices, settings, messages).start()``; poll ``take_frames()``."""

    def __init__(self, client: ChatClient, tts, voices: list, settings, messages: list[dict]) -> None:
        self.client, self.tts, self.voices, self.settings = client, tts, voices, settings
        self.state = ReplyState()
        self.reply = client.stream(messages)
        self._text: queue.Queue = queue.Queue()
        self._frames: list[tuple[float, np.ndarray]] = []
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._speakable: dict[str, bool] = {}
        self._resampler = None
        if getattr(tts, "sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(tts.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def start(self) -> "Responder":
        self._t0 = time.perf_counter()
        self._threads = [threading.Thread(target=self._llm, name="agent-llm", daemon=True),
                         threading.Thread(target=self._speak, name="agent-tts", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()
        self.reply.cancel()
        self._text.put(_END)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def join(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return self.done

    def take_frames(self) -> list[tuple[float, np.ndarray]]:
        """The audio frames generated since the last call: (wall seconds after start, pcm)."""
        with self._lock:
            frames, self._frames = self._frames, []
        return frames

    # ------------------------------------------------------------ threads

    def _llm(self) -> None:
        s = self.state
        s.status = "streaming"
        try:
            for piece in self.reply:
                if s.first_token is None:
                    s.first_token = self.now()
                s.text += piece
                self._text.put(piece)
            s.status = "done"
        except Cancelled:
            s.status = "cancelled"
        except MoshikitError as exc:
            s.status, s.error = ("cancelled", None) if self.cancelled else ("error", str(exc))
        finally:
            s.llm_end = self.now()
            self._text.put(_END)

    def _pieces(self) -> Iterator[str]:
        while True:
            piece = self._text.get()
            if self.cancelled:
                raise Cancelled()
            if piece is _END:
                return
            yield piece

    def _speak(self) -> None:
        from ..tts.text import Chunk, words_as_they_come

        def chunks() -> Iterator[Chunk]:
            first = True
            for chunk in words_as_they_come(self._pieces()):
                word = self.speakable(chunk.text)
                if word:
                    yield Chunk(word, 0, first)
                    first = False

        words = chunks()
        head = next(words, None)  # a reply with nothing to say speaks nothing
        if head is None:
            return

        def all_words() -> Iterator[Chunk]:
            yield head
            yield from words

        try:
            self.tts.generate(all_words(), self.voices, self.settings, on_pcm=self._on_pcm,
                              on_word=lambda word, at: self.state.words.append((word, at)))
        except Cancelled:
            pass
        except MoshikitError as exc:
            self.state.tts_error = str(exc)

    def _on_pcm(self, pcm: np.ndarray) -> None:
        if self.cancelled:
            raise Cancelled()  # stops the generation at this frame
        block = np.asarray(pcm, np.float32).reshape(-1)
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block)
        if self.state.first_audio is None:
            self.state.first_audio = self.now()
        self.state.samples += block.size
        with self._lock:
            self._frames.append((self.now(), block))

    def speakable(self, word: str) -> str:
        """``word`` without markdown marks and characters the TTS model cannot speak."""
        word = _MARKS.sub("", word).strip()
        out = []
        for ch in word:
            ok = self._speakable.get(ch)
            if ok is None:
                try:
                    self.tts.check_text(ch)
                    ok = True
                except MoshikitError:
                    ok = False
                self._speakable[ch] = ok
            if ok:
                out.append(ch)
        return "".join(out)
