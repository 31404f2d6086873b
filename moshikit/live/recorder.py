"""Recording a live conversation: a stereo wav (user left, Moshi right) and its transcript."""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..conversation import SAMPLE_RATE


def transcript_json(pieces: list[dict], *, duration: float, source: str | None = None) -> dict:
    """The transcript file: every piece with its time, and the text joined."""
    text = "".join(p["text"] for p in pieces).strip()
    doc = {"duration": round(duration, 3), "text": text,
           "pieces": [{"time": p["time"], "text": p["text"]} for p in pieces]}
    if source:
        doc["model"] = source
    return doc


def write_json_atomic(path: Path, doc: dict) -> None:
    """``doc`` as indented UTF-8 JSON, written atomically."""
    from ..atomic import write_text

    write_text(Path(path), json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


class Recorder:
    """A stereo 24 kHz wav (user left, Moshi right, sample-aligned on the device clock)
    and a transcript JSON, both written atomically when the recording stops."""

    def __init__(self, directory: str | os.PathLike, *, stamp: str | None = None) -> None:
        from ..audio import AudioWriter

        self.directory = Path(directory)  # made by AudioWriter (a file in its place: one line)
        stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
        base, n = f"chat-{stamp}", 1
        while (self.directory / f"{base}.wav").exists():
            n += 1
            base = f"chat-{stamp}-{n}"
        self.wav_path = self.directory / f"{base}.wav"
        self.json_path = self.directory / f"{base}.json"
        self._writer = AudioWriter(self.wav_path, SAMPLE_RATE, 2).__enter__()
        self._left: collections.deque[np.ndarray] = collections.deque()
        self._right: collections.deque[np.ndarray] = collections.deque()
        self._nl = self._nr = 0
        self.samples = 0
        self.pieces: list[dict] = []

    def user(self, pcm: np.ndarray) -> None:
        self._left.append(np.asarray(pcm, np.float32).reshape(-1))
        self._nl += pcm.size
        self._write()

    def moshi(self, pcm: np.ndarray) -> None:
        self._right.append(np.asarray(pcm, np.float32).reshape(-1))
        self._nr += pcm.size
        self._write()

    def _write(self, final: bool = False) -> None:
        """Flush; a failed write (a full disk...) removes the partial recording and is raised."""
        if self._writer is None:
            return
        try:
            self._flush(final)
        except BaseException:
            writer, self._writer = self._writer, None
            writer.__exit__(*sys.exc_info())
            raise

    def text(self, seconds: float, piece: str) -> None:
        self.pieces.append({"time": round(max(seconds, 0.0), 3), "text": piece})

    @staticmethod
    def _take(q: collections.deque, n: int) -> np.ndarray:
        parts, got = [], 0
        while got < n:
            a = q.popleft()
            if got + a.size > n:
                q.appendleft(a[n - got :])
                a = a[: n - got]
            parts.append(a)
            got += a.size
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _flush(self, final: bool = False) -> None:
        n = min(self._nl, self._nr)
        if final:
            n = max(self._nl, self._nr)
            for q, have in ((self._left, self._nl), (self._right, self._nr)):
                if have < n:
                    q.append(np.zeros(n - have, np.float32))
            self._nl = self._nr = n
        if n <= 0:
            return
        block = np.stack([self._take(self._left, n), self._take(self._right, n)])
        self._nl -= n
        self._nr -= n
        self._writer.write(block)
        self.samples += n

    def close(self) -> None:
        """Finish both files; after a failed write there is nothing left to finish."""
        if self._writer is None:
            return
        self._write(final=True)
        writer, self._writer = self._writer, None
        writer.__exit__(None, None, None)
        write_json_atomic(self.json_path, transcript_json(self.pieces, duration=self.samples / SAMPLE_RATE))
