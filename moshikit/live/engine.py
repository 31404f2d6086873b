"""The local engine: a ``Conversation`` stepped on its own thread behind the ``DuplexEngine``
interface (the one ``remote.connect`` returns), and the latency window both report."""

from __future__ import annotations

import collections
import threading

import numpy as np

from ..conversation import FRAME, FRAME_SECONDS, Conversation


class LatencyWindow:
    """Per-step wall times over the last ``seconds`` of steps (a fixed-size window)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=max(1, int(seconds / FRAME_SECONDS)))
        self._lock = threading.Lock()
        self.count = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._times.append(seconds)
            self.count += 1

    def percentiles(self) -> tuple[float, float] | None:
        """(p50, p99) in seconds, or None before the first step."""
        with self._lock:
            if not self._times:
                return None
            arr = np.fromiter(self._times, float)
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


class LocalEngine:
    """A ``Conversation`` stepped on its own thread (a ``DuplexEngine``).

    ``send`` appends samples (any length) and returns at once; the worker cuts them into
    80 ms frames. When more than ``max_backlog`` frames wait (the model is slower than
    real time), the oldest are dropped and counted in ``dropped_frames``: Moshi then
    hears the present, not a growing past. ``receive`` returns one (audio, text) pair
    per step taken. ``latency`` holds the per-step times.
    """

    def __init__(self, conv: Conversation, *, max_backlog: int = 3, latency_seconds: float = 10.0) -> None:
        if conv.batch_size != 1:
            raise ValueError("a live engine runs one stream")
        self.conv = conv
        self.max_backlog = max(1, max_backlog)
        self.latency = LatencyWindow(latency_seconds)
        self.dropped_frames = 0
        self.steps = 0
        self.error: BaseException | None = None
        self._pending = np.zeros(0, np.float32)
        self._frames: collections.deque[np.ndarray] = collections.deque()
        self._out: collections.deque[tuple[np.ndarray, str]] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        conv.reset()
        self._thread = threading.Thread(target=self._run, name="moshikit-engine", daemon=True)
        self._thread.start()

    def send(self, pcm: np.ndarray) -> None:
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not x.size or self._closing:
            return
        with self._cv:
            buf = np.concatenate([self._pending, x]) if self._pending.size else x.copy()
            n = buf.size // FRAME
            for i in range(n):
                self._frames.append(buf[i * FRAME : (i + 1) * FRAME])
            self._pending = buf[n * FRAME :]
            while len(self._frames) > self.max_backlog:
                self._frames.popleft()
                self.dropped_frames += 1
            if n:
                self._cv.notify()

    def receive(self) -> list[tuple[np.ndarray, str]]:
        if self.error is not None and not self._out:
            raise self.error
        items = []
        while self._out:
            items.append(self._out.popleft())
        return items

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._frames and not self._closing:
                        self._cv.wait(0.5)
                    if self._closing:
                        return
                    frame = self._frames.popleft()
                out = self.conv.step(frame)
                self.latency.add(out.seconds)
                self.steps += 1
                self._out.append((out.pcm[0], out.text[0]))
        except BaseException as exc:  # noqa: BLE001 - reported to the loop through receive()
            self.error = exc

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout=10.0)

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
