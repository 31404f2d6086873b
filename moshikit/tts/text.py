"""Text for speech: sentence chunks of any length of input, dialogue turns, checks.

Long input has no cap: text is read a block at a time and cut after sentence ends
(``.``, ``!``, ``?``, ``…`` and their CJK forms, then a space) or at blank lines, so the
model is fed sentence by sentence into one continuous stream. ``<break time="0.5s"/>``
tags pass through untouched (moshi's script parser turns them into pauses).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import UsageError
from ..inputs import check_regular

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+|\n\s*\n")
BREAK_RE = re.compile(r"<break\s+time=\"([0-9]+(?:\.[0-9]*)?)s\"\s*/?>")
_ANY_TAG = re.compile(r"<[^>]*>")
MAX_BREAK = 10.0


@dataclass(frozen=True)
class Chunk:
    """A piece of the script: ``text`` of turn ``turn`` (0, 1, 2... alternating speakers);
    ``first`` when it opens its turn (the speaker token goes before its first word)."""

    text: str
    turn: int = 0
    first: bool = True


def sentences(blocks: Iterable[str]) -> Iterator[str]:
    """Sentences from text arriving in blocks (lines, reads, an LLM's tokens); the rest at the end."""
    rest = ""
    for block in blocks:
        rest += block
        pos = 0
        for m in _SENTENCE_END.finditer(rest):
            head = rest[pos:m.start() + len(m.group(0).rstrip())].strip()
            pos = m.end()
            if head:
                yield head
        rest = rest[pos:]
    if rest.strip():
        yield rest.strip()


def words_as_they_come(blocks: Iterable[str]) -> Iterator[Chunk]:
    """``--stream``: each word as soon as the space after it arrives (a pause tag once it closes),
    so speech can start after a few words of an LLM's output."""
    rest, first = "", True
    for block in blocks:
        rest += block
        while True:
            m = re.search(r"\s+", rest)
            if m is None or m.start() == 0 and not rest.strip():
                break
            if m.start() == 0:
                rest = rest[m.end():]
                continue
            head = rest[:m.start()]
            if head.count("<") > head.count(">"):  # inside a <break .../> tag: wait for its end
                close = rest.find(">", m.start())
                if close < 0:
                    break
                nxt = re.search(r"\s", rest[close:])
                if nxt is None:
                    break
                head, rest = rest[:close + nxt.start()], rest[close + nxt.start():]
            else:
                rest = rest[m.end():]
            yield Chunk(head, 0, first)
            first = False
    if rest.strip():
        yield Chunk(rest.strip(), 0, first)


def chunks(blocks: Iterable[str]) -> Iterator[Chunk]:
    """One monologue as chunks (turn 0)."""
    for i, s in enumerate(sentences(blocks)):
        yield Chunk(s, 0, i == 0)


def read_blocks(path: str | Path, size: int = 1 << 16) -> Iterator[str]:
    """A text file a block at a time (flat memory for books)."""
    check_regular(path, UsageError)  # a FIFO would block the open, a device never end
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        try:
            while True:
                block = f.read(size)
                if not block:
                    return
                yield block
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not UTF-8 text") from None


@dataclass
class Turn:
    speaker: str
    text: str
    voice: str | None = None


def read_dialogue(path: str | Path) -> list[Turn]:
    """``talk.jsonl``: one ``{"speaker": "A", "text": "...", "voice": optional}`` per line; consecutive
    lines of one speaker join into one turn. Kyutai TTS alternates two speakers."""
    turns: list[Turn] = []
    check_regular(path, UsageError)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the dialogue ({getattr(exc, 'strerror', None) or exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            speaker, text = str(row["speaker"]), str(row["text"])
            voice = row.get("voice")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UsageError(f"{path}:{n}: expected a JSON object with \"speaker\" and \"text\"") from None
        if turns and turns[-1].speaker == speaker:
            turns[-1].text += " " + text
            turns[-1].voice = turns[-1].voice or voice
        else:
            turns.append(Turn(speaker, text, voice))
    speakers = list(dict.fromkeys(t.speaker for t in turns))
    if len(speakers) > 2:
        raise UsageError(f"{path}: {len(speakers)} speakers ({', '.join(speakers)}); Kyutai TTS speaks "
                         "dialogues of two", hint="split the dialogue, or give some speakers the same name")
    if not any(t.text.strip() for t in turns):
        raise UsageError(f"{path}: the dialogue has no text")
    return turns


def dialogue_chunks(turns: list[Turn]) -> Iterator[Chunk]:
    for i, turn in enumerate(turns):
        for j, s in enumerate(sentences([turn.text])):
            yield Chunk(s, i, j == 0)


def check_chunk(text: str, tokenizer, where: str = "text") -> None:
    """Characters the model's tokenizer cannot write (they would become the unknown id, which
    Kyutai TTS reads as "new word") and malformed pauses are one-line errors."""
    for m in BREAK_RE.finditer(text):
        if float(m.group(1)) > MAX_BREAK:
            raise UsageError(f"{where}: a pause of {m.group(1)} s is longer than {MAX_BREAK:g} s")
    plain = BREAK_RE.sub(" ", text)
    tag = _ANY_TAG.search(plain)
    if tag and tag.group(0).lower().startswith("<break"):
        raise UsageError(f"{where}: {tag.group(0)!r} is not a pause moshikit understands",
                         hint='write pauses as <break time="0.5s"/>')
    unk = tokenizer.unk_id()
    bad = sorted({ch for ch in set(plain) if not ch.isspace() and unk in tokenizer.encode(ch)})
    if bad:
        shown = " ".join(repr(c) for c in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise UsageError(f"{where}: characters this model cannot speak: {shown}",
                         hint="remove or spell them out")
