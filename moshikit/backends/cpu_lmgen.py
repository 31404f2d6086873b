"""moshi's ``LMGen`` over moshikit's CPU engine: the same constructor, hooks and streaming calls,
the temporal and depth transformers replaced by ``cpu_step`` and ``cpu_depth``.

Code written for moshi's ``LMGen`` (Kyutai TTS's generation in ``tts.engine``) runs on the engine
by building ``CpuLMGen(lm, ..., engine=engine)`` instead: the token cache, delays, initial
tokens, classifier-free guidance (a doubled batch, ``cfg_is_masked_until``, ``cfg_is_no_text``),
the hooks (``on_text_logits_hook``, ``on_text_hook``, ``on_audio_hook``, each seeing and editing
the tensors LMGen gives them) and ``depformer_replace_tokens`` follow ``LMGen._step`` line by
line; tokens are drawn by moshi's own ``sample_token`` from torch's global generator, as LMGen
draws them, so a seed set with ``torch.manual_seed`` repeats a run. The conditions come from
the moshi model's condition fuser: the summed ones go into the input, the cross-attention
source's keys and values are computed once per stream (``Step.set_cross``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class Engine:
    """The engine's modules for one moshi ``LMModel``: its temporal step and its depth transformer."""

    def __init__(self, model, kind: str, kv_dtype: torch.dtype, *, release: bool = False) -> None:
        """``release``: empty what the engine copies out of ``model`` (a moshi ``LMModel``): its
        temporal layers as they are converted (``Step``: the peak stays near one copy), then its depth
        transformer, embeddings and heads. What else the model holds (conditioners, fuser) stays."""
        from .cpu_depth import Depth
        from .cpu_step import Step

        self.initial = model._get_initial_token().clone()  # [1, K, 1], as LMGen reads it (before any release)
        with torch.no_grad():
            self.step = Step(model, kind, kv_dtype, release=release)
            self.depth = Depth(model, kind) if model.dep_q else None
        if release:
            for module in (model.transformer, model.depformer, model.emb, model.depformer_emb, model.depformer_in,
                           model.linears, model.text_linear, model.depformer_text_emb, model.extra_heads):
                for p in module.parameters() if module is not None else ():
                    p.data = torch.empty(0, dtype=p.dtype, device=p.device)  # temporal layers: on meta already

    def weight_bytes(self) -> int:
        return self.step.weight_bytes() + (self.depth.weight_bytes() if self.depth is not None else 0)


class CpuLMGen:
    """``moshi.models.lm.LMGen`` on the engine (see the module's docstring); ``engine``: an ``Engine``."""

    def __init__(self, lm_model, use_sampling: bool = True, temp: float = 0.8, temp_text: float = 0.7,
                 top_k: int = 250, top_k_text: int = 25, cfg_coef: float = 1.0, check: bool = False,
                 condition_tensors=None, on_text_hook=None, on_text_logits_hook=None, on_audio_hook=None,
                 support_out_of_sync: bool = False, cfg_is_masked_until: list[int] | None = None,
                 cfg_is_no_text: bool = False, *, engine: Engine) -> None:
        self.lm_model, self.engine = lm_model, engine
        self.use_sampling, self.temp, self.temp_text = use_sampling, temp, temp_text
        self.top_k, self.top_k_text, self.cfg_coef = top_k, top_k_text, cfg_coef
        self.condition_tensors = condition_tensors
        self.on_text_hook, self.on_text_logits_hook, self.on_audio_hook = on_text_hook, on_text_logits_hook, on_audio_hook
        self.support_out_of_sync = support_out_of_sync
        self.cfg_is_masked_until, self.cfg_is_no_text = cfg_is_masked_until, cfg_is_no_text
        self.max_delay = max(lm_model.delays)
        self.delays = torch.tensor(lm_model.delays, dtype=torch.long)
        self.batch = 0
        self.cache = self.offsets = self.exec_mask = self.cond_sum = self.masked_until = None
        self.offset_cpu = 0

    # ------------------------------------------------------------------ streaming state
    @contextmanager
    def streaming(self, batch_size: int):
        """LMGen's ``streaming(batch_size)``: fresh streams for the block, conditions applied."""
        self._start(batch_size)
        try:
            yield self
        finally:
            self.batch = 0
            self.cache = None

    def _start(self, batch: int) -> None:
        lm = self.lm_model
        rows = 2 * batch if self.cfg_coef != 1.0 else batch
        self.cache = torch.full((batch, lm.num_codebooks, self.max_delay + 2), lm.ungenerated_token_id,
                                dtype=torch.long)
        self.offsets = torch.zeros(batch, dtype=torch.long)
        self.offset_cpu = 0
        self.exec_mask = torch.ones(batch, dtype=torch.bool)
        self.cond_sum, cross = None, None
        if lm.fuser is not None:
            if self.condition_tensors is None:
                raise ValueError("this model is conditioned: give condition_tensors")
            self.cond_sum = lm.fuser.get_sum(self.condition_tensors)
            cross = lm.fuser.get_cross(self.condition_tensors)
            for name, tensor in (("sum", self.cond_sum), ("cross", cross)):
                if tensor is not None and tensor.shape[0] != rows:
                    raise ValueError(f"{tensor.shape[0]} {name} conditions for {rows} rows "
                                     f"(guidance needs twice the batch)")
            if self.cond_sum is not None:
                self.cond_sum = self.cond_sum[:, 0].float()
        self.masked_until = None if self.cfg_is_masked_until is None else \
            torch.tensor(self.cfg_is_masked_until, dtype=torch.long)
        step = self.engine.step
        step.reset(rows)
        if self.engine.depth is not None:
            self.engine.depth.reset(rows)
        if step.crossed:
            if cross is None:
                raise ValueError("this model attends to a condition (cross-attention): give its condition_tensors")
            step.set_cross(cross)
        self.batch = batch

    def reserve(self, frames: int) -> None:
        """Every stream's KV cache for ``frames`` frames now (the context at most): ``ReservingLM``."""
        self.engine.step.reserve(frames)

    def reset_streaming(self, reset_mask: torch.Tensor | None = None) -> None:
        """Restart the streams where ``reset_mask`` is true (all without one); the others go on."""
        mask = torch.ones(self.batch, dtype=torch.bool) if reset_mask is None else reset_mask.bool().cpu()
        self.offsets = torch.where(mask, torch.zeros_like(self.offsets), self.offsets)
        self.offset_cpu = 0
        self.engine.step.reset_slots(self._rows(mask))

    def update_cross(self, source: torch.Tensor) -> None:
        """A new cross-attention source for every stream (the slots' voices): moshi's
        ``update_streaming_cross_attention_src`` on each cross-attention module."""
        self.engine.step.set_cross(source)

    def set_exec_mask(self, exec_mask: torch.Tensor) -> None:
        """Only the streams where ``exec_mask`` is true advance at the next steps (LMGen's exec mask)."""
        self.exec_mask = exec_mask.bool().cpu()

    def _rows(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.repeat(2) if self.cfg_coef != 1.0 else mask

    # ------------------------------------------------------------------ one step
    def _sample(self, logits: torch.Tensor, temp: float, top_k: int) -> torch.Tensor:
        from moshi.utils.sampling import sample_token

        return sample_token(logits.float(), self.use_sampling, temp, top_k)

    @torch.no_grad()
    def _step(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None):
        if self.cache is None:
            raise RuntimeError("You should wrap those calls with a `with lm_gen.streaming(): ...`.")
        from moshi.models.lm import scatter_with_mask_

        lm, engine, cache, delays = self.lm_model, self.engine, self.cache, self.delays
        b, ki, s = input_tokens.shape
        if b != self.batch or s != 1:
            raise ValueError(f"expected [{self.batch}, K, 1] input tokens, got {list(input_tokens.shape)}")
        needed = lm.num_codebooks - lm.dep_q - 1
        if ki < needed:
            raise ValueError(f"expected {needed} tokens from the user stream, got {ki}")
        input_tokens = input_tokens[:, :needed].cpu()
        ct = cache.shape[2]
        exec3 = self.exec_mask[:, None, None]
        write = (self.offsets[:, None, None] + delays[lm.dep_q + 1:, None]) % ct
        scatter_with_mask_(cache[:, lm.dep_q + 1:], -1, write, input_tokens, exec3)
        is_init = (self.offsets[:, None, None] <= delays[:, None]) | ~exec3
        positions = (self.offsets % ct)[:, None, None].expand_as(is_init)
        input_ = torch.where(is_init, engine.initial, cache.gather(dim=2, index=positions))
        zero = torch.full((1,), lm.zero_token_id, dtype=torch.long)
        guided = self.cfg_coef != 1.0
        if guided:
            if self.masked_until is not None:
                limit = delays[:, None] + self.masked_until.view(-1, 1, 1)
                masked = torch.where((self.offsets[:, None, None] <= limit) & ~is_init, zero, input_)
                input_ = torch.cat([input_, masked], dim=0)
            else:
                input_ = input_.repeat(2, 1, 1)
            if self.cfg_is_no_text:
                input_[b:, :1] = torch.where(~is_init[:, :1], zero, input_[b:, :1])
        active = None if bool(self.exec_mask.all()) else self._rows(self.exec_mask)
        out, logits = engine.step(input_[:, :, 0], active, self.cond_sum)
        # [rows, 1, 1, text_card], as LMGen's hooks see them; clones: the engine's results are
        # inference tensors, which hooks could not edit in place.
        text_logits = logits[:, None, None].clone()
        if guided:
            cond, null = text_logits.chunk(2)
            text_logits = cond if self.cfg_is_no_text else null + (cond - null) * self.cfg_coef
        if self.on_text_logits_hook:
            self.on_text_logits_hook(text_logits)
        text_token = self._sample(text_logits, self.temp_text, self.top_k_text)[:, 0, 0]
        if self.on_text_hook is not None:
            self.on_text_hook(text_token)
        audio_tokens = None
        if engine.depth is not None:
            if depformer_replace_tokens is None:
                audio_tokens = engine.depth(out, text_token, lambda x: self._sample(x, self.temp, self.top_k),
                                            self.cfg_coef, steps=lm.dep_q).clone()
            else:
                audio_tokens = depformer_replace_tokens.squeeze(-1).cpu()
            if self.on_audio_hook is not None:
                self.on_audio_hook(audio_tokens)
        self.offsets = torch.where(self.exec_mask, self.offsets + 1, self.offsets)
        self.offset_cpu += 1
        positions = (self.offsets % ct)[:, None, None]
        scatter_with_mask_(cache[:, :1], -1, positions, text_token[:, None, None], exec3)
        if audio_tokens is not None:
            audio = audio_tokens[:, :, None]
            scatter_with_mask_(cache[:, 1:lm.dep_q + 1], -1, positions.expand_as(audio), audio, exec3)
        if not self.support_out_of_sync and self.offset_cpu <= self.max_delay:
            return None
        index = (self.offsets[:, None, None] - self.max_delay + delays[:lm.dep_q + 1, None]) % ct
        result = cache.gather(dim=2, index=index)
        result[(self.offsets <= self.max_delay) | ~self.exec_mask] = lm.ungenerated_token_id
        return result, out[:b]

    def step(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None):
        """LMGen's ``step``: [B, 1 + dep_q, 1] tokens (ids < 0 until the delays have passed), or None."""
        result = self._step(input_tokens, depformer_replace_tokens)
        return None if result is None else result[0]
