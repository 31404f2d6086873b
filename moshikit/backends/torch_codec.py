"""Mimi through moshi's PyTorch ``MimiModel`` (CUDA, MPS or CPU)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .base import CodecInfo

#: The most frames one streaming call processes at once (longer calls are split).
MAX_STEP_FRAMES = 125


def probe() -> str:
    import moshi
    import torch

    return f"torch {torch.__version__}, moshi {moshi.__version__}"


def pick_device(device: str | None) -> str:
    """The torch device for ``--device``: ``gpu`` means this machine's CUDA GPU, else MPS
    (refused where there is none: torch itself knows no ``gpu`` device)."""
    import torch

    if device == "gpu":
        from ..platform import real_device

        return real_device("torch", device)
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
        self._batch = 0
        # Measured on a 2-core x86 CPU: 8 clips of 3 s as one batch ran at 11x real
        # time, one by one at 21x (big activations fall out of cache). Batch on GPUs only.
        self.batch_gain = dev != "cpu"
        m = self._mimi
        self.info = CodecInfo(
            backend="torch", device=dev, sample_rate=int(m.sample_rate), frame_size=int(m.frame_size),
            num_codebooks=int(m.num_codebooks), cardinality=int(m.cardinality),
            total_codebooks=int(m.total_codebooks),
        )

    @property
    def mimi_model(self):
        """moshi's ``MimiModel`` this codec runs (for references that drive moshi directly: bench)."""
        return self._mimi

    def _pcm(self, pcm: np.ndarray):
        x = np.ascontiguousarray(pcm, dtype=np.float32)
        return self._torch.from_numpy(x).to(self._device)[:, None, :]

    def _codes(self, codes: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)).to(self._device)

    def _end_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        # A Ctrl-C inside moshi's streaming() can leave modules streaming with no stack to
        # close them: clear every module's state so the codec stays usable after an interrupt.
        self._mimi._stop_streaming()

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        self._end_stream()
        with self._torch.inference_mode():
            return self._mimi.encode(self._pcm(pcm)).cpu().numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._end_stream()
        with self._torch.inference_mode():
            return self._mimi.decode(self._codes(codes))[:, 0].float().cpu().numpy()

    def reset_stream(self, batch_size: int = 1) -> None:
        """Start ``batch_size`` fresh streams. A stream of the same batch size is reset in place,
        as moshi's own server does (``reset_streaming``): its CUDA graphs stay captured, so a
        new session (chat after its warm-up, each ``serve`` session) does not pay capture again."""
        if self._stream is not None and self._batch == batch_size:
            with self._torch.inference_mode():
                self._mimi.reset_streaming()
            state = self._mimi.get_streaming_state()[""]
            self._enc_steps = self._enc_steps.restarted(
                lambda: _recapture(state.graphed_encoder, state.graphed_tr_enc))
            self._dec_steps = self._dec_steps.restarted(
                lambda: _recapture(state.graphed_decoder, state.graphed_tr_dec))
            return
        self._end_stream()
        self._stream = self._mimi.streaming(batch_size)
        self._batch = batch_size
        _widen_kv_caches(self._mimi, 2 * MAX_STEP_FRAMES)
        graphed = cuda_graphed(self._mimi)
        self._enc_steps, self._dec_steps = StepShapes(graphed), StepShapes(graphed)

    def reset_slots(self, mask: np.ndarray) -> None:
        """Restart the streams of the current batch where ``mask`` is true (encoder and decoder)."""
        assert self._stream is not None, "call reset_stream() first"
        m = self._torch.from_numpy(np.asarray(mask, dtype=bool).copy()).to(self._device)
        with self._torch.inference_mode():
            self._mimi.reset_streaming(m)

    def open_encoder(self, batch: int = 1, *, single_thread: bool = False) -> "_OwnStateEncoder":
        """A streaming encoder for one stream with a state of its own (see ``_OwnStateEncoder``).
        Its state is swapped into the one shared model, so encoders take turns (``single_thread``
        changes nothing here: this backend has no ``parallel_streams``)."""
        if batch != 1:
            raise ValueError("the torch codec's own-state encoders hold one stream each")
        return _OwnStateEncoder(self)

    def encode_step(self, pcm: np.ndarray) -> np.ndarray:
        assert self._stream is not None, "call reset_stream() first"
        return _encode_in_steps(self, self._enc_steps, pcm)

    def decode_step(self, codes: np.ndarray) -> np.ndarray:
        assert self._stream is not None, "call reset_stream() first"
        frame = self.info.frame_size
        with self._torch.inference_mode():
            parts = []
            for start, stop, pad in self._dec_steps.plan(codes.shape[-1]):
                piece = codes[..., start:stop]
                if pad:
                    piece = np.pad(piece, ((0, 0), (0, 0), (0, pad)))
                out = self._mimi.decode(self._codes(piece))
                parts.append(out[..., : (stop - start) * frame] if pad else out)
            return self._torch.cat(parts, -1)[:, 0].float().cpu().numpy()


class StepShapes:
    """The frame counts of one stream's Mimi calls, kept to what moshi's CUDA graphs allow.

    On CUDA, moshi's streaming Mimi runs its encoder, decoder and transformers through
    ``CUDAGraphed``: the first call runs plainly, the second is captured, and every later
    call must have the captured call's shape (else ``ValueError: Argument #0 had shape
    ...``). A graphed stream therefore runs every call at one size, the first call's
    (at most ``MAX_STEP_FRAMES``): longer calls are split into calls of that size, and a
    shorter last call is zero-padded to it and its output trimmed. Mimi is causal, so the
    padding changes nothing before it (codes and audio are bit-identical on a CPU), but
    it ends the stream: a call after a padded one raises. Ungraphed streams (CPU, MPS,
    ``NO_CUDA_GRAPH=1``) split as before: calls of ``MAX_STEP_FRAMES`` and a short tail.
    """

    def __init__(self, graphed: bool) -> None:
        self.graphed = graphed
        self.frames: int | None = None  # the one call size of a graphed stream
        self.ended = False
        self._captured: int | None = None  # a reset stream's size, still captured from before
        self._recapture = None

    def restarted(self, recapture) -> "StepShapes":
        """The plan of a stream reset in place, its graphs kept: its first call keeps the
        captured size when that is the size it wants (a live loop's one frame), else
        ``recapture()`` makes the graphs capture the new size."""
        new = StepShapes(self.graphed)
        new._captured, new._recapture = self.frames, recapture
        return new

    def plan(self, n: int) -> list[tuple[int, int, int]]:
        """(start, stop, pad) of each Mimi call for ``n`` more frames."""
        if not self.graphed:
            return [(i, min(i + MAX_STEP_FRAMES, n), 0) for i in range(0, n, MAX_STEP_FRAMES)]
        if n and self.ended:
            raise RuntimeError("this CUDA-graphed Mimi stream ended with a padded call; call reset_stream() first")
        if self.frames is None and n:
            self.frames = min(n, MAX_STEP_FRAMES)
            if self._captured is not None and self._captured != self.frames:
                self._recapture()
            self._captured = self._recapture = None
        size = self.frames or MAX_STEP_FRAMES
        calls = []
        for i in range(0, n, size):
            stop = min(i + size, n)
            calls.append((i, stop, size - (stop - i)))
        if calls and calls[-1][2]:
            self.ended = True
        return calls


def _recapture(*graphs) -> None:
    """Make moshi's graph wrappers capture again at their next call (a new call size)."""
    for g in graphs:
        if g is not None:
            g.reset()


def cuda_graphed(mimi) -> bool:
    """Whether moshi will CUDA-graph this streaming Mimi (read from its streaming state)."""
    import os

    state = mimi.get_streaming_state().get("")
    graph = getattr(state, "graphed_encoder", None)
    if graph is None or getattr(graph, "disable", True):
        return False
    return os.environ.get("NO_CUDA_GRAPH", "").lower() in {"0", "no", "n", ""}


def _encode_in_steps(codec: "TorchCodec", steps: StepShapes, pcm: np.ndarray) -> np.ndarray:
    frame = codec.info.frame_size
    if pcm.shape[-1] % frame:
        raise ValueError(f"encode_step takes whole frames of {frame} samples, not {pcm.shape[-1]}")
    with codec._torch.inference_mode():
        parts = []
        for start, stop, pad in steps.plan(pcm.shape[-1] // frame):
            piece = pcm[:, start * frame : stop * frame]
            if pad:
                piece = np.pad(piece, ((0, 0), (0, pad * frame)))
            out = codec._mimi.encode(codec._pcm(piece))
            parts.append(out[..., : stop - start] if pad else out)
        return codec._torch.cat(parts, -1).cpu().numpy()


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
        try:
            _widen_kv_caches(m, 2 * MAX_STEP_FRAMES)
            self._state = m.get_streaming_state()
            self._steps = StepShapes(cuda_graphed(m))
        finally:
            stack.close()

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """``pcm`` [1, n] (whole frames) -> codes [1, K, n / 1920], continuing this stream."""
        c, m = self._codec, self._codec._mimi
        c._end_stream()
        m.set_streaming_state(self._state)
        try:
            return _encode_in_steps(c, self._steps, pcm)
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
