"""Mimi's streaming transformer as a pure function: keys and values of the last ``context``
steps in a ring passed in and returned, rotary positions per batch row."""

from __future__ import annotations

import math

from .layers import StateCursor, StateSpec, Unsupported


def transformer_specs(pt, prefix: str, out: list[StateSpec]) -> None:
    """A moshi ``ProjectedTransformer`` in Mimi's configuration."""
    import torch

    if pt is None:
        return
    tr = pt.transformer
    if tr.positional_embedding != "rope" or not pt.conv_layout or len(pt.output_projs) != 1:
        raise Unsupported(f"{prefix}: positional embedding {tr.positional_embedding!r}")
    first = tr.layers[0].self_attn
    for i, layer in enumerate(tr.layers):
        sa = layer.self_attn
        ok = (sa.context is not None and sa.kv_repeat == 1 and not sa.cross_attention and len(sa.in_projs) == 1
              and sa.in_projs[0].bias is None and len(sa.out_projs) == 1 and layer.gating is None
              and sa.rope is not None and sa.rope.interleave and getattr(layer, "cross_attention", None) is None
              and isinstance(layer.norm1, torch.nn.LayerNorm) and isinstance(layer.norm2, torch.nn.LayerNorm)
              and not getattr(layer, "skip_self_attn", False))
        same = (sa.context, sa.num_heads, sa.embed_dim, sa.rope.max_period if sa.rope else None) == (
            first.context, first.num_heads, first.embed_dim, first.rope.max_period if first.rope else None)
        if not (ok and same):
            raise Unsupported(f"{prefix}.layers.{i}: attention configuration")
        d = sa.embed_dim // sa.num_heads
        out.append(StateSpec(f"{prefix}.{i}.k", (sa.num_heads, d, sa.context), ring_axis=2))  # transposed
        out.append(StateSpec(f"{prefix}.{i}.v", (sa.num_heads, sa.context, d), ring_axis=1))


def _rope_tables(pos, dim: int, max_period: float):
    """cos and sin [B, 1, T, dim] of the interleaved rotary embedding at positions ``pos`` [B, T]
    (moshi's frequencies, each repeated for the two halves of a pair)."""
    import torch

    freqs = torch.exp(torch.arange(dim // 2, dtype=torch.float32) * (-math.log(max_period) * 2 / dim))
    ang = pos.to(torch.float32)[:, None, :, None] * freqs.repeat_interleave(2)
    return torch.cos(ang), torch.sin(ang)


def _pair_swap(dim: int):
    """P with (x @ P) = (-x1, x0, -x3, x2, ...): the rotation's cross term as a product."""
    import torch

    p = torch.zeros(dim, dim)
    idx = torch.arange(0, dim, 2)
    p[idx + 1, idx] = -1.0
    p[idx, idx + 1] = 1.0
    return p


def stream_transformer(pt, x, cur: StateCursor, offset):
    """``x`` [B, C, T] (conv layout) through the layers, keys and values carried in ``cur``."""
    import torch
    import torch.nn.functional as F

    if pt is None:
        return x
    x = x.transpose(1, 2)
    if pt.input_proj is not None:
        x = pt.input_proj(x)
    first = pt.transformer.layers[0].self_attn
    ctx, heads = first.context, first.num_heads
    dim = first.embed_dim // heads
    # Positions, mask and rotation tables are the same for every layer. The cache is a
    # ring: slot j holds the step at position p = j (mod ctx) among the ctx steps
    # before this call; steps before the stream's start are masked (p < 0).
    pos_q = offset[:, None] + torch.arange(x.shape[1])  # [B, T]
    slot = torch.arange(ctx)[None, :]
    pos_c = offset[:, None] - ctx + torch.remainder(slot - torch.remainder(offset[:, None], ctx) + ctx, ctx)
    pos_k = torch.cat([pos_c, pos_q], 1)  # [B, ctx + T]
    delta = pos_q[:, :, None] - pos_k[:, None, :]
    mask = ((pos_k[:, None, :] >= 0) & (delta >= 0) & (delta < ctx))[:, None]  # [B, 1, T, ctx + T]
    bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    cos, sin = _rope_tables(pos_q, dim, first.rope.max_period)
    swap = _pair_swap(dim)
    scale = 1.0 / math.sqrt(dim)
    for layer in pt.transformer.layers:
        sa = layer.self_attn
        qkv = F.linear(layer.norm1(x), sa.in_projs[0].weight).unflatten(-1, (3, heads, dim)).permute(2, 0, 3, 1, 4)
        qk = qkv[:2] * cos + (qkv[:2] @ swap) * sin
        # Keys are kept transposed ([B, H, dim, steps]) so that no layer transposes its cache.
        kt_new, v_new = qk[1].transpose(2, 3), qkv[2]
        kt_ring, v_ring = cur.take(), cur.take()
        cur.put(kt_new)
        cur.put(v_new)
        q = qk[0] * scale
        p = torch.softmax(torch.cat([q @ kt_ring, q @ kt_new], 3) + bias, -1)
        a = p[..., :ctx] @ v_ring + p[..., ctx:] @ v_new
        a = F.linear(a.transpose(1, 2).flatten(2), sa.out_projs[0].weight, sa.out_projs[0].bias)
        x = x + layer.layer_scale_1(a)
        x = x + layer.layer_scale_2(layer.linear2(layer.activation(layer.linear1(layer.norm2(x)))))
    return pt.output_projs[0](x).transpose(1, 2)
