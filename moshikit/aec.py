"""Acoustic echo cancellation for the live chat: WebRTC's audio processing module.

Through LiveKit's Python SDK (``livekit.rtc.AudioProcessingModule``, a maintained
binding of WebRTC's AEC3), imported on first use. Feed ``far`` with what the speaker
plays and ``near`` with the microphone, in the order they happen; ``near`` returns the
microphone with the echo of ``far`` removed. Both work on 10 ms frames at 24 kHz; any
block length is accepted (leftovers wait for the next call, so ``near``'s output lags
its input by less than 10 ms and the sample count is kept over time).
"""

from __future__ import annotations

import numpy as np

from .errors import BackendUnavailable

SAMPLE_RATE = 24000
_INSTALL = "pip install livekit (or pass --no-aec, e.g. with headphones)"


def probe() -> str:
    try:
        from livekit import rtc  # noqa: F401
        import livekit.rtc.version as v
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(f"echo cancellation needs LiveKit's WebRTC binding: {exc}", hint=_INSTALL) from None
    return f"livekit-rtc {getattr(v, '__version__', '?')}"


def _to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


class EchoCanceller:
    """WebRTC AEC3 (plus its high-pass filter; noise suppression and gain control off
    by default: Moshi should hear the user as the microphone gives it)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, *, noise_suppression: bool = False,
                 auto_gain_control: bool = False, delay_ms: int | None = None) -> None:
        try:
            from livekit import rtc
        except (ImportError, OSError) as exc:
            raise BackendUnavailable(f"echo cancellation needs LiveKit's WebRTC binding ({exc})",
                                     hint=_INSTALL) from None
        self._rtc = rtc
        self.rate = sample_rate
        self.chunk = sample_rate // 100
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=noise_suppression,
                                              high_pass_filter=True, auto_gain_control=auto_gain_control)
        if delay_ms is not None:
            self._apm.set_stream_delay_ms(int(delay_ms))
        self._far = np.zeros(0, np.float32)
        self._near = np.zeros(0, np.float32)

    def _frame(self, x: np.ndarray):
        data = _to_int16(x)
        return self._rtc.AudioFrame(data.tobytes(), self.rate, 1, self.chunk)

    def far(self, pcm: np.ndarray) -> None:
        """What the speaker played (float32 mono)."""
        buf = np.concatenate([self._far, np.asarray(pcm, np.float32).reshape(-1)])
        n = buf.size // self.chunk
        for i in range(n):
            self._apm.process_reverse_stream(self._frame(buf[i * self.chunk : (i + 1) * self.chunk]))
        self._far = buf[n * self.chunk :]

    def near(self, pcm: np.ndarray) -> np.ndarray:
        """The microphone (float32 mono) -> the microphone without the echo."""
        buf = np.concatenate([self._near, np.asarray(pcm, np.float32).reshape(-1)])
        n = buf.size // self.chunk
        out = np.empty(n * self.chunk, np.float32)
        for i in range(n):
            frame = self._frame(buf[i * self.chunk : (i + 1) * self.chunk])
            self._apm.process_stream(frame)
            out[i * self.chunk : (i + 1) * self.chunk] = np.frombuffer(frame.data, dtype=np.int16) / 32768.0
        self._near = buf[n * self.chunk :]
        return out


def cancel(mic: np.ndarray, played: np.ndarray, sample_rate: int = SAMPLE_RATE, **options) -> np.ndarray:
    """Offline: ``mic`` with the echo of ``played`` (same timeline) removed, 10 ms at a time,
    the reference fed before the microphone as a live loop does. Same length as ``mic``."""
    ec = EchoCanceller(sample_rate, **options)
    mic = np.asarray(mic, np.float32).reshape(-1)
    played = np.asarray(played, np.float32).reshape(-1)
    c = ec.chunk
    out = np.zeros_like(mic)
    for i in range(0, mic.size - c + 1, c):
        ec.far(played[i : i + c] if i + c <= played.size else np.zeros(c, np.float32))
        out[i : i + c] = ec.near(mic[i : i + c])
    return out
