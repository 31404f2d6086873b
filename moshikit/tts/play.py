"""``--play``: generated audio to a speaker as it comes, through the same PortAudio path as ``chat``
(``mic.find_device`` / ``mic.open_stream``), resampled when the device does not take 24 kHz."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

SAMPLE_RATE = 24000


class Speaker:
    """A queue the PortAudio callback drains; silence when the generator is behind (counted)."""

    def __init__(self, device: str | int | None = None, *, instead: str | None = None) -> None:
        from ..mic import find_device

        self.device, self.info = find_device(device, "output", instead=instead)
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._stream = None
        self._rate = SAMPLE_RATE
        self._resampler = None
        self.played = 0  # samples at the device's rate
        self.underruns = 0  # callbacks that found nothing (after the first audio)
        self._started = False
        self.name = str(self.info.get("name", device))

    def __enter__(self) -> "Speaker":
        from ..mic import load_sounddevice, open_stream

        sd = load_sounddevice()
        self._stream, self._rate, _ = open_stream(sd, "output", self.device, 1920, self._callback)
        if self._rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(SAMPLE_RATE, self._rate, 1, dtype="float32", quality="HQ")
        self._stream.start()
        return self

    def _callback(self, outdata, frames, time_info, status) -> None:  # PortAudio's thread: never block
        from ..audio import drain_into

        out = outdata[:, 0]
        with self._lock:
            n = drain_into(self._queue, out)
            if self._started and n == 0:
                self.underruns += 1
        self.played += n

    def push(self, pcm: np.ndarray) -> None:
        block = np.asarray(pcm, np.float32)
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block)
        with self._lock:
            self._queue.append(block)
            self._started = True

    def queued(self) -> int:
        with self._lock:
            return sum(b.size for b in self._queue)

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until everything pushed has been played."""
        end = time.monotonic() + timeout
        while self.queued() and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.drain()
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
