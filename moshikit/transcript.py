"""Transcripts: words with times from a delayed text stream, segments, and the file formats.

Pure Python and numpy: no model here. ``WordBuilder`` turns the per-frame text tokens
of a Kyutai STT model into timed words; ``segment`` groups words into subtitle
segments; ``render`` writes txt, srt, vtt, json and tsv.

How word times are derived (Kyutai's own scripts, then what moshikit adds):

* The model reads one 80 ms frame per step and its text stream runs
  ``audio_delay_seconds`` behind the audio, after ``ceil(prefix * 12.5)`` frames of
  silence fed first. A token emitted at step ``i`` therefore speaks of audio time
  ``i / 12.5 - prefix_frames / 12.5 - delay``.
* Token 0 ("end of padding") announces a word, ids 1-3 are padding, anything else is a
  SentencePiece piece of the current word. Kyutai's scripts time a word from the
  step after its token 0 to the next token 0, so a word's end is the next word's
  start, pauses included, and the last word ends a second later.
* moshikit starts a word at the step of its first piece, splits words at pieces that
  begin with ``▁`` even when the model omitted the token 0 between them, and refines
  both ends against the audio's own energy (10 ms blocks): a word followed by a pause
  ends where the sound stops, not when the next word starts, and the first word after
  a silence starts where the sound starts. Refinement only ever narrows a word within
  the model's interval; with no sound above the threshold the model's times stand.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

FRAME_RATE = 12.5
BLOCK = 240  # 10 ms at 24 kHz: the energy resolution of the refinement
BLOCK_SECONDS = BLOCK / 24000
END_OF_PADDING = 0
PADDING_MAX = 3
FORMATS = ("txt", "srt", "vtt", "json", "tsv")


@dataclass
class Word:
    text: str
    start: float
    end: float
    steps: tuple[int, int] = (0, 0)  # model steps of the first piece and of the end (not written out)

    def to_json(self) -> dict:
        return {"word": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    source: str
    duration: float
    words: list[Word]
    segments: list[Segment]
    end_of_turn: list[float] = field(default_factory=list)  # times where the pause head rose above 0.5
    model: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "duration": round(self.duration, 3),
            "text": self.text,
            "model": self.model,
            "segments": [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                          "words": [w.to_json() for w in s.words]} for s in self.segments],
            "words": [w.to_json() for w in self.words],
            "end_of_turn": [round(t, 3) for t in self.end_of_turn],
        }


# ---------------------------------------------------------------- audio energy


class Energy:
    """Energy of the audio in 10 ms blocks (dB full scale), kept compactly for refinement."""

    FLOOR_DB = -50.0  # never call quieter than this "sound"
    RANGE_DB = 40.0  # nor anything this far below the loudest block so far

    def __init__(self) -> None:
        self.db = array("f")
        self._rest = np.zeros(0, np.float32)
        self.peak = -120.0

    def add(self, pcm: np.ndarray) -> None:
        x = np.concatenate([self._rest, np.asarray(pcm, np.float32).reshape(-1)])
        n = x.size // BLOCK
        self._rest = x[n * BLOCK:]
        if n:
            ms = np.mean(np.square(x[: n * BLOCK].reshape(n, BLOCK), dtype=np.float64), axis=1)
            db = 10.0 * np.log10(ms + 1e-12)
            self.db.extend(db.astype(np.float32))
            self.peak = max(self.peak, float(db.max()))

    @property
    def threshold(self) -> float:
        return max(self.FLOOR_DB, self.peak - self.RANGE_DB)

    def refine(self, start: float, end: float) -> tuple[float, float]:
        """Narrow ``[start, end]`` to where there is sound in it; unchanged if there is none."""
        lo, hi = max(0, int(start / BLOCK_SECONDS)), min(len(self.db), int(math.ceil(end / BLOCK_SECONDS)))
        if hi <= lo:
            return start, end
        loud = np.flatnonzero(np.frombuffer(self.db, np.float32)[lo:hi] > self.threshold)
        if loud.size == 0:
            return start, end
        new_start = max(start, (lo + loud[0]) * BLOCK_SECONDS - 0.02)
        new_end = min(end, (lo + loud[-1] + 1) * BLOCK_SECONDS + 0.05)
        if new_end - new_start < 0.04:
            return start, end
        return new_start, new_end


# ---------------------------------------------------------------- words from tokens


class WordBuilder:
    """Feed one text token per model step; get timed words as they complete.

    ``decode(ids) -> str`` is the tokenizer's decode, ``piece(id) -> str`` its
    ``id_to_piece``. ``offset`` is ``prefix_frames / 12.5 + delay`` in seconds.
    ``energy`` (an ``Energy`` of the audio, fed as it is read) turns on refinement.
    """

    def __init__(self, decode: Callable[[list[int]], str], piece: Callable[[int], str], offset: float,
                 energy: Energy | None = None, max_last_word: float = 1.0) -> None:
        self._decode, self._piece, self._offset = decode, piece, offset
        self.energy = energy
        self._max_last = max_last_word
        self._ids: list[int] = []
        self._start_step = -1
        self._last_piece_step = -1
        self.words: list[Word] = []

    def time(self, step: float) -> float:
        return step / FRAME_RATE - self._offset

    @property
    def in_word(self) -> bool:
        """True while a word has pieces and is not closed yet."""
        return bool(self._ids)

    def feed(self, step: int, token: int) -> list[Word]:
        """The words this token completed (usually none or one)."""
        done: list[Word] = []
        if token == END_OF_PADDING:
            if self._ids:
                done.append(self._close(step))
        elif token > PADDING_MAX:
            if self._ids and self._piece(token).startswith("▁"):
                done.append(self._close(step))
            if not self._ids:
                self._start_step = step
            self._ids.append(token)
            self._last_piece_step = step
        return done

    def finish(self, last_step: int) -> list[Word]:
        """Close the last word: at most ``max_last_word`` after its last piece, and not past the audio."""
        if not self._ids:
            return []
        end = min(last_step, self._last_piece_step + int(round(self._max_last * FRAME_RATE)))
        return [self._close(max(end, self._last_piece_step + 1))]

    def _close(self, end_step: int) -> Word:
        text = self._decode(self._ids).strip()
        start, end = max(0.0, self.time(self._start_step)), max(0.0, self.time(end_step))
        if self.energy is not None:
            start, end = self.energy.refine(start, end)
        word = Word(text, start, max(end, start), (self._start_step, end_step))
        self._ids = []
        if word.text:
            self.words.append(word)
        return word


# ---------------------------------------------------------------- segments


def segment(words: Sequence[Word], *, max_gap: float = 0.8, max_seconds: float = 7.0,
            max_chars: int = 84) -> list[Segment]:
    """Group words into subtitle segments at pauses, sentence ends and length limits."""
    segments: list[Segment] = []
    cur: list[Word] = []

    def flush() -> None:
        if cur:
            segments.append(Segment(cur[0].start, cur[-1].end, " ".join(w.text for w in cur), list(cur)))
            cur.clear()

    for w in words:
        if cur:
            prev = cur[-1]
            chars = sum(len(x.text) + 1 for x in cur) + len(w.text)
            if (w.start - prev.end >= max_gap or prev.text.endswith((".", "?", "!", "…"))
                    or w.end - cur[0].start > max_seconds or chars > max_chars):
                flush()
        cur.append(w)
    flush()
    return segments


# ---------------------------------------------------------------- formats


def _clock(t: float, sep: str) -> str:
    ms = int(round(max(0.0, t) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _wrap(text: str, width: int = 42) -> str:
    """Subtitle text on at most two balanced lines."""
    if len(text) <= width:
        return text
    words = text.split()
    best, best_cost = text, None
    for i in range(1, len(words)):
        a, b = " ".join(words[:i]), " ".join(words[i:])
        cost = max(len(a), len(b))
        if best_cost is None or cost < best_cost:
            best, best_cost = f"{a}\n{b}", cost
    return best


def render(t: Transcript, fmt: str) -> str:
    if fmt == "txt":
        return "".join(s.text + "\n" for s in t.segments)
    if fmt == "json":
        return json.dumps(t.to_json(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "tsv":  # whisper's layout: integer milliseconds
        rows = ["start\tend\ttext"]
        rows += [f"{int(round(s.start * 1000))}\t{int(round(s.end * 1000))}\t{s.text.replace(chr(9), ' ')}"
                 for s in t.segments]
        return "\n".join(rows) + "\n"
    if fmt == "srt":
        return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{_wrap(s.text)}\n\n"
                       for i, s in enumerate(t.segments, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_wrap(s.text)}\n\n"
                                      for s in t.segments)
    raise ValueError(f"unknown transcript format {fmt!r}")


def formats_of(value: str) -> list[str]:
    """``txt``, ``srt,vtt`` or ``all`` -> the list of formats; ValueError names a bad one."""
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        return list(FORMATS)
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise ValueError(f"unknown transcript format {bad[0] if bad else value!r} "
                         f"(choose from {', '.join(FORMATS)}, or all)")
    return list(dict.fromkeys(names))


def from_json(data: dict) -> Transcript:
    """A Transcript back from its json rendering (used by resume and by tests)."""
    words = [Word(w["word"], w["start"], w["end"]) for w in data.get("words", [])]
    segs = [Segment(s["start"], s["end"], s["text"], [Word(w["word"], w["start"], w["end"]) for w in s["words"]])
            for s in data.get("segments", [])]
    return Transcript(data.get("source", ""), data.get("duration", 0.0), words, segs,
                      list(data.get("end_of_turn", [])), data.get("model", {}))


__all__ = ["Energy", "FORMATS", "Segment", "Transcript", "Word", "WordBuilder", "formats_of", "from_json",
           "render", "segment"]
