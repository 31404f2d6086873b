"""The Moshi LM through moshi_mlx's ``Lm`` and ``LmGen`` (Apple silicon; CPU elsewhere).

Loading: the config comes from the repo's config.json through
``LmConfig.from_config_dict`` (``config_v0_1()``, the Moshi 7B, when a repo has
none, as moshi_mlx's own scripts do). Both weight layouts load: the MLX repos'
(``kyutai/moshiko-mlx-*``: ``Lm``'s parameter names, ``Lm.load_weights``) and the
PyTorch repos' (``kyutai/moshiko-pytorch-bf16``: converted on load by moshi_mlx's
``Lm.load_pytorch_weights``). The layout is read from the file's tensor names.
``.q4``/``.q8`` MLX files are quantized as moshi_mlx does before loading.

Step semantics follow moshi's PyTorch ``LMGen`` (see ``torch_lm``), not
moshi_mlx's ``LmGen`` as is. In training (``LMModel.forward``) position ``s``
reads the user's frame ``s - 1 - delay`` and predicts the model's frame ``s``.
``LmGen`` (like Kyutai's Rust ``lm_generate_multistream``) stores the user frame
of call ``t`` as frame ``t``, so it is first read in call ``t + 1``. ``LMGen``
reads it in call ``t`` already, as frame ``t - 1`` (and never reads the frame of
call 0): one frame (80 ms) less latency, the user's stream shifted one frame
earlier against the model's own. Measured on the same weights: native ``LmGen``
equals ``LMGen`` fed the previous frame, token for token. So that both backends
give the same outputs for the same inputs, ``step`` also writes the frame one
column back in ``LmGen``'s token buffer before stepping. Outputs are frame
``t - max(delays)`` with text and audio aligned, as ``LMGen`` returns them
(``LmGen.step`` itself returns the text of frame ``t``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import BackendError, ModelError
from .base import LMInfo, SamplingConfig
from .lm_repo import LMRepo, check_codes, resolve_repo, sampling_from

#: LmGen's token buffer is allocated for this many steps and rolled when full.
BUFFER_STEPS = 512


def probe() -> str:
    from importlib.metadata import version

    import mlx.core as mx  # noqa: F401  (fails without the runtime: libmlx.so)
    import moshi_mlx  # noqa: F401

    return f"mlx {version('mlx')}, moshi_mlx {version('moshi_mlx')}"


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of a safetensors file, from its header only."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ModelError(f"{path}: not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ModelError(f"{path}: not a safetensors file")
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]


def weights_layout(path: str | os.PathLike) -> str:
    """``"pytorch"`` (published PyTorch names) or ``"mlx"`` (moshi_mlx ``Lm`` names)."""
    keys = set(safetensors_keys(path))
    if "out_norm.alpha" in keys:
        return "pytorch"
    if "out_norm.weight" in keys:
        return "mlx"
    raise ModelError(f"{path}: not a Moshi LM checkpoint (no out_norm tensor)")


def lm_config(repo: LMRepo):
    """moshi_mlx's ``LmConfig`` for ``repo`` (Moshi 7B's when it has no config.json)."""
    from moshi_mlx import models

    if repo.config is None:
        return models.config_v0_1()
    return models.LmConfig.from_config_dict(repo.config)


def _mx_dtype(mx, dtype, on_gpu: bool):
    if dtype is None or dtype == "auto":
        return mx.bfloat16 if on_gpu else mx.float32
    if isinstance(dtype, str):
        try:
            return {"bf16": mx.bfloat16, "bfloat16": mx.bfloat16, "fp16": mx.float16, "float16": mx.float16,
                    "fp32": mx.float32, "float32": mx.float32}[dtype]
        except KeyError:
            raise BackendError(f"unknown dtype {dtype!r}", hint="use bfloat16, float16 or float32") from None
    return dtype


def _mx_device(mx, device: str | None):
    if device in (None, "auto"):
        return mx.default_device()
    if device == "cpu":
        return mx.cpu
    if device in ("gpu", "metal", "mps"):
        if not mx.metal.is_available():
            raise BackendError("MLX has no GPU here (Metal is Apple-only)", hint="use --device cpu")
        return mx.gpu
    raise BackendError(f"the mlx backend runs on cpu or gpu (Metal), not {device!r}")


def _top_k(k: int, vocab: int) -> int | None:
    # moshi_mlx's top-k sampler rejects k >= vocab; torch's clamps it (= no top-k).
    return k if 0 < k < vocab else None


class _Rng:
    """A private MLX random stream, swapped into ``mx.random.state`` around each step."""

    def __init__(self, mx) -> None:
        self._mx = mx
        self._key = None

    def seed(self, seed: int | None) -> None:
        self._key = None if seed is None else self._mx.random.key(seed)

    def __enter__(self):
        if self._key is not None:
            self._saved = self._mx.random.state[0]
            self._mx.random.state[0] = self._key
        return self

    def __exit__(self, *exc) -> None:
        if self._key is not None:
            self._key = self._mx.random.state[0]
            self._mx.random.state[0] = self._saved


class MlxLM:
    """moshi_mlx's Lm + LmGen behind the ``LMBackend`` Protocol."""

    def __init__(self, repo: LMRepo, *, device: str | None = None, dtype=None,
                 sampling: SamplingConfig | None = None) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        from moshi_mlx import models

        self._mx = mx
        self._dev = _mx_device(mx, device)
        on_gpu = self._dev == mx.gpu
        self.repo = repo
        self.dtype = _mx_dtype(mx, dtype, on_gpu)
        path = Path(repo.moshi_weights)
        for what, p in (("LM weights", path), ("text tokenizer", Path(repo.tokenizer))):
            if not p.is_file():
                raise ModelError(f"{repo.source}: missing {what} {p.name}")
        self.cfg = cfg = lm_config(repo)
        self.layout = weights_layout(path)
        with mx.stream(self._dev):
            model = models.Lm(cfg)
            try:
                if self.layout == "pytorch":
                    model.load_pytorch_weights(str(path), cfg, strict=True)
                else:
                    if path.name.endswith(".q4.safetensors"):
                        nn.quantize(model, bits=4, group_size=32)
                    elif path.name.endswith(".q8.safetensors"):
                        nn.quantize(model, bits=8, group_size=64)
                    model.load_weights(str(path), strict=True)
            except (ValueError, KeyError) as exc:
                raise ModelError(f"{path}: cannot load as a Moshi LM here: {str(exc).splitlines()[0]}") from None
            model.set_dtype(self.dtype)
            mx.eval(model.parameters())
        self.model = model
        self.sampling = sampling_from(repo, sampling)
        self._rng = _Rng(mx)
        delays = [0] + [int(d) for d in cfg.audio_delays]
        self.info = LMInfo(backend="mlx", device="gpu" if on_gpu else "cpu", n_q=int(cfg.audio_codebooks),
                           dep_q=int(cfg.generated_codebooks), text_card=int(cfg.text_out_vocab_size),
                           card=int(cfg.audio_vocab_size - 1), delays=tuple(delays),
                           context=int(cfg.transformer.context))
        self._max_delay = max(delays)
        self._gen = None
        self._batch = 0
        self.reset(1)

    @property
    def input_codebooks(self) -> int:
        return self.info.input_codebooks

    def text_tokenizer(self):
        """The repo's SentencePiece model (``sentencepiece.SentencePieceProcessor``)."""
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(str(self.repo.tokenizer))  # type: ignore[call-arg]

    def reset(self, batch_size: int = 1) -> None:
        """Start ``batch_size`` fresh streams (and restart the seeded random stream)."""
        from moshi_mlx.models import LmGen
        from moshi_mlx.utils.sampling import Sampler

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        s, info = self.sampling, self.info
        self._rng.seed(s.seed)
        for cache in self.model.transformer_cache:
            cache.reset()
        # top_p=1 turns off moshi_mlx's default nucleus sampling: plain top-k as in LMGen.
        text = Sampler(temp=s.temp_text, top_k=_top_k(s.top_k_text, info.text_card), top_p=1.0)
        audio = Sampler(temp=s.temp, top_k=_top_k(s.top_k, info.card), top_p=1.0)
        with self._mx.stream(self._dev):
            self._gen = LmGen(self.model, max_steps=BUFFER_STEPS, text_sampler=text, audio_sampler=audio,
                              batch_size=batch_size, check=False)
        self._batch = batch_size

    def set_sampling(self, sampling: SamplingConfig) -> None:
        """Sample with ``sampling`` from the next ``reset`` (the samplers are made there)."""
        self.sampling = sampling

    def _roll(self) -> None:
        """Keep the last few columns of LmGen's token buffer once it is full."""
        mx, gen = self._mx, self._gen
        keep = self._max_delay + 2
        fresh = mx.full((self._batch, gen.num_codebooks, gen.max_steps - keep), gen.ungenerated_token,
                        dtype=mx.int32)
        gen.gen_sequence = mx.concatenate([gen.gen_sequence[:, :, -keep:], fresh], axis=2)
        gen.step_idx = keep

    def step(self, codes: np.ndarray) -> np.ndarray | None:
        codes = check_codes(codes, self._batch, self.input_codebooks, self.info.card)
        mx, gen = self._mx, self._gen
        with mx.stream(self._dev), self._rng:
            if gen.step_idx >= gen.max_steps:
                self._roll()
            x = mx.array(np.ascontiguousarray(codes, dtype=np.int32))
            t = gen.step_idx
            if t > 0:
                # Make this frame the one read now (LMGen's convention), see the module doc.
                gen.gen_sequence[:, 1 + gen.main_codebooks :, t - 1] = x
            gen.step(x)
            frame = gen.step_idx - 1 - self._max_delay
            if frame < 0:
                # MLX is lazy: evaluate now, so this step's cost is paid in this call.
                mx.eval(gen.gen_sequence)
                return None
            out = gen.gen_sequence[:, : 1 + self.info.dep_q, frame]
            return np.array(out).astype(np.int64)


def load(repo_dir_or_config, *, device: str | None = None, dtype=None,
         sampling: SamplingConfig | None = None, moshi_weights: str | os.PathLike | None = None,
         revision: str | None = None) -> MlxLM:
    """Load a Moshi LM: a model directory, config.json, weights file or hub repo id."""
    repo = resolve_repo(repo_dir_or_config, moshi_weights=moshi_weights, revision=revision)
    return MlxLM(repo, device=device, dtype=dtype, sampling=sampling)
