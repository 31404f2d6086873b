"""Mimi through moshi_mlx's MLX ``Mimi`` (Metal on Apple silicon; CPU elsewhere).

moshi_mlx's Mimi as is (0.3.0) does not give moshi's codes: its two transformers
attend without a causal mask. ``TransformerLayer.__call__`` calls
``self.self_attn(n1, cache=...)`` with no mask and ``Attention.__call__`` passes
``mask=None`` to ``scaled_dot_product_attention`` (moshi_mlx/modules/transformer.py
lines 242 and 152), so in a call of ``t`` positions every position also sees the
later ones. A whole-array encode lets frame 0 see the whole clip (the error is
largest there and fades towards the end, where the future is short); a streaming
step of one Mimi frame is two 25 Hz positions, of which the first sees the second.
Nor does anything bound the attention to the 250-step context when a call has
more positions than that. Its MLP also uses the tanh approximation of GELU
(``nn.gelu_approx``, line 184) where moshi's uses the exact (erf) GELU.

This adapter loads the model unchanged, then wraps, on the loaded instance, each
transformer layer's attention so that it receives moshi's mask (causal, ``delta <
context``), and its MLP so that it uses the exact GELU. It also gives the
attention a KV store that keeps only the last ``context`` steps (moshi_mlx's grows
without bound in a stream), runs long calls through the transformers in pieces, and
encodes only the codebooks it returns.
``load(..., match_torch=False)`` keeps moshi_mlx's behaviour as published.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import CodecInfo

#: The most frames one call runs through a transformer at once (longer calls are split:
#: attention memory grows with the square of a call's length).
MAX_STEP_FRAMES = 125
#: moshi_mlx's Mimi loads only with all 32 codebooks of the published file.
_FILE_CODEBOOKS = 32


def probe() -> str:
    from importlib.metadata import version

    import mlx.core  # noqa: F401  (fails without the runtime: libmlx.so)
    import moshi_mlx.models.mimi  # noqa: F401

    return f"mlx {version('mlx')}, moshi_mlx {version('moshi_mlx')}"


def pick_device(mx, device: str | None):
    """``None``/``"auto"``: MLX's default (the GPU on Apple silicon); ``"cpu"``; ``"gpu"``."""
    from ..errors import BackendError

    if device in (None, "auto"):
        return mx.default_device()  # the GPU where MLX has one (Metal), else the CPU
    if device == "cpu":
        return mx.cpu
    if device in ("gpu", "metal", "mps"):
        available = getattr(mx, "is_available", None)
        has_gpu = available(mx.gpu) if available else mx.metal.is_available()
        if not has_gpu:
            raise BackendError("MLX has no GPU here (Metal is Apple-only)", hint="use --device cpu")
        return mx.gpu
    raise BackendError(f"the mlx backend runs on cpu or gpu, not {device!r}", hint="use --device cpu or gpu")


@lru_cache(maxsize=None)
def _patch_classes():
    """The wrappers, built on first use so that importing this module needs no mlx."""
    import mlx.core as mx
    import mlx.nn as nn

    class WindowKV:
        """A layer's keys and values: the last ``keep`` steps and the absolute ``offset``.

        Duck-types moshi_mlx's ``KVCache`` (``offset``, ``update_and_fetch``, ``reset``).
        ``update_and_fetch`` returns the kept steps followed by the new ones.
        """

        def __init__(self, keep: int) -> None:
            self.keep = keep
            self.reset()

        def reset(self) -> None:
            self.offset = 0
            self.keys = None
            self.values = None

        @property
        def stored(self) -> int:
            return 0 if self.keys is None else int(self.keys.shape[2])

        @property
        def state(self):
            return self.keys, self.values

        def update_and_fetch(self, keys, values):
            self.offset += int(keys.shape[2])
            if self.keys is not None:
                keys = mx.concatenate([self.keys, keys], axis=2)
                values = mx.concatenate([self.values, values], axis=2)
            self.keys, self.values = keys[:, :, -self.keep :], values[:, :, -self.keep :]
            return keys, values

    class MaskedAttention(nn.Module):
        """Calls moshi_mlx's ``Attention`` with moshi's mask: query ``q`` sees key ``k``
        iff ``0 <= q - k < context`` (moshi/modules/transformer.py, ``_attention``)."""

        def __init__(self, inner, context: int) -> None:
            super().__init__()
            self.inner = inner
            self.context = context

        def __call__(self, xs, cache, mask=None):
            assert mask is None and isinstance(cache, WindowKV), "set up by MlxCodec only"
            t = int(xs.shape[1])
            start = cache.offset
            # Attention keeps t + min(context, stored) keys; they begin here:
            first_key = start - min(self.context, cache.stored)
            q_pos = mx.arange(start, start + t)[:, None]
            k_pos = mx.arange(first_key, start + t)[None, :]
            delta = q_pos - k_pos
            return self.inner(xs, cache=cache, mask=(delta >= 0) & (delta < self.context))

    class ExactGeluMlp(nn.Module):
        """moshi_mlx's ``MlpNoGating`` weights with moshi's activation, the erf GELU."""

        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def __call__(self, xs):
            return self.inner.linear2(nn.gelu(self.inner.linear1(xs)))

    return WindowKV, MaskedAttention, ExactGeluMlp


class MlxCodec:
    # MLX runs a batch as one array. On a 2-core x86 CPU 2 clips of 2 s took 7.0 s as a
    # batch, 6.5 s one by one. On a GPU a batch should pay (not measured: no Apple GPU).
    batch_gain = False

    def __init__(self, weights: Path, *, device: str | None = None, num_codebooks: int = 8,
                 match_torch: bool = True) -> None:
        import mlx.core as mx
        from moshi_mlx.models.mimi import Mimi, mimi_202407

        if not 1 <= num_codebooks <= _FILE_CODEBOOKS:
            raise ValueError(f"num_codebooks must be between 1 and {_FILE_CODEBOOKS}, not {num_codebooks}")
        self._mx = mx
        self._dev = pick_device(mx, device)
        on_gpu = self._dev == mx.gpu
        self.batch_gain = on_gpu
        self._k = num_codebooks
        self.match_torch = match_torch
        with mx.stream(self._dev):
            cfg = mimi_202407(_FILE_CODEBOOKS)
            mimi = Mimi(cfg)
            mimi.load_pytorch_weights(str(weights), strict=True)
            # MLX loads lazily: read the file now, so that load() pays for it and fails
            # here if it must, along with the tensors moshi_mlx derives from the weights.
            derived = [getattr(mod, name) for _, mod in mimi.named_modules()
                       for name in ("_embedding", "_c2", "_expanded_weight") if hasattr(mod, name)]
            mx.eval(mimi.parameters(), derived)
        self._mimi = mimi
        self._context = int(cfg.transformer.context)
        self._rest_layers = list(mimi.quantizer.rvq_rest.vq.layers)
        if match_torch:
            self._patch_transformers()
            self._new_cache = self._window_cache
        else:
            self._new_cache = lambda tr: tr.make_cache()
        # The stream's caches (Mimi.encode_step/decode_step read these attributes).
        mimi.encoder_cache = self._new_cache(mimi.encoder_transformer)
        mimi.decoder_cache = self._new_cache(mimi.decoder_transformer)
        self._stream_batch: int | None = None
        self.info = CodecInfo(
            backend="mlx", device="gpu" if on_gpu else "cpu", sample_rate=int(cfg.sample_rate),
            frame_size=int(cfg.sample_rate / cfg.frame_rate), num_codebooks=num_codebooks,
            cardinality=int(cfg.quantizer_bins), total_codebooks=_FILE_CODEBOOKS,
        )

    # ------------------------------------------------------------ set-up

    def _use_codebooks(self, k: int) -> None:
        """Run the quantizer with its first ``k`` codebooks: encoding computes only the
        codes it returns (as moshi's ``set_num_codebooks``); decoding takes any ``K``."""
        q = self._mimi.quantizer
        q._nq = k
        q.rvq_rest.vq.layers = self._rest_layers[: k - 1]

    def _patch_transformers(self) -> None:
        from moshi_mlx.modules.transformer import MlpNoGating

        _, masked, exact_gelu = _patch_classes()
        for tr in (self._mimi.encoder_transformer, self._mimi.decoder_transformer):
            for layer in tr.transformer.layers:
                layer.self_attn = masked(layer.self_attn, self._context)
                if isinstance(layer.gating, MlpNoGating):
                    layer.gating = exact_gelu(layer.gating)

    def _window_cache(self, tr):
        window_kv, _, _ = _patch_classes()
        caches = tr.make_cache()
        for c in caches:
            c.self_attn = window_kv(self._context)
        return caches

    # ------------------------------------------------------------ helpers

    def _pcm(self, pcm: np.ndarray):
        x = np.ascontiguousarray(pcm, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"audio must be [B, T], not {list(x.shape)}")
        return x

    def _run_transformer(self, tr, xs, cache):
        """``tr`` over ``xs`` [B, C, T] in calls of at most 2 * MAX_STEP_FRAMES positions.

        With the window KV store and moshi's mask, splitting changes nothing but memory.
        Without them (``match_torch=False``) it runs as one call, as moshi_mlx does.
        """
        mx = self._mx
        step = 2 * MAX_STEP_FRAMES if self.match_torch else xs.shape[-1]
        if xs.shape[-1] <= step:
            return tr(xs, cache=cache)[0]
        parts = []
        for i in range(0, xs.shape[-1], step):
            parts.append(tr(xs[..., i : i + step], cache=cache)[0])
            mx.eval(parts[-1])
        return mx.concatenate(parts, axis=-1)

    # ------------------------------------------------------------ whole arrays

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """Stateless: runs the stateless paths of moshi_mlx's convolutions with fresh
        KV caches, so an open stream is left as it was."""
        mx, m = self._mx, self._mimi
        x = self._pcm(pcm)
        frame = self.info.frame_size
        pad = (-x.shape[-1]) % frame
        if pad:
            x = np.pad(x, ((0, 0), (0, pad)))
        if x.shape[-1] == 0:
            return np.zeros((x.shape[0], self._k, 0), dtype=np.int64)
        with mx.stream(self._dev):
            xs = m.encoder(mx.array(x)[:, None, :])
            xs = self._run_transformer(m.encoder_transformer, xs, self._new_cache(m.encoder_transformer))
            self._use_codebooks(self._k)
            codes = m.quantizer.encode(m.downsample(xs))
            mx.eval(codes)
        return np.array(codes).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        mx, m = self._mx, self._mimi
        c = self._codes(codes)
        if c.shape[-1] == 0:
            return np.zeros((c.shape[0], 0), dtype=np.float32)
        with mx.stream(self._dev):
            self._use_codebooks(c.shape[1])
            xs = m.upsample(m.quantizer.decode(mx.array(c)))
            xs = self._run_transformer(m.decoder_transformer, xs, self._new_cache(m.decoder_transformer))
            out = m.decoder(xs)
            mx.eval(out)
        return np.array(out, dtype=np.float32)[:, 0]

    def _codes(self, codes: np.ndarray) -> np.ndarray:
        c = np.asarray(codes)
        if c.ndim != 3 or c.shape[1] > _FILE_CODEBOOKS or c.shape[1] < 1:
            raise ValueError(f"codes must be [B, K, F] with 1 <= K <= {_FILE_CODEBOOKS}, not {list(c.shape)}")
        if c.size and (c.min() < 0 or c.max() >= self.info.cardinality):
            raise ValueError(f"codes must lie in [0, {self.info.cardinality})")
        return np.ascontiguousarray(c, dtype=np.uint32)

    # ------------------------------------------------------------ streaming

    def reset_stream(self, batch_size: int = 1) -> None:
        self._mimi.reset_all()  # convolution states and both transformers' caches
        self._stream_batch = batch_size

    def _check_stream(self, batch: int) -> None:
        if self._stream_batch is None:
            raise RuntimeError("call reset_stream() first")
        if batch != self._stream_batch:
            raise ValueError(f"this stream has batch size {self._stream_batch}, not {batch}")

    def encode_step(self, pcm: np.ndarray) -> np.ndarray:
        mx, m = self._mx, self._mimi
        x = self._pcm(pcm)
        frame = self.info.frame_size
        if x.shape[-1] == 0 or x.shape[-1] % frame:
            raise ValueError(f"a streaming step takes a positive multiple of {frame} samples, not {x.shape[-1]}")
        self._check_stream(x.shape[0])
        step = MAX_STEP_FRAMES * frame
        parts = []
        with mx.stream(self._dev):
            self._use_codebooks(self._k)
            for i in range(0, x.shape[-1], step):
                codes = m.encode_step(mx.array(x[:, i : i + step])[:, None, :])
                mx.eval(codes)
                parts.append(np.array(codes))
        return np.concatenate(parts, -1).astype(np.int64)

    def decode_step(self, codes: np.ndarray) -> np.ndarray:
        mx, m = self._mx, self._mimi
        c = self._codes(codes)
        self._check_stream(c.shape[0])
        if c.shape[-1] == 0:
            return np.zeros((c.shape[0], 0), dtype=np.float32)
        parts = []
        with mx.stream(self._dev):
            self._use_codebooks(c.shape[1])
            for i in range(0, c.shape[-1], MAX_STEP_FRAMES):
                out = m.decode_step(mx.array(c[..., i : i + MAX_STEP_FRAMES]))
                mx.eval(out)
                parts.append(np.array(out, dtype=np.float32)[:, 0])
        return np.concatenate(parts, -1)


def load(weights: Path, *, device: str | None = None, num_codebooks: int = 8,
         match_torch: bool = True) -> MlxCodec:
    return MlxCodec(weights, device=device, num_codebooks=num_codebooks, match_torch=match_torch)
