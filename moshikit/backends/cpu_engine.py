"""moshikit's CPU engine for Kyutai's language models (registry name ``cpu``).

The checkpoint loads through moshi's own loader (``torch_lm``), then its temporal transformer
is rebuilt for a CPU (``cpu_step``: a compact KV cache attended over the positions actually
filled, fused projections, matmul kernels picked from the CPU and the batch by
``cpu_kernels``) and moshi's model is dropped. What happens around the transformer follows
moshi's ``LMGen`` step by step (the token cache, delays, initial tokens, what the first
``max(delays)`` calls return; see ``torch_lm`` for the step semantics), so text is moshi's.

Models with a depth transformer (Moshi) sample their audio tokens through ``cpu_depth`` after
the text token, as ``LMGen.depformer_step``. Runs Kyutai's speech-to-text models (``transcribe``
uses it on a CPU by default), Moshi and Hibiki (its conditions summed into the input,
classifier-free guidance over a doubled batch, the end-of-input step). Kyutai TTS runs on the same
step and depth transformer through ``cpu_tts`` (``speak -b cpu``); as a bare LM it is refused.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import BackendError, ModelError
from .base import LMInfo, SamplingConfig
from .lm_repo import LMRepo, check_codes, resolve_repo, sampling_from

#: moshi's token ids: "not generated yet" (LMGen's cache) and "no input" (embeds to zero).
UNGENERATED = -2


def probe() -> str:
    import moshi
    import torch

    return f"torch {torch.__version__}, moshi {moshi.__version__}"


def engine_format(dtype, weights=None) -> str:
    """``--dtype`` as the engine's weight format: int8, bf16 or fp32. ``auto`` (or None) as for
    every model on a CPU (``cpu_precision.choose`` on the ``weights`` file): int8 for a checkpoint
    of real size where PyTorch has int8 CPU kernels, fp32 for a small one (the test checkpoints)."""
    if dtype in (None, "auto"):
        from ..cpu_precision import choose

        dtype = choose(None, "cpu", weights, backend="cpu").dtype
    if dtype in (None, "auto", "fp32", "float32"):
        return "fp32"
    if dtype in ("bf16", "bfloat16"):
        return "bf16"
    if dtype == "int8":
        return "int8"
    raise BackendError(f"the cpu backend runs int8, bf16 or fp32 weights, not {dtype!r}",
                       hint="use --dtype int8 (or auto), or --backend torch")


class CpuLM:
    """A Moshi-family LM on moshikit's CPU engine, behind ``StreamsLMBackend``."""

    def __init__(self, repo: LMRepo, *, device: str | None = None, dtype=None,
                 sampling: SamplingConfig | None = None) -> None:
        from .torch_env import prepare as _prepare_torch

        _prepare_torch()
        import torch

        from .cpu_depth import unsupported_depth
        from .cpu_kernels import kv_dtype
        from .cpu_lmgen import Engine
        from .cpu_step import unsupported
        from .torch_lm import checkpoint_info, file_dtype, load_moshi_model

        if str(device or "cpu").split(":")[0] not in ("cpu", "auto"):
            raise BackendError(f"the cpu backend runs on the CPU, not {device}", hint="use --backend torch on a GPU")
        self._torch = torch
        self.repo = repo
        self.checkpoint = checkpoint_info(repo)
        if (self.checkpoint.lm_config or {}).get("quantize"):
            raise BackendError(f"{repo.source}: a quantized (-q8) checkpoint", hint="use the bf16 checkpoint, or "
                               "--backend torch")
        precision = engine_format(dtype, repo.moshi_weights)
        load_dtype = torch.float32 if precision == "fp32" or file_dtype(repo.moshi_weights) == "fp32" \
            else torch.bfloat16
        try:
            model = load_moshi_model(self.checkpoint, "cpu", load_dtype)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelError(f"{repo.moshi_weights}: cannot load as a Moshi LM: {str(exc).splitlines()[0]}") from None
        why = unsupported(model) or unsupported_depth(model)
        if why:
            raise BackendError(f"{repo.source}: the cpu backend cannot run this model yet ({why})",
                               hint="use --backend torch")
        cp = model.condition_provider
        self.conditioned = bool(cp is not None and cp.conditioners)
        if self.conditioned and self.checkpoint.model_type != "hibiki":
            raise BackendError(f"{repo.source}: the cpu backend cannot run conditioned models of type "
                               f"{self.checkpoint.model_type!r}", hint="use --backend torch")
        #: Hibiki's ``description`` conditions, summed into the input: "very_good" for every stream,
        #: "very_bad" for the unconditioned half under classifier-free guidance.
        self._conditions = {v: _condition(model, v) for v in ("very_good", "very_bad")} if self.conditioned else {}
        self.cfg_coef = 1.0
        self._cond = None
        self._built = Engine(model, precision, kv_dtype(precision), release=True)
        self.engine, self.depth = self._built.step, self._built.depth
        self.delays = np.asarray(model.delays, dtype=np.int64)
        self.initial = np.array([model.text_initial_token_id] + [model.initial_token_id] * int(model.n_q),
                                dtype=np.int64)
        self.info = LMInfo(backend="cpu", device="cpu", n_q=int(model.n_q), dep_q=int(model.dep_q),
                           text_card=int(model.text_card), card=int(model.card),
                           delays=tuple(int(d) for d in model.delays), context=int(model.context),
                           extra_heads=len(model.extra_heads), precision=precision)
        del model
        self.sampling = sampling_from(repo, sampling)
        self._generator = torch.Generator()
        self._batch = 0
        self.reset(1)

    @property
    def input_codebooks(self) -> int:
        return self.info.input_codebooks

    @property
    def model(self):
        """The engine's modules (weights), for memory accounting."""
        return self.engine

    def weight_bytes(self) -> int:
        return self._built.weight_bytes()

    def stream_bytes(self) -> int:
        """The most one stream's KV cache grows to (every layer's keys and values over the context)."""
        step = self.engine
        return len(step.layers) * 2 * step.dim * step.context * step.kv[0].element_size()

    def reserve(self, frames: int) -> None:
        """Allocate every stream's KV cache for ``frames`` frames now (the context at most)."""
        self.engine.reserve(frames)

    def text_tokenizer(self):
        return self.checkpoint.get_text_tokenizer()

    def close(self) -> None:
        self._batch = 0

    def reset(self, batch_size: int = 1) -> None:
        """Start ``batch_size`` fresh streams (and restart the seeded random stream)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        rows = batch_size * (2 if self.cfg_coef != 1.0 else 1)  # guidance: the unconditioned half after
        self.engine.reset(rows)
        if self.depth is not None:
            self.depth.reset(rows)
        if self.conditioned:
            c = self._conditions
            self._cond = self._torch.stack([c["very_good"]] * batch_size
                                           + [c["very_bad"]] * (rows - batch_size))
        self._batch = batch_size
        # LMGen's token cache: [B, 1 + n_q, max_delay + 2], per-stream offsets, a batch-wide step count.
        self._cache = np.full((batch_size, 1 + self.info.n_q, int(self.delays.max()) + 2), UNGENERATED, np.int64)
        self._offsets = np.zeros(batch_size, np.int64)
        self._steps = 0
        if self.sampling.seed is not None:
            self._generator.manual_seed(int(self.sampling.seed))
        else:
            self._generator.seed()

    def set_sampling(self, sampling: SamplingConfig) -> None:
        """Sample with ``sampling`` from the next step (the seed applies at the next ``reset``)."""
        self.sampling = sampling

    def set_guidance(self, cfg_coef: float) -> None:
        """Classifier-free guidance strength of a conditioned (Hibiki) model; 1 turns it off. The
        streams restart (as on the torch backend, where it takes effect at the next ``reset``)."""
        if cfg_coef != 1.0 and not self.conditioned:
            raise BackendError(f"{self.repo.source}: guidance (--cfg) needs a conditioned model such as Hibiki")
        if float(cfg_coef) != self.cfg_coef:
            self.cfg_coef = float(cfg_coef)
            self.reset(self._batch)

    def step_end_of_input(self) -> np.ndarray | None:
        """One step whose input codes are all ``card``: how Hibiki is told the source has ended."""
        codes = np.full((self._batch, self.input_codebooks), self.info.card, dtype=np.int64)
        return self._step(codes, end_of_input=True)[0]

    def reset_slots(self, mask: np.ndarray) -> None:
        """Restart the streams where ``mask`` is true; the others go on untouched."""
        m = np.asarray(mask, dtype=bool).reshape(self._batch)
        self._offsets[m] = 0
        if self.cfg_coef != 1.0:
            m = np.concatenate([m, m])
        self.engine.reset_slots(self._torch.from_numpy(m.copy()))
        # As moshi's LMGen after a masked reset (torch_lm.reset_slots): the batch-wide count stays,
        # restarted streams return ids < 0 until their delay has passed.
        if m.all():
            self._steps = 0

    def _sample(self, logits, temp: float, top_k: int):
        """Tokens [B] (a tensor) from ``logits`` [B, card]: greedy at ``temp`` 0, else moshi's
        temperature and top-k (Gumbel-max draw from this LM's seeded generator)."""
        torch = self._torch
        if temp <= 0:
            return torch.argmax(logits, dim=-1)
        probs = torch.softmax(logits / temp, dim=-1)
        if top_k > 0:
            probs, index = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
        else:
            index = None
        noise = torch.empty_like(probs).exponential_(1, generator=self._generator)
        pick = (probs / noise).argmax(dim=-1, keepdim=True)
        return (pick if index is None else index.gather(-1, pick))[:, 0]

    def _step(self, codes: np.ndarray, active: np.ndarray | None = None, end_of_input: bool = False):
        """LMGen's ``_step``: (ids [B, 1 + dep_q] or None, temporal output of the B streams). With
        ``active`` (bool [B]), as LMGen under an exec mask: only those streams advance."""
        if not end_of_input:  # Hibiki's end-of-input step feeds ``card`` itself
            codes = check_codes(codes, self._batch, self.input_codebooks, self.info.card)
        b, cache, d, off = self._batch, self._cache, self.delays, self._offsets
        ct = cache.shape[2]
        on = np.ones(b, bool) if active is None else np.asarray(active, bool).reshape(b)
        rows = np.flatnonzero(on)[:, None]
        k = 1 + self.info.n_q
        first = 1 + self.info.dep_q  # the input codebooks' rows (the model's own audio before them)
        cache[rows, np.arange(first, k)[None], (off[on][:, None] + d[None, first:]) % ct] = codes[on]
        tokens = cache[np.arange(b)[:, None], np.arange(k)[None], (off % ct)[:, None]]
        tokens = np.where(off[:, None] <= d[None, :], self.initial[None], tokens)
        guided = self.cfg_coef != 1.0
        if guided:  # the same tokens for the unconditioned half (moshi's cfg without masking)
            tokens = np.concatenate([tokens, tokens])
        mask = None if active is None else self._torch.from_numpy(np.concatenate([on, on]) if guided else on.copy())
        out, logits = self.engine(self._torch.from_numpy(tokens), mask, self._cond)
        if guided:
            cond, null = logits.chunk(2)
            logits = null + (cond - null) * self.cfg_coef
        s = self.sampling
        text = self._sample(logits, s.temp_text, s.top_k_text)
        off += on
        self._steps += 1
        cache[rows[:, 0], 0, off[on] % ct] = text.numpy()[on]
        if self.depth is not None:
            audio = self.depth(out, text, lambda x: self._sample(x, s.temp, s.top_k), self.cfg_coef).numpy()
            cache[rows, np.arange(1, first)[None], (off[on] % ct)[:, None]] = audio[on]
        out = out[:b]  # the conditioned streams (extra heads read them)
        max_delay = int(d.max())
        if self._steps <= max_delay:
            return None, out
        ids = cache[np.arange(b)[:, None], np.arange(first)[None], (off[:, None] - max_delay + d[None, :first]) % ct]
        ids[off <= max_delay] = UNGENERATED
        return ids, out

    def step(self, codes: np.ndarray) -> np.ndarray | None:
        return self._step(codes)[0]

    def step_heads(self, codes: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        ids, out = self._step(codes)
        if ids is None:
            return None, None
        probs = self.engine.extra_heads(out)
        return ids, None if probs is None else probs.float().numpy()

    def step_heads_masked(self, codes: np.ndarray, active: np.ndarray) -> tuple[np.ndarray | None,
                                                                                np.ndarray | None]:
        """``step_heads`` for the streams where ``active`` is true; the others stay where they are."""
        ids, out = self._step(codes, active)
        if ids is None:
            return None, None
        probs = self.engine.extra_heads(out)
        return ids, None if probs is None else probs.float().numpy()


def _condition(model, value: str):
    """The vector Hibiki's ``description`` condition ``value`` adds to every input, [dim] float32."""
    import torch
    from moshi.conditioners import ConditionAttributes

    with torch.no_grad():
        tensors = model.condition_provider.prepare_and_provide([ConditionAttributes(text={"description": value},
                                                                                    tensor={})])
        return model.fuser.get_sum(tensors)[0, 0].float().clone()


def load(repo_dir_or_config, *, device: str | None = None, dtype=None,
         sampling: SamplingConfig | None = None, moshi_weights: str | os.PathLike | None = None,
         revision: str | None = None) -> CpuLM:
    """Load a Kyutai LM on the CPU engine: a model directory, config.json, weights file or hub repo id."""
    repo = resolve_repo(repo_dir_or_config, moshi_weights=moshi_weights, revision=revision)
    return CpuLM(repo, device=device, dtype=dtype, sampling=sampling)
