"""One step of a Moshi-family temporal transformer on a CPU: moshikit's engine (``cpu_engine``).

It computes what moshi's ``LMModel.forward_text`` computes in streaming mode, one frame for
``B`` streams, from the weights of a loaded ``LMModel``, differently where the CPU pays:

* the KV cache is compact: each layer's keys and values for the positions actually filled,
  ``[2, B, heads, capacity, head_dim]``, grown by doubling up to the model's ``context``
  (moshi holds a ring of ``context`` slots per stream, 750 or 3000, and attends over all of
  it every step). Attention reads only the first ``N`` slots, ``N`` the longest stream's
  filled length; shorter streams mask the rest (per-stream lengths, for slot refill). Past
  ``context`` positions the cache is a ring, as moshi's: the sliding window is kept;
* queries and keys are rotated in one complex multiply with angles computed once per step
  for all layers; attention is ``cpu_kernels.attend`` (PyTorch's fused attention, or two
  batched matmuls where that is faster); the QKV projection and the gating's two input
  projections are one matmul each (as in moshi's weights);
* matmuls run in the kernel ``cpu_kernels`` picks (int8, bf16 or fp32 weights);
* the input embedding is one gather over a table of every codebook.

Supported: what Kyutai's STT models, Moshi, Hibiki and Kyutai TTS use (conditions summed into
the input, RoPE or no positional embedding, RMS or layer norms, gated or plain feed-forward,
optional layer scale, ``kv_repeat`` 1, cross-attention to a condition whose keys and values are
computed once per stream by ``set_cross``, a text embedding demuxing a second stream or low-rank,
as lookup tables computed once). ``unsupported(model)`` says what else a model needs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .cpu_kernels import Linear, attend, native_bf16

#: Smallest KV capacity allocated (grown by doubling up to the model's context).
MIN_CAPACITY = 64
#: The attention window is rounded up to a multiple of this. A stream's attention then does not
#: depend on its batch mates' lengths: torch's CPU attention adds up whole vector-lane groups, so
#: a window longer by masked positions gives bit-identical results only once it covers the
#: stream's own length rounded up to its lane group (16 here, for fp32 and bf16); 64 covers groups
#: of 8 to 64. Served streams of different lengths then get what they get alone.
WINDOW_ALIGN = 64


def unsupported(model) -> str | None:
    """Why the engine cannot run ``model`` (a moshi ``LMModel``), or None."""
    t = model.transformer
    fuser = model.fuser
    if fuser is not None and fuser.fuse2cond.get("prepend"):
        return "models conditioned by prepended conditions"
    if t.positional_embedding not in ("rope", "none"):
        return f"positional embedding {t.positional_embedding!r}"
    if t.rope is not None and not t.rope.interleave:
        return "non-interleaved RoPE"
    if model.context is None:
        return "a transformer without a context"
    if model.text_emb.norm is not None or any(e.norm is not None or e.demux_second_stream for e in model.emb):
        return "normalised or demuxed audio embeddings"
    for layer in t.layers:
        attn = layer.self_attn
        if layer.skip_self_attn:
            return "layers without self-attention"
        cross = layer.cross_attention
        if cross is not None and (cross.kv_repeat != 1 or len(cross.in_projs) != 1
                                  or any(type(m) is not nn.Linear or m.bias is not None
                                         for m in (*cross.in_projs, *cross.out_projs))):
            return "grouped, biased or quantized cross-attention"
        if attn.kv_repeat != 1 or attn.weights_per_step or len(attn.in_projs) != 1:
            return "grouped or per-step attention weights"
        if not attn.causal or attn.context != model.context:
            return "non-causal attention or a per-layer context"
        if layer.weights_per_step or isinstance(layer.gating, nn.ModuleList):
            return "per-step feed-forward weights"
        if any(type(m) not in (nn.Linear,) for m in (*attn.in_projs, *attn.out_projs)):
            return "quantized or LoRA linears"
    return None


class Norm(nn.Module):
    """moshi's RMSNorm (``rms_norm``/``rms_norm_f32``) or LayerNorm, computed in float32."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        if hasattr(norm, "alpha"):  # moshi RMSNorm: x * alpha / sqrt(eps + mean(x^2))
            self.rms, self.eps = True, float(norm.eps)
            self.weight = norm.alpha.detach().float().reshape(-1)
            self.bias = None
        elif isinstance(norm, nn.LayerNorm):
            self.rms, self.eps = False, float(norm.eps)
            self.weight = None if norm.weight is None else norm.weight.detach().float()
            self.bias = None if norm.bias is None else norm.bias.detach().float()
        else:
            raise ValueError(f"norm {type(norm).__name__}")
        self.shape = (self.weight.numel(),) if self.weight is not None else (norm.normalized_shape[0],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return F.rms_norm(x, self.shape, self.weight, self.eps)
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


def embedding_table(emb: nn.Module) -> torch.Tensor:
    """A moshi ``ScaledEmbedding`` (plain or low-rank, not demuxed) as one float32 table: row ``i``
    is what it gives for token ``i`` (the low-rank projection applied once to every row)."""
    w = emb.weight.detach().float()
    return w if emb.low_rank is None else F.linear(w, emb.low_rank.weight.detach().float())


class DemuxEmbedding(nn.Module):
    """moshi's ``ScaledEmbedding`` with ``demux_second_stream`` (Kyutai TTS's text, its look-ahead
    stream muxed in as ``(second + 1) * n + first``), as two tables computed once: ``out1`` and
    ``out2`` applied to every row. Token -1 embeds to zero, as does a missing second stream."""

    def __init__(self, emb: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        w = emb.weight.detach().float()
        self.n = int(emb.num_embeddings)
        self.first = F.linear(w, emb.out1.weight.detach().float()).to(dtype)
        self.second = F.linear(w, emb.out2.weight.detach().float()).to(dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B] -> [B, dim] float32."""
        t = tokens.clamp(min=0)
        second = t // self.n - 1
        y = self.first[t % self.n].float() + self.second[second.clamp(min=0)].float() * (second >= 0)[:, None]
        return y * (tokens != -1)[:, None]

    def weight_bytes(self) -> int:
        return 2 * self.first.numel() * self.first.element_size()


def scale_of(module: nn.Module) -> torch.Tensor | None:
    scale = getattr(module, "scale", None)
    return None if scale is None else scale.detach().float()


class FeedForward(nn.Module):
    """A layer's feed-forward on normalised input [B, dim]: moshi's gating (both inputs in one
    matmul, ``activation(a) * b``) or two plain linears around ``activation``."""

    def __init__(self, inner: nn.Linear, outer: nn.Linear, activation, gated: bool, kind: str,
                 pack: bool = False) -> None:
        super().__init__()
        self.inner, self.outer = Linear(inner, kind, pack=pack), Linear(outer, kind, pack=pack)
        self.activation, self.gated = activation, gated

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.inner(z)
        if self.gated:
            z = z.view(z.shape[0], 2, -1)
            z = self.activation(z[:, 0]) * z[:, 1]
        else:
            z = self.activation(z)
        return self.outer(z)


def feed_forwards(layer: nn.Module, kind: str, pack: bool = False) -> list[FeedForward]:
    """A moshi layer's feed-forward(s): one, or one per step where its gating has weights per step."""
    if layer.gating is None:
        return [FeedForward(layer.linear1, layer.linear2, layer.activation, False, kind, pack)]
    gatings = list(layer.gating) if isinstance(layer.gating, nn.ModuleList) else [layer.gating]
    return [FeedForward(g.linear_in, g.linear_out, g.activation, True, kind, pack) for g in gatings]


class Layer(nn.Module):
    """One transformer layer: attention with the engine's KV cache, then the feed-forward."""

    def __init__(self, layer: nn.Module, kind: str) -> None:
        super().__init__()
        attn = layer.self_attn
        self.heads = attn.num_heads
        self.norm1, self.norm2 = Norm(layer.norm1), Norm(layer.norm2)
        self.qkv = Linear(attn.in_projs[0], kind)
        self.out = Linear(attn.out_projs[0], kind)
        self.scale1, self.scale2 = scale_of(layer.layer_scale_1), scale_of(layer.layer_scale_2)
        (self.ff,) = feed_forwards(layer, kind)  # one: per-step feed-forwards are refused by `unsupported`
        self.cross = None if layer.cross_attention is None else CrossAttention(layer, kind)

    def forward(self, x: torch.Tensor, step: "Step", kv: torch.Tensor) -> torch.Tensor:
        b, dim = x.shape
        h = self.heads
        d = dim // h
        proj = self.qkv(self.norm1(x))  # [B, 3 * dim]: q, k, v by heads
        if step.rot is not None:
            qk = torch.view_as_complex(proj.view(b, 3, h, d // 2, 2)[:, :2]) * step.rot
            qk = torch.view_as_real(qk).reshape(b, 2, h, d)
        else:
            qk = proj.view(b, 3, h, d)[:, :2]
        v = proj.view(b, 3, h, d)[:, 2]
        kv[0, step.rows, :, step.slots] = qk[:, 1].to(kv.dtype)
        kv[1, step.rows, :, step.slots] = v.to(kv.dtype)
        n = step.window
        q = qk[:, 0, :, None].to(kv.dtype)  # [B, H, 1, D]
        y = attend(q, kv[0, :, :, :n], kv[1, :, :, :n], step.mask)
        y = self.out(y.reshape(b, dim).float())
        x = x + (y if self.scale1 is None else self.scale1 * y)
        if self.cross is not None:
            x = self.cross(x)
        z = self.ff(self.norm2(x))
        return x + (z if self.scale2 is None else self.scale2 * z)


class CrossAttention(nn.Module):
    """A layer's cross-attention (moshi's ``_cross_attention_block``): queries from the normalised
    input through the first third of its ``in_proj``, keys and values of the condition through
    the rest, computed once per stream by ``set_source`` and attended every step (no mask, as moshi)."""

    def __init__(self, layer: nn.Module, kind: str) -> None:
        super().__init__()
        attn = layer.cross_attention
        self.heads = attn.num_heads
        w = attn.in_projs[0].weight.detach()
        dim = w.shape[0] // 3
        q = nn.Linear(w.shape[1], dim, bias=False)
        q.weight = nn.Parameter(w[:dim].clone(), requires_grad=False)  # copies: not views holding all of w
        self.q = Linear(q, kind)
        # [2 * dim, dim], as loaded (moshi computes the condition's keys and values in the model's dtype)
        self.kv_weight = w[dim:].clone()
        self.out = Linear(attn.out_projs[0], kind)
        self.norm = Norm(layer.norm_cross)
        self.scale = scale_of(layer.layer_scale_cross)
        self.kv = torch.zeros(0)  # [2, B, H, T, D]

    def set_source(self, src: torch.Tensor, rows: torch.Tensor | None, dtype: torch.dtype) -> None:
        """Keys and values of ``src`` [B', T, dim] for the streams ``rows`` (all: None)."""
        b, t, _ = src.shape
        w = self.kv_weight
        if w.dtype == torch.bfloat16 and not native_bf16():
            # No bf16 kernel on this CPU (``cpu_kernels``' notes; Kyutai TTS at batch 4 spent ~2.5 s
            # here before its first frame on a Zen 3): the same bf16 values multiplied in float32,
            # the sums rounded to bf16 as the bf16 product's are.
            kv = F.linear(src.to(w.dtype).float(), w.float()).to(w.dtype)
        else:
            kv = F.linear(src.to(w.dtype), w)
        kv = kv.view(b, t, 2, self.heads, -1).permute(2, 0, 3, 1, 4).to(dtype)
        if rows is None:
            self.kv = kv.contiguous()
        else:
            self.kv[:, rows] = kv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, dim = x.shape
        q = self.q(self.norm(x)).view(b, self.heads, 1, -1).to(self.kv.dtype)
        y = attend(q, self.kv[0], self.kv[1])
        y = self.out(y.reshape(b, dim).float())
        return x + (y if self.scale is None else self.scale * y)

    def weight_bytes(self) -> int:
        return self.kv_weight.numel() * self.kv_weight.element_size()


class Step(nn.Module):
    """The temporal transformer of a moshi ``LMModel`` for ``B`` streams, one frame a call."""

    def __init__(self, model, kind: str = "int8", kv_dtype: torch.dtype = torch.float32, *,
                 release: bool = False) -> None:
        """``release``: empty each of ``model``'s layers once converted (the caller drops the model),
        so loading peaks near the model's own size (Moshi 7B: 15 GB in bf16, not 15 + 7.5 GB)."""
        super().__init__()
        why = unsupported(model)
        if why:
            raise ValueError(why)
        t = model.transformer
        self.kind, self.kv_dtype = kind, kv_dtype
        self.dim, self.context = int(model.dim), int(model.context)
        self.heads = t.layers[0].self_attn.num_heads
        self.card, self.n_q = int(model.card), int(model.n_q)
        table_dtype = torch.float32 if kind == "fp32" else model.text_emb.weight.dtype
        # One table: every audio codebook's rows, then the text rows, then a zero row (id -1). A
        # demuxed text embedding (Kyutai TTS) has tables of its own and no rows here.
        demux = model.text_emb.demux_second_stream
        self.demux = DemuxEmbedding(model.text_emb, table_dtype) if demux else None
        tables = [embedding_table(e) for e in model.emb] + ([] if demux else [embedding_table(model.text_emb)])
        tables.append(torch.zeros(1, self.dim))
        self.table = torch.cat(tables).to(table_dtype)
        del tables
        self.register_buffer("bases", torch.tensor([len(model.emb) * (self.card + 1)]
                                                   + [k * (self.card + 1) for k in range(len(model.emb))]),
                             persistent=False)
        self.zero_row = self.table.shape[0] - 1
        self.layers = nn.ModuleList()
        for layer in t.layers:
            self.layers.append(Layer(layer, kind))
            if release:
                layer.to("meta")
        self.out_norm = Norm(model.out_norm)
        # The text head in bf16 beside int8 or bf16 layers (moshi's own precision for it on a GPU):
        # half fp32's bytes at batch 1, AMX at large batches (measured on an idle 2-core Xeon, two
        # threads, stt-1b's 8001 x 2048 head: batch 1 fp32 2.6 ms, bf16 1.6 ms; batch 32 8.2 and
        # 1.9 ms); its rounding (-50 dB of the logits) is far below the int8 layers' (-33 dB).
        self.text_head = Linear(model.text_linear, "fp32" if kind == "fp32" else "bf16")
        heads = list(model.extra_heads)
        self.extra = Linear(_stack(heads), "fp32") if heads else None
        self.n_extra, self.extra_dim = len(heads), (heads[0].out_features if heads else 0)
        d = self.dim // self.heads
        if t.rope is not None:  # moshi's apply_rope, its frequencies to the bit
            ds = torch.arange(d // 2, dtype=torch.float32)
            self.freqs = torch.exp(ds * (-math.log(t.rope.max_period) * 2 / d))
        else:
            self.freqs = None
        self.batch = 0
        self.kv: list[torch.Tensor] = []
        self.lengths = torch.zeros(0, dtype=torch.long)
        # Per-step values shared by every layer (set in forward).
        self.rot = self.mask = self.slots = self.rows = None
        self.window = 0

    def reset(self, batch: int) -> None:
        """Start ``batch`` empty streams (the cache keeps its memory while the batch stays)."""
        if batch != self.batch:
            self.kv = [torch.zeros(2, batch, self.heads, min(MIN_CAPACITY, self.context), self.dim // self.heads,
                                   dtype=self.kv_dtype) for _ in self.layers]
            self.batch = batch
            for m in self.modules():
                if isinstance(m, Linear):
                    m.set_batch(batch)
        self.lengths = torch.zeros(batch, dtype=torch.long)

    def reset_slots(self, mask: torch.Tensor) -> None:
        self.lengths = torch.where(mask, torch.zeros_like(self.lengths), self.lengths)

    def reserve(self, frames: int) -> None:
        """Hold the cache for ``frames`` positions of every stream now (the context at most), so no
        later step stops to grow it. Growing zeroes fresh memory, which the kernel hands out slowly
        right after a checkpoint has filled its page cache: at 32 streams of stt-1b in float32 the
        step that grew took seconds (``scripts/kv_growth.py``), a stall for every live stream."""
        self._grow(min(int(frames), self.context))

    def _grow(self, needed: int) -> None:
        cap = self.kv[0].shape[3]
        if needed <= cap or cap >= self.context:
            return
        new = min(self.context, max(needed, 2 * cap))
        for i, kv in enumerate(self.kv):  # no stream has wrapped yet: slots are positions
            grown = torch.zeros(*kv.shape[:3], new, kv.shape[4], dtype=kv.dtype)
            grown[:, :, :, :cap] = kv
            self.kv[i] = grown

    def embed(self, tokens: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Input embedding of ``tokens`` [B, 1 + n_q] (text, then audio; -1: nothing), plus the
        conditions summed into it (``cond`` [B, dim], Hibiki's), as moshi's ``forward_text``."""
        if self.demux is not None:  # the text through its own tables, its column here the zero row
            text = self.demux(tokens[:, 0])
            tokens = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, 1:]], 1)
        idx = torch.where(tokens < 0, self.zero_row, tokens + self.bases)
        rows = self.table[idx]  # [B, 1 + n_q, dim]
        x = rows[:, 1:].float().sum(1) + (rows[:, 0].float() if self.demux is None else text)
        return x if cond is None else x + cond

    def set_cross(self, src: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """The cross-attention condition (Kyutai TTS's speaker) ``src`` [B, T, dim] of every stream,
        or of the streams ``rows`` (bool [B] or indices): its keys and values, once, for every layer."""
        with torch.inference_mode():
            for layer in self.layers:
                if layer.cross is not None:
                    layer.cross.set_source(src, rows, self.kv_dtype)

    @property
    def crossed(self) -> bool:
        """Whether the model attends to a condition (``set_cross`` must come before the first step)."""
        return any(layer.cross is not None for layer in self.layers)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, active: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame: ``tokens`` [B, 1 + n_q] -> (transformer output [B, dim], text logits [B, text_card]);
        ``cond`` [B, dim]: conditions summed into the input.

        With ``active`` (bool [B]), only those streams advance. The others are computed too (same
        kernels, same batch) but keep their length, so the keys and values they wrote go to the
        slot their next real frame overwrites before anything reads it: their state is unchanged."""
        b = tokens.shape[0]
        positions = self.lengths  # per stream: how many frames it has seen (its next position)
        self._grow(int(positions.max()) + 1)
        cap = self.kv[0].shape[3]
        self.rows = torch.arange(b)
        self.slots = positions % self.context
        filled = torch.clamp(positions + 1, max=self.context)
        self.window = min(cap, -(-int(filled.max()) // WINDOW_ALIGN) * WINDOW_ALIGN)
        self.mask = (torch.arange(self.window) < filled[:, None])[:, None, None, :]
        if self.freqs is not None:
            angles = self.freqs * positions.float()[:, None]
            self.rot = torch.complex(torch.cos(angles), torch.sin(angles))[:, None, None, :]
        x = self.embed(tokens, cond)
        for layer, kv in zip(self.layers, self.kv):
            x = layer(x, self, kv)
        self.lengths = positions + 1 if active is None else torch.where(active, positions + 1, positions)
        out = self.out_norm(x)
        return out, self.text_head(out)

    def extra_heads(self, out: torch.Tensor) -> torch.Tensor | None:
        """The first-class probability of each extra head, [B, n_extra] (None without heads)."""
        if self.extra is None:
            return None
        logits = self.extra(out).view(out.shape[0], self.n_extra, self.extra_dim)
        return torch.softmax(logits, dim=-1)[:, :, 0]

    def weight_bytes(self) -> int:
        total = self.table.numel() * self.table.element_size()
        for m in self.modules():
            if isinstance(m, (Linear, DemuxEmbedding, CrossAttention)):
                total += m.weight_bytes()
            elif isinstance(m, Norm):
                total += 4 * sum(p.numel() for p in (m.weight, m.bias) if p is not None)
        return total


def _stack(heads: list[nn.Linear]) -> nn.Linear:
    lin = nn.Linear(heads[0].in_features, sum(h.out_features for h in heads), bias=False)
    lin.weight = nn.Parameter(torch.cat([h.weight.detach().float() for h in heads]), requires_grad=False)
    return lin
