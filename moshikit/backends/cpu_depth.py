"""The depth transformer of a Moshi-family LM on a CPU: moshikit's engine (``cpu_engine``).

After the temporal transformer's step, moshi's ``LMGen.depformer_step`` samples the frame's
``dep_q`` audio tokens one codebook after the other: codebook ``k``'s input is the temporal
output through ``depformer_in`` plus the embedding of the token before it (the text token for
``k = 0``), run through a small transformer whose streaming state lives for one frame, then
``linears[k]`` gives its logits. The engine computes the same, for ``B`` streams at once:

* every codebook's input projection in one matmul (they only read the temporal output);
* per-step weights (moshi's ``weights_per_step``, with its schedule) picked per codebook; the
  keys and values of the frame's codebooks kept in one preallocated buffer, attended over the
  codebooks so far;
* matmuls in the kernel ``cpu_kernels`` picks (int8, bf16 or fp32 weights), like the temporal
  transformer's; bf16 weights (the logits heads beside int8 layers) laid out once for oneDNN
  (``pack``: read at a few rows, from the caches).

Supported: what Moshi and Kyutai TTS use (no positional embedding in the depth transformer,
plain, low-rank or demuxed embeddings as tables computed once, gated or plain feed-forward,
optional layer scale). ``unsupported_depth(model)`` says what else
a model needs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .cpu_kernels import Linear
from .cpu_step import DemuxEmbedding, Norm, embedding_table, feed_forwards, scale_of


def unsupported_depth(model) -> str | None:
    """Why the engine cannot run ``model``'s depth transformer (a moshi ``LMModel``), or None."""
    dep = model.depformer
    if dep is None:
        return None
    if dep.positional_embedding != "none":
        return f"a depth transformer with positional embedding {dep.positional_embedding!r}"
    if any(e.norm is not None for e in (model.depformer_text_emb, *model.depformer_emb)) \
            or any(e.demux_second_stream for e in model.depformer_emb):
        return "normalised or demuxed audio embeddings in the depth transformer"
    for layer in dep.layers:
        attn = layer.self_attn
        if layer.cross_attention is not None or layer.skip_self_attn or attn.kv_repeat != 1:
            return "cross-attention or grouped attention in the depth transformer"
        if attn.rope is not None:
            return "RoPE in the depth transformer"
        if any(type(m) is not nn.Linear for m in (*attn.in_projs, *attn.out_projs)):
            return "quantized or LoRA linears"
    return None


class DepthLayer(nn.Module):
    """One depth-transformer layer with its weights per step (one set, or one per codebook)."""

    def __init__(self, layer: nn.Module, kind: str, steps: int) -> None:
        super().__init__()
        attn = layer.self_attn
        self.heads = attn.num_heads
        schedule = attn.weights_per_step_schedule
        self.pick = [0] * steps if len(attn.in_projs) == 1 else \
            [schedule[k] if schedule else k for k in range(steps)]
        self.norm1, self.norm2 = Norm(layer.norm1), Norm(layer.norm2)
        self.qkv = nn.ModuleList(Linear(p, kind, pack=True) for p in attn.in_projs)
        self.out = nn.ModuleList(Linear(p, kind, pack=True) for p in attn.out_projs)
        self.scale1, self.scale2 = scale_of(layer.layer_scale_1), scale_of(layer.layer_scale_2)
        self.ff = nn.ModuleList(feed_forwards(layer, kind, pack=True))
        wschedule = layer.weights_per_step_schedule
        self.ff_pick = [0] * steps if len(self.ff) == 1 else [wschedule[k] if wschedule else k for k in range(steps)]

    def forward(self, x: torch.Tensor, k: int, kv: torch.Tensor) -> torch.Tensor:
        """Codebook ``k`` for ``B`` streams: ``x`` [B, dim]; ``kv`` [2, B, H, steps, D] this layer's
        keys and values of the frame (``k`` written here, ``0..k-1`` before)."""
        b, dim = x.shape
        h = self.heads
        d = dim // h
        proj = self.qkv[self.pick[k]](self.norm1(x)).view(b, 3, h, d)
        kv[:, :, :, k] = proj[:, 1:].transpose(0, 1)  # float32 both
        q = proj[:, 0, :, None]  # [B, H, 1, D]
        y = F.scaled_dot_product_attention(q, kv[0, :, :, :k + 1], kv[1, :, :, :k + 1])
        y = self.out[self.pick[k]](y.reshape(b, dim))
        x = x + (y if self.scale1 is None else self.scale1 * y)
        z = self.ff[self.ff_pick[k]](self.norm2(x))
        return x + (z if self.scale2 is None else self.scale2 * z)


class Depth(nn.Module):
    """The depth transformer of a moshi ``LMModel``: a frame's ``dep_q`` audio tokens for ``B`` streams."""

    def __init__(self, model, kind: str = "int8") -> None:
        super().__init__()
        why = unsupported_depth(model)
        if why:
            raise ValueError(why)
        self.steps = int(model.dep_q)
        # The frame's keys and values in float32 whatever the weights: a few hundred KB a stream
        # (layers x 2 x dep_q x dim), and no conversions around each codebook's attention.
        self.kv_dtype = torch.float32
        first = model.depformer.layers[0].self_attn
        self.heads = first.num_heads
        self.dim = int(model.depformer_in[0].out_features)
        # Every codebook's input projection in one matmul: [B, dim] -> [B, n_in * dep_dim].
        ins = list(model.depformer_in)
        n_in = len(ins)
        stacked = nn.Linear(ins[0].in_features, n_in * self.dim, bias=False)
        stacked.weight = nn.Parameter(torch.cat([m.weight.detach().float() for m in ins]), requires_grad=False)
        self.project = Linear(stacked, kind, pack=True)
        schedule = model.depformer_weights_per_step_schedule
        self.in_pick = [0] * self.steps if not model.depformer_multi_linear else \
            [schedule[k] if schedule is not None else k for k in range(self.steps)]
        table_dtype = torch.float32 if kind == "fp32" else model.depformer_text_emb.weight.dtype
        # Tables with the low-rank projections applied once (Kyutai TTS); the text demuxed as the
        # temporal transformer's (``DemuxEmbedding``) where the model muxes a second stream in.
        text_emb = model.depformer_text_emb
        self.text_demux = DemuxEmbedding(text_emb, table_dtype) if text_emb.demux_second_stream else None
        self.text_table = torch.zeros(0) if self.text_demux else embedding_table(text_emb).to(table_dtype)
        self.tables = [embedding_table(e).to(table_dtype) for e in model.depformer_emb]
        self.layers = nn.ModuleList(DepthLayer(layer, kind, self.steps) for layer in model.depformer.layers)
        norms = list(model.depformer_norms)
        self.norms = [None if isinstance(n, nn.Identity) else Norm(n) for n in norms]
        # Each codebook's logits head in bf16 beside int8 or bf16 layers, as the temporal text head
        # (cpu_step.Step): 32 heads of 1024 x 2048 are 268 MB a frame in fp32 for Kyutai TTS.
        self.heads_out = nn.ModuleList(Linear(lin, "fp32" if kind == "fp32" else "bf16", pack=True)
                                       for lin in model.linears)
        self.batch = 0
        self.kv = torch.zeros(0)

    def reset(self, batch: int) -> None:
        if batch != self.batch:
            self.kv = torch.zeros(len(self.layers), 2, batch, self.heads, self.steps, self.dim // self.heads,
                                  dtype=self.kv_dtype)
            self.batch = batch
            for m in self.modules():
                if isinstance(m, Linear):
                    m.set_batch(batch)

    @torch.inference_mode()
    def forward(self, out: torch.Tensor, text: torch.Tensor, sample: Callable[[torch.Tensor], torch.Tensor],
                cfg_coef: float = 1.0, steps: int | None = None) -> torch.Tensor:
        """The frame's audio tokens [B, dep_q] after the temporal output ``out`` [B, dim_t] and the
        text token ``text`` [B]; ``sample(logits [B, card]) -> tokens [B]`` picks each. With
        classifier-free guidance (``cfg_coef`` != 1), ``out`` is [2B, dim_t]: the conditioned
        streams, then the unconditioned ones; each codebook's logits are mixed as moshi's
        ``depformer_step`` mixes them and one token goes to both halves. ``steps``: the first
        codebooks only (Kyutai TTS run with fewer codebooks than it has)."""
        rows = out.shape[0]
        if rows != self.batch:
            self.reset(rows)
        guided = cfg_coef != 1.0
        projected = self.project(out).view(rows, -1, self.dim)
        prev = torch.cat([text, text]) if guided else text
        tokens = []
        for k in range(self.steps if steps is None else steps):
            x = projected[:, self.in_pick[k]] + self.embed(k, prev)
            for layer, kv in zip(self.layers, self.kv):
                x = layer(x, k, kv)
            if self.norms[k] is not None:
                x = self.norms[k](x)
            logits = self.heads_out[k](x)
            if guided:
                cond, null = logits.chunk(2)
                logits = null + (cond - null) * cfg_coef
            token = sample(logits)
            tokens.append(token)
            prev = torch.cat([token, token]) if guided else token
        return torch.stack(tokens, dim=1)

    def embed(self, k: int, prev: torch.Tensor) -> torch.Tensor:
        """Codebook ``k``'s input embedding of the token before it, ``prev`` [B] (-1: zero), float32."""
        if k == 0 and self.text_demux is not None:
            return self.text_demux(prev)
        table = self.text_table if k == 0 else self.tables[k - 1]
        return table[prev.clamp(min=0)].float() * (prev != -1)[:, None]

    def logits(self, out: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Teacher forced: every codebook's logits [B, dep_q, card] when the tokens before each are
        ``given`` [B, 1 + dep_q] (text, then the audio tokens), for tests against moshi."""
        seen = []

        def forced(logits: torch.Tensor) -> torch.Tensor:
            seen.append(logits)
            return given[:, len(seen)]

        self.forward(out, given[:, 0], forced)
        return torch.stack(seen, dim=1)

    def weight_bytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in (self.text_table, *self.tables))
        for m in self.modules():
            if isinstance(m, (Linear, DemuxEmbedding)):
                total += m.weight_bytes()
        return total
