"""Mimi through moshi's PyTorch ``MimiModel`` (CUDA, MPS or CPU)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .base import CodecInfo

#: The most frames one streaming call processes at once (longer calls are split).
MAX_STEP_FRAMES = 125


def probe() -> str:
    from .torch_env import prepare

    prepare()  # before moshi's first import: it reads NO_TORCH_COMPILE then, once
    import moshi
    import torch

    return f"torch {torch.__version__}, moshi {moshi.__version__}"


def pick_device(device: str | None) -> str:
    import torch

    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class TorchCodec:
    batch_gain = True  # on a GPU; see __init__ for the CPU

    def __init__(self, weights: Path, *, device: str | None = None, num_codebooks: int = 8) -> None:
        # moshi wraps helpers in torch.compile; on a CPU that costs tens of seconds
        # of compilation for no gain on Mimi.
        from .torch_env import prepare as _prepare_torch

        _prepare_torch()
        import torch
        from moshi.models import loaders

        self._torch = torch
        dev = pick_device(device)
        self._device = torch.device(dev)
        self._mimi = loaders.get_mimi(str(weights), device=dev, num_codebooks=num_codebooks)
        self._stream: ExitStack | None = None
        # Measured on a 2-core x86 CPU: 8 clips of 3 s as one batch ran at 11x real
        # time, one by one at 21x (big activations fall out of cache). Batch on GPUs only.
        self.batch_gain = dev != "cpu"
        m = self._mimi
        self.info = CodecInfo(
            backend="torch", device=dev, sample_rate=int(m.sample_rate), frame_size=int(m.frame_size),
            num_codebooks=int(m.num_codebooks), cardinality=int(m.cardinality),
            total_codebooks=int(m.total_codebooks),
        )

    def _pcm(self, pcm: np.ndarray):
        x = np.ascontiguousarray(pcm, dtype=np.float32)
        return self._torch.from_numpy(x).to(self._device)[:, None, :]

    def _codes(self, codes: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)).to(self._device)

    def _end_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        self._end_stream()
        with self._torch.inference_mode():
            return self._mimi.encode(self._pcm(pcm)).cpu().numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._end_stream()
        with self._torch.inference_mode():
            return self._mimi.decode(self._codes(codes))[:, 0].float().cpu().numpy()

    def reset_stream(self, batch_size: int = 1) -> None:
        self._end_stream()
        self._stream = self._mimi.streaming(batch_size)
        _widen_kv_caches(self._mimi, 2 * MAX_STEP_FRAMES)

    def reset_slots(self, mask: np.ndarray) -> None:
        """Restart the streams of the current batch where ``mask`` is true (encoder and decoder)."""
        assert self._stream is not None, "call reset_stream() first"
        m = self._torch.from_numpy(np.asarray(mask, dtype=bool).copy()).to(self._device)
        with self._torch.inference_mode():
            self._mimi.reset_streaming(m)

    def open_encoder(self) -> "_OwnStateEncoder":
        """A streaming encoder for one stream with a state of its own (see ``_OwnStateEncoder``)."""
        return _OwnStateEncoder(self)

    def encode_step(self, pcm: np.ndarray) -> np.ndarray:
        assert self._stream is not None, "call reset_stream() first"
        step = MAX_STEP_FRAMES * self.info.frame_size
        with self._torch.inference_mode():
            parts = [self._mimi.encode(self._pcm(pcm[:, i : i + step])) for i in range(0, pcm.shape[-1], step)]
            return self._torch.cat(parts, -1).cpu().numpy()

    def decode_step(self, codes: np.ndarray) -> np.ndarray:
        assert self._stream is not None, "call reset_stream() first"
        with self._torch.inference_mode():
            parts = [self._mimi.decode(self._codes(codes[..., i : i + MAX_STEP_FRAMES]))
                     for i in range(0, codes.shape[-1], MAX_STEP_FRAMES)]
            return self._torch.cat(parts, -1)[:, 0].float().cpu().numpy()


class _OwnStateEncoder:
    """One stream's streaming encoder, its state held apart from the codec's batch state.

    Many of these share one model: each call swaps its state in, encodes, and takes the
    model out of streaming. Encoding a stream at batch 1 gives the codes it gets alone
    (batched CPU kernels round differently, which flips near-tie codes), and on a CPU
    batch 1 is also the faster way to run Mimi.
    """

    def __init__(self, codec: TorchCodec) -> None:
        codec._end_stream()
        self._codec, m = codec, codec._mimi
        stack = m.streaming(1)
        _widen_kv_caches(m, 2 * MAX_STEP_FRAMES)
        self._state = m.get_streaming_state()
        stack.close()

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """``pcm`` [1, n] (whole frames) -> codes [1, K, n / 1920], continuing this stream."""
        c, m = self._codec, self._codec._mimi
        c._end_stream()
        step = MAX_STEP_FRAMES * c.info.frame_size
        m.set_streaming_state(self._state)
        try:
            with c._torch.inference_mode():
                parts = [m.encode(c._pcm(pcm[:, i : i + step])) for i in range(0, pcm.shape[-1], step)]
                return c._torch.cat(parts, -1).cpu().numpy()
        finally:
            m._stop_streaming()


def _widen_kv_caches(model, extra_steps: int) -> None:
    """Give every streaming attention a KV cache of ``context + extra_steps`` entries.

    moshi sizes a streaming KV cache to exactly the attention context (250 steps,
    10 s, for Mimi). A step of T positions then overwrites the oldest T entries
    before the first new query has read them, so multi-frame streaming steps see
    less context than a whole-file encode once a stream is longer than 10 s
    (latents off by up to 0.4% of their range, enough to flip codes). The mask
    still limits attention to ``context`` steps, so a wider ring only restores the
    context the whole-file path has: chunked encoding then equals whole-file.
    """
    from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention

    for mod in model.modules():
        if not isinstance(mod, StreamingMultiheadAttention):
            continue
        state = mod._streaming_state
        old = getattr(state, "kv_cache", None)
        if not isinstance(old, RingKVCache) or mod.context is None:
            continue
        _, batch, heads, _, dim = old.cache.shape
        state.kv_cache = RingKVCache(
            batch, heads, dim, mod.context + extra_steps, respect_exec_mask=old.respect_exec_mask,
            device=old.cache.device, dtype=old.cache.dtype,
        )


def load(weights: Path, *, device: str | None = None, num_codebooks: int = 8) -> TorchCodec:
    return TorchCodec(weights, device=device, num_codebooks=num_codebooks)
