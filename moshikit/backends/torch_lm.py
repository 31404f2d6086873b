"""The Moshi LM through moshi's PyTorch ``LMModel`` and ``LMGen`` (CUDA, MPS or CPU).

Weights load through moshi's own loaders (``CheckpointInfo.from_hf_repo`` with local
paths, then ``CheckpointInfo.get_moshi``), so a published repo
(``kyutai/moshiko-pytorch-bf16`` and friends) loads through the same code as the
synthetic one.

Step semantics are moshi's (``LMGen.step``), which every LM backend follows: the
user codes given to call ``t`` are read by the model in that same call (as the
frame before the one it predicts; those of call 0 are never read), and the output
of call ``t`` is frame ``t - max(delays)``, text and audio aligned, so the first
``max(delays)`` calls return ``None``. moshi_mlx and Kyutai's Rust code read the
user's frame one call later; ``mlx_lm`` adapts (see there).

Resolving a checkpoint's files (``resolve_repo``) lives in ``lm_repo``, shared with MLX.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..errors import BackendError, ModelError
from .base import LMInfo, SamplingConfig

from .lm_repo import LMRepo, check_codes, resolve_repo, sampling_from  # noqa: F401 (re-exported)


def probe() -> str:
    import moshi
    import torch

    return f"torch {torch.__version__}, moshi {moshi.__version__}"


def checkpoint_info(repo: LMRepo):
    """moshi's ``CheckpointInfo`` for ``repo``, built by moshi's own loader from local paths."""
    from moshi.models import loaders

    for what, p in (("LM weights", repo.moshi_weights), ("text tokenizer", repo.tokenizer)):
        if not Path(p).is_file():
            raise ModelError(f"{repo.source}: missing {what} {Path(p).name}")
    if repo.config_path is None:
        # What from_hf_repo does for a repo without config.json: the Moshi 7B defaults.
        return loaders.CheckpointInfo(Path(repo.moshi_weights), Path(repo.mimi_weights), Path(repo.tokenizer))
    return loaders.CheckpointInfo.from_hf_repo(
        str(repo.source), moshi_weights=Path(repo.moshi_weights), mimi_weights=Path(repo.mimi_weights),
        tokenizer=Path(repo.tokenizer), config_path=Path(repo.config_path),
    )


def load_moshi_model(checkpoint, device: str, dtype):
    """The LMModel of ``checkpoint`` on ``device`` in ``dtype``.

    moshi's loader (0.2.13) casts every floating tensor of the file to the model's dtype,
    the int8 scales of a quantized (``"quantize": true``, the ``-q8`` repos) checkpoint
    included: ``QLinear.forward`` then refuses to run ("Expected `weight_scb` to have type
    float, but got bfloat16"; moshi issue #271). A quantized checkpoint is therefore loaded
    here the way moshi does it, but with every ``*_scb`` tensor kept in float32: the model
    is built on the ``meta`` device and the file's tensors are assigned in place.
    """
    if not (checkpoint.lm_config or {}).get("quantize"):
        return checkpoint.get_moshi(device=device, dtype=dtype)
    import torch
    from moshi.models import loaders
    from safetensors.torch import load_file

    weights = str(checkpoint.moshi_weights)
    if not weights.endswith((".safetensors", ".sft", ".sfts")):
        raise ModelError(f"{weights}: a quantized checkpoint must be a safetensors file")
    model = loaders.get_moshi_lm(None, lm_kwargs=checkpoint.lm_config, device="meta", dtype=dtype)
    state = load_file(weights, device=str(torch.device(device)))
    for key, value in state.items():
        if value.dtype.is_floating_point:
            keep_fp32 = key.endswith("_scb") or key.startswith(("condition_provider.", "fuser."))
            state[key] = value.float() if keep_fp32 else value.to(dtype)
    model.load_state_dict(state, assign=True)
    return model.eval()


def _torch_dtype(torch, dtype, device: str):
    if dtype is None or dtype == "auto":
        # bf16 is what the weights are published in, on GPUs that have it (fp16 on older
        # CUDA GPUs); CPUs run fp32 much faster.
        from ..platform import auto_dtype

        dtype = auto_dtype(device)
    if isinstance(dtype, str):
        try:
            return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                    "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]
        except KeyError:
            raise BackendError(f"unknown dtype {dtype!r}", hint="use bfloat16, float16 or float32") from None
    return dtype


def file_dtype(path) -> str | None:
    """``fp32`` when a safetensors file holds float32 tensors (load it so: nothing is rounded
    before quantising), ``bf16`` for a bf16/fp16 file (the published ones), None if unknown."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    except (OSError, ValueError, struct.error):
        return None
    kinds = {v.get("dtype") for k, v in header.items() if isinstance(v, dict) and k != "__metadata__"}
    return "fp32" if "F32" in kinds else "bf16"


def stream_state_bytes(model) -> int:
    """The memory one more stream of ``model`` (a moshi ``LMModel``) takes while it runs: its
    attention KV caches (keys and values, ``context`` steps of each layer) at the model's
    dtype, doubled for the step's activations. An estimate for sizing batches."""
    import torch
    from moshi.modules.transformer import StreamingMultiheadAttention

    size = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
    kv = 0
    for m in model.modules():
        if isinstance(m, StreamingMultiheadAttention):
            kv_dim = (m.embed_dim // m.num_heads) * (m.num_heads // getattr(m, "kv_repeat", 1))
            kv += 2 * (m.context or 16) * kv_dim * size
    return 2 * kv


class _Rng:
    """A private random stream for LMGen's sampling, swapped in around each step.

    LMGen samples from torch's global generators; keeping our own state means two
    models (or other torch code) running in between do not change a seeded run.
    """

    def __init__(self, torch, device) -> None:
        self._torch = torch
        self._kind = device.type if device.type in ("cuda", "mps") else "cpu"
        self._index = device.index if device.index is not None else 0
        self._state: tuple | None = None

    def _get(self) -> tuple:
        t = self._torch
        if self._kind == "cuda":
            return t.get_rng_state(), t.cuda.get_rng_state(self._index)
        if self._kind == "mps":
            return t.get_rng_state(), t.mps.get_rng_state()
        return t.get_rng_state(), None

    def _set(self, state: tuple) -> None:
        t = self._torch
        t.set_rng_state(state[0])
        if self._kind == "cuda":
            t.cuda.set_rng_state(state[1], self._index)
        elif self._kind == "mps":
            t.mps.set_rng_state(state[1])

    def seed(self, seed: int | None) -> None:
        if seed is None:
            self._state = None
            return
        saved = self._get()
        self._torch.manual_seed(seed)
        self._state = self._get()
        self._set(saved)

    def __enter__(self):
        if self._state is not None:
            self._saved = self._get()
            self._set(self._state)
        return self

    def __exit__(self, *exc) -> None:
        if self._state is not None:
            self._state = self._get()
            self._set(self._saved)


class TorchLM:
    """moshi's LMModel + LMGen behind the ``LMBackend`` Protocol."""

    def __init__(self, repo: LMRepo, *, device: str | None = None, dtype=None,
                 sampling: SamplingConfig | None = None) -> None:
        # moshi wraps helpers in torch.compile; on a CPU that costs tens of seconds.
        from .torch_env import prepare as _prepare_torch

        _prepare_torch()
        import torch

        from .torch_codec import pick_device

        self._torch = torch
        dev = pick_device(device)
        self.repo = repo
        self.checkpoint = checkpoint_info(repo)
        int8 = dtype == "int8"  # 8-bit weights (CPU): loaded in bf16, then quantised (torch_int8)
        if int8 and str(dev).split(":")[0] != "cpu":
            raise BackendError("--dtype int8 runs on the CPU only", hint="use bf16 or fp16 on a GPU")
        self.dtype = _torch_dtype(torch, (file_dtype(repo.moshi_weights) or "bf16") if int8 else dtype, dev)
        try:
            self.model = load_moshi_model(self.checkpoint, dev, self.dtype)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelError(f"{repo.moshi_weights}: cannot load as a Moshi LM: {str(exc).splitlines()[0]}") from None
        if int8:
            from .torch_int8 import quantize_lm

            quantize_lm(self.model)
            self.dtype = torch.float32
        precision = "int8" if int8 else {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")
        cp = self.model.condition_provider
        #: Hibiki's ``description`` conditioner: "very_good", and "very_bad" for classifier-free guidance.
        self.conditioned = bool(cp is not None and cp.conditioners)
        if self.conditioned and self.checkpoint.model_type != "hibiki":
            raise BackendError(f"{repo.source}: conditioned models ({self.checkpoint.model_type}) are not supported")
        self.cfg_coef = 1.0
        self._device = torch.device(dev)
        self.sampling = sampling_from(repo, sampling)
        self._rng = _Rng(torch, self._device)
        m = self.model
        self.info = LMInfo(backend="torch", device=dev, n_q=int(m.n_q), dep_q=int(m.dep_q),
                           text_card=int(m.text_card), card=int(m.card), delays=tuple(int(d) for d in m.delays),
                           context=int(m.context) if m.context is not None else 0,
                           extra_heads=len(getattr(m, "extra_heads", None) or ()), precision=precision)
        self._gen = None
        self._stream: ExitStack | None = None
        self._batch = 0
        self.reset(1)

    @property
    def input_codebooks(self) -> int:
        return self.info.input_codebooks

    def stream_bytes(self) -> int:
        """Estimated memory of one more stream in a batch (see ``stream_state_bytes``)."""
        return stream_state_bytes(self.model) * (2 if self.cfg_coef != 1.0 else 1)

    def text_tokenizer(self):
        """The repo's SentencePiece model (``sentencepiece.SentencePieceProcessor``)."""
        return self.checkpoint.get_text_tokenizer()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._batch = 0

    def reset(self, batch_size: int = 1) -> None:
        """Start ``batch_size`` fresh streams (and restart the seeded random stream)."""
        from moshi.models.lm import LMGen

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        s = self.sampling
        self._rng.seed(s.seed)
        # Streaming state is created and updated under inference_mode only (its
        # tensors become inference tensors in step, which may not be touched outside).
        with self._torch.inference_mode():
            if self._stream is not None and batch_size == self._batch:
                self._gen.reset_streaming()
                return
            self.close()
            self._gen = LMGen(self.model, use_sampling=True, temp=s.temp, temp_text=s.temp_text,
                              top_k=s.top_k, top_k_text=s.top_k_text, cfg_coef=self.cfg_coef,
                              condition_tensors=self._conditions(batch_size))
            self._stream = self._gen.streaming(batch_size)
            self._batch = batch_size

    def set_sampling(self, sampling: SamplingConfig) -> None:
        """Sample with ``sampling`` from the next step (the seed applies at the next ``reset``)."""
        self.sampling = sampling
        if self._gen is None:
            return
        audio = [(self._gen.temp, self._gen.top_k), (sampling.temp, sampling.top_k)]
        for name in ("temp", "temp_text", "top_k", "top_k_text"):
            setattr(self._gen, name, getattr(sampling, name))
        state = self._gen._streaming_state
        if audio[0] != audio[1] and state is not None and state.graphed_depth is not None:
            # moshi samples audio inside the depth transformer's step, which CUDA graphs: a
            # replay keeps the temperature and top-k it was captured with. Capture it again
            # (at its next call); text is sampled outside the graphs and needs nothing.
            state.graphed_depth.reset()

    def set_guidance(self, cfg_coef: float) -> None:
        """Classifier-free guidance strength of a conditioned (Hibiki) model; 1 turns it off.
        Takes effect at the next ``reset``."""
        if cfg_coef != 1.0 and not self.conditioned:
            raise BackendError(f"{self.repo.source}: guidance (--cfg) needs a conditioned model such as Hibiki")
        if float(cfg_coef) != self.cfg_coef:
            self.cfg_coef = float(cfg_coef)
            self.close()

    def _conditions(self, batch_size: int):
        """The condition tensors Hibiki was trained with: every stream "very_good"; with guidance,
        as many "very_bad" ones for the unconditioned half of the batch."""
        if not self.conditioned:
            return None
        from moshi.conditioners import ConditionAttributes

        def desc(value: str) -> list:
            return [ConditionAttributes(text={"description": value}, tensor={}) for _ in range(batch_size)]

        wanted = desc("very_good") + (desc("very_bad") if self.cfg_coef != 1.0 else [])
        return self.model.condition_provider.prepare_and_provide(wanted)

    def step_end_of_input(self) -> np.ndarray | None:
        """One step whose input codes are all ``card``: how Hibiki is told the source has ended."""
        x = self._torch.full((self._batch, self.input_codebooks, 1), self.info.card, dtype=self._torch.int64)
        with self._torch.inference_mode(), self._rng:
            out = self._gen.step(x.to(self._device))
        return None if out is None else out[:, :, 0].cpu().numpy()

    def reset_slots(self, mask: np.ndarray) -> None:
        """Restart the streams where ``mask`` is true; the others go on untouched."""
        torch = self._torch
        m = torch.from_numpy(np.asarray(mask, dtype=bool).reshape(self._batch).copy()).to(self._device)
        with torch.inference_mode():
            state = self._gen._streaming_state
            before = state.offset_cpu if state is not None else 0
            self._gen.reset_streaming(m)
            if state is not None and not bool(m.all()):
                # LMGen's reset zeroes its batch-wide step counter, which makes the next
                # max(delays) steps return None for every stream; the per-stream offsets
                # already mark the restarted ones (their rows come back as ids < 0).
                state.offset_cpu = before

    def _input(self, codes: np.ndarray):
        codes = check_codes(codes, self._batch, self.input_codebooks, self.info.card)
        x = self._torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))
        return x.to(self._device)[:, :, None]

    def step(self, codes: np.ndarray) -> np.ndarray | None:
        x = self._input(codes)
        with self._torch.inference_mode(), self._rng:
            out = self._gen.step(x)
        if out is None:
            return None
        return out[:, :, 0].cpu().numpy()

    def step_heads(self, codes: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        x = self._input(codes)
        with self._torch.inference_mode(), self._rng:
            out = self._gen.step_with_extra_heads(x)
        if out is None:
            return None, None
        tokens, heads = out
        probs = None
        if heads:  # each [B, 1, dim]: softmax over classes; class 0 is "pause"
            probs = self._torch.stack([h[:, 0, 0] for h in heads], dim=1).float().cpu().numpy()
        return tokens[:, :, 0].cpu().numpy(), probs


    def step_heads_masked(self, codes: np.ndarray, active: np.ndarray) -> tuple[np.ndarray | None,
                                                                                np.ndarray | None]:
        """``step_heads`` for the streams where ``active`` is true, through moshi's exec mask (the
        others' caches, offsets and token history stay as they were)."""
        torch = self._torch
        m = torch.from_numpy(np.asarray(active, dtype=bool).reshape(self._batch).copy()).to(self._device)
        with torch.inference_mode():
            self._gen.set_exec_mask(m)
        try:
            return self.step_heads(codes)
        finally:
            with torch.inference_mode():
                self._gen.set_exec_mask(torch.ones_like(m))


def load(repo_dir_or_config, *, device: str | None = None, dtype=None,
         sampling: SamplingConfig | None = None, moshi_weights: str | os.PathLike | None = None,
         revision: str | None = None) -> TorchLM:
    """Load a Moshi LM: a model directory, config.json, weights file or hub repo id."""
    repo = resolve_repo(repo_dir_or_config, moshi_weights=moshi_weights, revision=revision)
    return TorchLM(repo, device=device, dtype=dtype, sampling=sampling)
