"""Echo cancellation offline: a microphone hearing the user plus a delayed, attenuated,
low-passed copy of what Moshi played comes out with the echo down by >= 15 dB (ERLE)
while the user's speech survives."""

from __future__ import annotations

import numpy as np
import pytest

import livekit.rtc  # noqa: F401  (a core dependency: a broken install fails, never skips)

from moshikit import aec  # noqa: E402

R = 24000


def _db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


def _envelope(x: np.ndarray) -> np.ndarray:
    frames = x[: x.size // 960 * 960].reshape(-1, 960)  # 40 ms
    return 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-10)


def _place(dst: np.ndarray, src: np.ndarray, a: float, b: float) -> None:
    k = int((b - a) * R)
    dst[int(a * R) : int(a * R) + k] = np.tile(src, k // src.size + 1)[:k]


def test_echo_reduced_by_15_db_and_user_speech_survives(speech):
    n = 20 * R
    moshi, user = np.zeros(n, np.float32), np.zeros(n, np.float32)
    _place(moshi, speech[::-1].copy(), 0, 8)  # Moshi talks alone, then with the user, then alone
    _place(moshi, speech[::-1].copy(), 12, 20)
    _place(user, speech, 7, 14)
    delay = int(0.05 * R)
    echo = np.convolve(np.concatenate([np.zeros(delay, np.float32), moshi[:-delay]]), np.ones(8) / 8)[:n]
    mic = (user + 0.5 * echo).astype(np.float32)
    out = aec.cancel(mic, moshi)
    assert out.shape == mic.shape
    # ERLE where only the echo is heard, after the canceller has converged (measured: ~67 dB).
    for a, b in ((3, 7), (15, 20)):
        seg = slice(a * R, b * R)
        erle = _db(mic[seg]) - _db(out[seg])
        assert erle >= 15, (a, b, erle)
    # The user alone: the level is kept and the loudness follows the speech.
    seg = slice(int(8.5 * R), 12 * R)
    assert abs(_db(out[seg]) - _db(user[seg])) < 3
    assert np.corrcoef(_envelope(out[seg]), _envelope(user[seg]))[0, 1] > 0.85
    # Both talking: what remains follows the user, not Moshi.
    seg = slice(int(12.5 * R), 14 * R)
    env = _envelope(out[seg])
    assert np.corrcoef(env, _envelope(user[seg]))[0, 1] > np.corrcoef(env, _envelope(echo[seg]))[0, 1]
    assert _db(out[seg]) > _db(user[seg]) - 6


def test_streaming_keeps_the_sample_count():
    ec = aec.EchoCanceller()
    got = 0
    for size in (100, 1920, 7, 333, 1920 * 3):
        ec.far(np.zeros(size, np.float32))
        got += ec.near(np.full(size, 0.01, np.float32)).size
    total = 100 + 1920 + 7 + 333 + 1920 * 3
    assert total - 240 < got <= total and got % 240 == 0
