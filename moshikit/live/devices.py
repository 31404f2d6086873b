"""The sound-card side of the live loop: the speaker's queue (a callback that never
waits), a guard for devices without a clock, and a loudness meter."""

from __future__ import annotations

import collections
import time

import numpy as np

from ..conversation import SAMPLE_RATE


def level(pcm: np.ndarray) -> float:
    """Loudness for a meter: 0 at -60 dBFS or below, 1 at 0 dBFS."""
    if not pcm.size:
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
    return min(1.0, max(0.0, (20 * np.log10(max(rms, 1e-9)) + 60) / 60))


class DeviceClock:
    """Guards against devices that run faster than real time (ALSA devices backed by
    files have no clock): samples beyond the wall clock (plus slack) are ignored."""

    def __init__(self, slack: float = 0.5) -> None:
        self.slack = slack
        self.t0: float | None = None
        self.counts = {"in": 0, "out": 0}
        self.ignored = 0
        self.out_rate = SAMPLE_RATE

    def start(self, out_rate: int) -> None:
        self.out_rate = out_rate
        self.t0 = time.monotonic()

    def ahead(self, side: str, frames: int, rate: int) -> bool:
        if self.t0 is None:
            return True
        if self.counts[side] > (time.monotonic() - self.t0 + self.slack) * rate:
            self.ignored += 1
            return True
        self.counts[side] += frames
        return False


class Player:
    """The speaker side: the callback pops queued chunks and never waits."""

    def __init__(self, blocksize: int, clock: DeviceClock | None = None) -> None:
        self.blocksize = blocksize
        self.clock = clock
        self.chunks: collections.deque[np.ndarray] = collections.deque()
        self.played: collections.deque[np.ndarray] = collections.deque(maxlen=4096)
        self.queued_in = 0  # samples appended (loop)
        self.consumed = 0  # samples taken out (callback, played or skipped)
        self.skip_request = 0  # samples the loop asks the callback to skip
        self.skipped = 0
        self.late = 0
        self._cur = np.zeros(0, np.float32)
        self.started = False

    def queued(self) -> int:
        return self.queued_in - self.consumed

    def push(self, pcm: np.ndarray) -> None:
        self.queued_in += pcm.size
        self.chunks.append(pcm)
        self.started = True

    def callback(self, outdata, frames, time_info, status) -> None:
        if self.clock is not None and self.clock.ahead("out", frames, self.clock.out_rate):
            outdata.fill(0.0)  # a device without a clock asking faster than real time
            return
        out = outdata[:, 0]
        skip = self.skip_request
        if skip:
            self.skip_request = 0
        filled = 0
        while filled < frames:
            if not self._cur.size:
                if not self.chunks:
                    break
                self._cur = self.chunks.popleft()
            if skip:
                k = min(skip, self._cur.size)
                self._cur = self._cur[k:]
                self.consumed += k
                self.skipped += k
                skip -= k
                continue
            k = min(frames - filled, self._cur.size)
            out[filled : filled + k] = self._cur[:k]
            self._cur = self._cur[k:]
            self.consumed += k
            filled += k
        if filled < frames:
            out[filled:] = 0.0
            if self.started:
                self.late += 1
        if outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]
        self.played.append(out.copy())
