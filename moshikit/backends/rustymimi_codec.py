"""Mimi through ``rustymimi``, Kyutai's Rust (candle) implementation, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import CodecInfo


def probe() -> str:
    from importlib.metadata import version

    import rustymimi  # noqa: F401

    return f"rustymimi {version('rustymimi')}"


class RustyMimiCodec:
    # The Rust tokenizer runs a batch as one tensor, but its CPU kernels gain little from it.
    batch_gain = False

    def __init__(self, weights: Path, *, device: str | None = None, num_codebooks: int = 8) -> None:
        import rustymimi

        if device not in (None, "auto", "cpu"):
            from ..errors import BackendError

            raise BackendError(f"the rustymimi backend runs on the cpu only, not {device!r}")
        self._rm = rustymimi
        self._path = str(weights)
        self._k = num_codebooks
        self._tok = rustymimi.Tokenizer(self._path, num_codebooks=num_codebooks)
        self._stream_batch = 0
        self.info = CodecInfo(backend="rustymimi", device="cpu", num_codebooks=num_codebooks)

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        frame = self.info.frame_size
        x = np.ascontiguousarray(pcm, dtype=np.float32)
        pad = (-x.shape[-1]) % frame
        if pad:
            x = np.pad(x, ((0, 0), (0, pad)))
        self._tok.reset()
        out = self._tok.encode(x[:, None, :]).astype(np.int64)
        self._tok.reset()
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._tok.reset()
        out = self._tok.decode(np.ascontiguousarray(codes, dtype=np.uint32))
        self._tok.reset()
        return np.asarray(out, dtype=np.float32)[:, 0]

    def reset_stream(self, batch_size: int = 1) -> None:
        self._tok.reset()
        self._stream_batch = batch_size

    def encode_step(self, pcm: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pcm, dtype=np.float32)
        return np.asarray(self._tok.encode_step(x[:, None, :]), dtype=np.int64)

    def decode_step(self, codes: np.ndarray) -> np.ndarray:
        out = self._tok.decode_step(np.ascontiguousarray(codes, dtype=np.uint32))
        return np.asarray(out, dtype=np.float32)[:, 0]


def load(weights: Path, *, device: str | None = None, num_codebooks: int = 8) -> RustyMimiCodec:
    return RustyMimiCodec(weights, device=device, num_codebooks=num_codebooks)
