"""Turn-taking and history.

The end of a user turn comes from stt-1b's pause prediction, read as Kyutai's Unmute reads it:
extra head 2 (a pause of 2 s coming) above 0.5, ``threshold`` to change. A model without pause
heads (stt-2.6b) falls back to voice activity: the turn ends after ``silence`` seconds without
voice, and never before the STT's delay has passed (its last words are still on their way).

Barge-in: ``barge_in`` seconds of voice while the agent answers (its request in flight or its
audio playing) stop the agent's audio and cancel its request; what the user heard stays in the
history. Voice is frame energy (80 ms frames) above ``voice_db``.

The history keeps the system prompt and the newest turns whose text fits ``max_chars`` (about
four characters a token: the model's context in mind); the oldest turns go first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PAUSE_THRESHOLD = 0.5  # Unmute: prs[2] > 0.5
DEFAULT_SILENCE = 0.8  # seconds without voice that end a turn without pause heads
BARGE_IN = 0.16  # seconds of voice over the agent that interrupt it (two frames)
VOICE_DB = -45.0  # frame energy (dB full scale) that counts as voice
MAX_HISTORY_CHARS = 12000  # ~3000 tokens
FRAME_SECONDS = 0.08


@dataclass
class TurnOptions:
    threshold: float = PAUSE_THRESHOLD
    silence: float | None = None  # given: end turns on silence even with pause heads
    barge_in: float = BARGE_IN
    voice_db: float = VOICE_DB

    def mode(self, has_pause_heads: bool) -> str:
        """``pause`` (the STT's pause prediction) or ``silence`` (voice activity)."""
        return "pause" if has_pause_heads and self.silence is None else "silence"

    def describe(self, has_pause_heads: bool, model: str = "") -> str:
        if self.mode(has_pause_heads) == "pause":
            return f"end of turn: the STT's pause prediction above {self.threshold:g}"
        why = "" if has_pause_heads else f" ({model or 'this STT model'} has no pause heads)"
        return f"end of turn: {self.silence_seconds:g} s of silence{why}"

    @property
    def silence_seconds(self) -> float:
        return DEFAULT_SILENCE if self.silence is None else self.silence


def frame_db(pcm: np.ndarray) -> float:
    x = np.asarray(pcm, np.float64)
    return float(10.0 * np.log10(np.mean(np.square(x)) + 1e-12)) if x.size else -120.0


class VoiceActivity:
    """Voice per frame, and the times the user's speech started and last ended (seconds)."""

    def __init__(self, voice_db: float = VOICE_DB) -> None:
        self.voice_db = voice_db
        self.run = 0.0  # seconds of voice in a row, up to now
        self.quiet = 0.0  # seconds without voice in a row, up to now
        self.last_voice_end: float | None = None
        self.run_start: float | None = None  # where the current run of voice began
        self.first_voice: float | None = None  # the first voice since the last turn ended
        self.any_since_turn = False

    def feed(self, pcm: np.ndarray, start: float, seconds: float = FRAME_SECONDS) -> bool:
        voiced = frame_db(pcm) > self.voice_db
        if voiced:
            if self.run == 0.0:
                self.run_start = start
            self.run += seconds
            self.quiet = 0.0
            self.last_voice_end = start + seconds
            if not self.any_since_turn:
                self.first_voice = start
            self.any_since_turn = True
        else:
            self.run = 0.0
            self.quiet += seconds
        return voiced


@dataclass
class History:
    """The messages an LLM request carries: the system prompt, then user and assistant turns."""

    system: str | None = None
    max_chars: int = MAX_HISTORY_CHARS
    turns: list[dict] = field(default_factory=list)
    dropped: int = 0  # the oldest messages the last request left out

    def add(self, role: str, text: str) -> None:
        text = text.strip()
        if text:
            self.turns.append({"role": role, "content": text})

    def messages(self) -> list[dict]:
        """The request's messages, oldest turns dropped until the text fits ``max_chars`` (the
        newest message always stays, and the history never starts with the agent)."""
        budget = self.max_chars - len(self.system or "")
        keep = len(self.turns)
        used = 0
        while keep > 0 and (used + len(self.turns[keep - 1]["content"]) <= budget or keep == len(self.turns)):
            used += len(self.turns[keep - 1]["content"])
            keep -= 1
        while keep < len(self.turns) - 1 and self.turns[keep]["role"] != "user":
            keep += 1
        self.dropped = keep
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.turns[keep:]]


def read_system(value: str | None) -> str | None:
    """``--system TEXT|FILE``: a readable file's text, else the text itself."""
    if value is None:
        return None
    from pathlib import Path

    from ..errors import UsageError

    path = Path(value)
    if len(value) < 4096 and "\n" not in value and path.is_file():
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--system {value}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return value.strip() or None
