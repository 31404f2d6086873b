"""Mimi's streaming encoder and decoder as pure functions: (input, state) -> (output, state).

moshi's ``MimiModel`` keeps its streaming state inside its modules and updates it in
place, through Python bookkeeping that costs more than the arithmetic for one 80 ms
frame on a CPU. Here the same computation is written with the state passed in and
returned as plain tensors, so it can be exported once to ONNX (one graph for the
encoder, one for the decoder, free batch and time axes) and run by ONNX Runtime with
no Python per layer. The weights are moshi's own modules: only the wiring is ours.

The encoder graph ends with the quantizer (codes out), the decoder graph starts with the
codebook lookup (codes in), so a streaming frame never returns to Python between layers.

Semantics follow moshi's streaming modules:

* a causal convolution keeps the last ``(kernel - 1) * dilation + 1 - stride`` input
  samples (zeros at the start; the resampling convolution, in ``replicate`` mode,
  starts from copies of its first input sample instead);
* a transposed convolution with ``kernel == 2 * stride`` (all of Mimi's) keeps the
  previous input step, the same information as moshi's carried partial outputs;
* each transformer layer keeps the keys and values of the last ``context`` steps in a
  ring (slot = position mod context), and a query at position ``p`` attends to keys at
  positions ``p - context < q <= p``. Unlike moshi's ring (exactly ``context`` entries,
  overwritten before a multi-step call has read them), the graph reads the whole window
  before the call's new steps, so a chunk of many frames sees what a whole-file pass sees.

Positions are per batch row (``offset``, in transformer steps at 25 Hz), so one row
of a batch can restart while the others go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class Unsupported(Exception):
    """The model uses a layer this wiring does not implement (the caller falls back)."""


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: ``[batch, *shape]``, zeros at the start of a stream.

    A ``carry`` state is replaced by the matching output. A ``ring`` state (an
    attention layer's keys or values, ``shape[ring_axis]`` steps) is only read by the
    graph, which outputs this call's new entries instead; ``StreamState`` writes them
    into the ring at their positions, in place, so no call copies a whole cache.
    """

    name: str
    shape: tuple[int, ...]
    ring_axis: int | None = None  # axis of ``shape`` holding the steps, for ring states


class _Cursor:
    """Hands out the incoming state tensors in order and collects the new ones."""

    def __init__(self, state) -> None:
        self._state, self._i, self.out = state, 0, []

    def take(self):
        self._i += 1
        return self._state[self._i - 1]

    def put(self, t) -> None:
        self.out.append(t)


def _conv_tail(c) -> int:
    """Input samples a causal convolution carries to its next call: (kernel - 1) * dilation + 1 - stride."""
    return (c.kernel_size[0] - 1) * c.dilation[0] + 1 - c.stride[0]


def _specs_conv(mod, name: str, out: list[StateSpec]) -> None:
    c = mod.conv.conv
    if _conv_tail(c):
        out.append(StateSpec(name, (c.in_channels, _conv_tail(c))))


def _polyphase(c) -> bool:
    """Whether a transposed convolution runs as ``_convtr``'s polyphase convolution."""
    return c.kernel_size[0] == 2 * c.stride[0] and c.dilation[0] == 1 and c.groups in (1, c.in_channels) \
        and c.groups in (1, c.out_channels)


def _specs_convtr(mod, name: str, out: list[StateSpec]) -> None:
    c = mod.convtr.convtr
    if not _polyphase(c):
        raise Unsupported(f"{name}: transposed convolution other than kernel = 2 x stride")
    out.append(StateSpec(name, (c.in_channels, 1)))  # the previous input step


def _conv(mod, x, cur: _Cursor, first):
    import torch

    c = mod.conv.conv
    pad = _conv_tail(c)
    if pad:
        prev = cur.take()
        if mod.pad_mode == "replicate":
            prev = torch.where(first.view(-1, 1, 1), x[..., :1].expand_as(prev), prev)
        x = torch.cat([prev, x], -1)
        cur.put(x[..., -pad:])
    return _conv1d(x, c.weight, c.bias, c.stride[0], c.dilation[0], c.groups)


#: Convolutions with at least this many weights run as a product (``_conv1d``).
MATMUL_CONV_WEIGHTS = 1 << 19


def _conv1d(x, w, bias, stride: int, dilation: int, groups: int):
    """A valid 1-d convolution. Large dense ones (Mimi's strided downsampling layers, the
    layers next to the transformers) are written as windows times a weight matrix: a
    streaming frame gives them one or two output steps, so they only stream their weights,
    and ONNX Runtime's MatMul (weights packed once at load) reads them about twice as fast
    as its Conv (which unfolds and multiplies on every call). Windows are cut from the
    time-major input, where each is a run of rows; with ``kernel == 2 * stride`` (every
    strided layer of Mimi) and whole strides of input, window ``t`` is simply rows ``t`` and
    ``t + 1`` of the input folded into blocks of ``stride`` steps."""
    import torch
    import torch.nn.functional as F

    if groups != 1 or w.numel() < MATMUL_CONV_WEIGHTS:
        return F.conv1d(x, w, bias, stride, 0, dilation, groups)
    c_out, c_in, k = w.shape
    xt = x.transpose(1, 2)  # [B, T, C]
    if k == 2 * stride and dilation == 1 and x.shape[-1] % stride == 0:
        rows = xt.reshape(x.shape[0], -1, stride * c_in)  # [B, T / stride, stride * C]
        cols = torch.cat([rows[:, :-1], rows[:, 1:]], -1)  # [B, n, k * C]
    else:
        n = (x.shape[-1] - (k - 1) * dilation - 1) // stride + 1
        span = (n - 1) * stride + 1
        cols = torch.cat([xt[:, i * dilation : i * dilation + span : stride] for i in range(k)], -1)
    y = cols @ w.permute(2, 1, 0).reshape(k * c_in, c_out)  # column i * C + c holds tap i of channel c
    if bias is not None:
        y = y + bias
    return y.transpose(1, 2)


def _convtr(mod, x, cur: _Cursor):
    """A causal transposed convolution with ``kernel == 2 * stride`` (all of Mimi's; others
    are ``Unsupported``, so the codec falls back to moshi's modules).

    Output step ``t`` depends on input steps ``t`` and ``t - 1`` only (its ``stride``
    phases). The state is the previous input step, the same information as moshi's
    carried partial outputs. ONNX Runtime's ConvTranspose runs several times slower than
    either form below.
    """
    import torch

    c = mod.convtr.convtr
    s = c.stride[0]
    w, bias = c.weight, c.bias  # w: [C_in, C_out / groups, 2 s]
    x = torch.cat([cur.take(), x], -1)
    cur.put(x[..., -1:])
    # Phase j of output channel o: w[:, o, s + j] on step t - 1, w[:, o, j] on step t.
    if c.groups == 1:
        # Time-major: [previous step, this step] times a [2 C_in, s * C_out] matrix gives the
        # phases of each step side by side, so the output is already interleaved in time
        # and one plain transpose gives [B, C_out, T * s] (interleaving phases kept as
        # channels costs a 4-d transpose with an inner axis of s: ~5x slower).
        xt = x.transpose(1, 2)  # [B, T + 1, C_in]
        cols = torch.cat([xt[:, :-1], xt[:, 1:]], -1)  # [B, T, 2 C_in]
        taps = torch.cat([w[:, :, s:], w[:, :, :s]], 0)  # [2 C_in, C_out, s]
        y = cols @ taps.permute(0, 2, 1).reshape(2 * c.in_channels, s * c.out_channels)  # column j * C_out + o
        y = y.reshape(x.shape[0], -1, c.out_channels)  # [B, T * s, C_out]
        if bias is not None:
            y = y + bias
        return y.transpose(1, 2)
    # Depthwise: a kernel-2 convolution with the phases as channels, then interleaved.
    poly = torch.stack([w[:, 0, s:].reshape(-1, 1), w[:, 0, :s].reshape(-1, 1)], -1)  # [C_out * s, 1, 2]
    y = _conv1d(x, poly, bias.repeat_interleave(s) if bias is not None else None, 1, 1, c.groups)
    return y.unflatten(1, (c.out_channels, s)).transpose(2, 3).reshape(y.shape[0], c.out_channels, -1)


def _seanet_specs(seq, prefix: str, out: list[StateSpec]) -> None:
    import torch
    from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d
    from moshi.modules.seanet import SEANetResnetBlock

    for i, mod in enumerate(seq):
        name = f"{prefix}.{i}"
        if isinstance(mod, StreamingConv1d):
            _specs_conv(mod, name, out)
        elif isinstance(mod, StreamingConvTranspose1d):
            _specs_convtr(mod, name, out)
        elif isinstance(mod, SEANetResnetBlock):
            if not isinstance(mod.shortcut, torch.nn.Identity):
                raise Unsupported(f"{name}: residual block with a convolution shortcut")
            _seanet_specs(mod.block, name, out)
        elif not _is_activation(mod):
            raise Unsupported(f"{name}: {type(mod).__name__}")


def _seanet(seq, x, cur: _Cursor, first):
    import torch
    from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d
    from moshi.modules.seanet import SEANetResnetBlock

    for mod in seq:
        if isinstance(mod, StreamingConv1d):
            x = _conv(mod, x, cur, first)
        elif isinstance(mod, StreamingConvTranspose1d):
            x = _convtr(mod, x, cur)
        elif isinstance(mod, SEANetResnetBlock):
            x = x + _seanet(mod.block, x, cur, first)
        else:
            x = _elu(x, mod.alpha) if isinstance(mod, torch.nn.ELU) else mod(x)
    return x


def _elu(x, alpha: float):
    """ELU in vectorised passes (ONNX Runtime's Elu kernel is scalar: ~1.4x slower; SEANet
    applies it 13 times at up to 24 kHz x 64 channels). With ``alpha <= 1`` it is
    max(x, alpha * (exp(min(x, 0)) - 1)), four passes: for x < 0 the second term is the
    larger (e^x - 1 >= x), for x >= 0 it is 0."""
    import torch

    neg = torch.exp(torch.clamp(x, max=0.0)) - 1.0
    if alpha <= 1.0:
        return torch.maximum(x, neg if alpha == 1.0 else alpha * neg)
    return torch.relu(x) + (neg if alpha == 1.0 else alpha * neg)


def _is_activation(mod) -> bool:
    import torch

    return isinstance(mod, (torch.nn.ELU, torch.nn.ReLU, torch.nn.GELU, torch.nn.SiLU, torch.nn.Tanh,
                            torch.nn.Identity))


def _transformer_specs(pt, prefix: str, out: list[StateSpec]) -> None:
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


def _transformer(pt, x, cur: _Cursor, offset):
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


def _quantizer_tables(q):
    """For each residual stage of a moshi ``SplitResidualVectorQuantizer``: its input
    projection and, per codebook, the codebook and its augmented form for distances."""
    import torch

    stages = [q.rvq_first] + ([q.rvq_rest] if q.n_q > q.n_q_semantic else [])
    out = []
    for rvq in stages:
        books = []
        for layer in rvq.vq.layers[: rvq.n_q]:
            if not all(isinstance(p, torch.nn.Identity) for p in (layer.project_in, layer.project_out)):
                raise Unsupported("quantizer with codebook projections")
            e = layer._codebook.embedding.detach().clone()
            # |x - e|^2 = [-2x, |x|^2, 1] . [e, 1, |e|^2]: one product per codebook, the way
            # torch.cdist computes distances for large sets.
            books.append((e, torch.cat([e, torch.ones(e.shape[0], 1), (e * e).sum(-1, keepdim=True)], -1)))
        out.append((rvq.input_proj, books))
    return out


def _quantize(tables, x):
    """Latent [B, D, T] -> codes int64 [B, K, T] (nearest codeword, residual by residual)."""
    import torch

    codes = []
    for proj, books in tables:
        r = proj(x).transpose(1, 2)  # [B, T, d]
        for e, aug in books:
            xa = torch.cat([-2 * r, (r * r).sum(-1, keepdim=True), torch.ones_like(r[..., :1])], -1)
            idx = torch.argmin(xa @ aug.T, -1)  # [B, T]
            codes.append(idx)
            r = r - e[idx]
    return torch.stack(codes, 1)


def _dequantizer_tables(q):
    """Every codebook of a ``SplitResidualVectorQuantizer`` in one table (codebook k's
    entries at rows ``k * bins ...``), and the two stages' output projections."""
    import torch

    stages = [q.rvq_first, q.rvq_rest]
    books = [layer._codebook.embedding.detach().clone() for rvq in stages for layer in rvq.vq.layers]
    if any(not (isinstance(layer.project_out, torch.nn.Identity)) for rvq in stages for layer in rvq.vq.layers):
        raise Unsupported("quantizer with codebook projections")
    if q.n_q_semantic != 1:
        raise Unsupported("quantizer with more than one semantic codebook")
    return torch.cat(books), books[0].shape[0], q.rvq_first.output_proj, q.rvq_rest.output_proj


def _dequantize(tables, codes):
    """Codes int64 [B, K, T] (any K) -> Mimi's latent [B, D, T], as moshi's ``decode_latent``."""
    import torch

    table, bins, proj_first, proj_rest = tables
    k = torch.arange(codes.shape[1])[None, :, None]
    emb = table[codes + k * bins]  # [B, K, T, d]
    first = proj_first(emb[:, 0].transpose(1, 2))
    return first + proj_rest(emb[:, 1:].sum(1).transpose(1, 2))


def _modules():
    import torch

    class StreamEncoder(torch.nn.Module):
        """pcm [B, 1, 1920 n], offset [B] (25 Hz steps), *state -> codes [B, K, n], *state."""

        def __init__(self, mimi) -> None:
            super().__init__()
            from moshi.modules.resample import ConvDownsample1d

            self.mimi = mimi
            if mimi.encoder_frame_rate != mimi.frame_rate and not (
                    isinstance(mimi.downsample, ConvDownsample1d) and mimi.downsample.learnt):
                raise Unsupported("encoder resampling other than a learnt convolution")
            specs: list[StateSpec] = []
            _seanet_specs(mimi.encoder.model, "encoder", specs)
            _transformer_specs(mimi.encoder_transformer, "encoder_transformer", specs)
            if mimi.encoder_frame_rate != mimi.frame_rate:
                _specs_conv(mimi.downsample.conv, "downsample", specs)
            self.specs = specs
            self.tables = _quantizer_tables(mimi.quantizer)

        def forward(self, x, offset, *state):
            cur = _Cursor(state)
            first = offset == 0
            m = self.mimi
            x = _seanet(m.encoder.model, x, cur, first)
            x = _transformer(m.encoder_transformer, x, cur, offset)
            if m.encoder_frame_rate != m.frame_rate:
                x = _conv(m.downsample.conv, x, cur, first)
            return (_quantize(self.tables, x), *cur.out)

        def key_parts(self):  # what the graph holds
            m = self.mimi
            return [m.encoder, m.encoder_transformer, getattr(m, "downsample", None), m.quantizer]

    class StreamDecoder(torch.nn.Module):
        """codes [B, K, n] (any K), offset [B] (25 Hz steps), *state -> pcm [B, 1, 1920 n], *state."""

        def __init__(self, mimi) -> None:
            super().__init__()
            from moshi.modules.resample import ConvTrUpsample1d

            self.mimi = mimi
            if mimi.encoder_frame_rate != mimi.frame_rate and not (
                    isinstance(mimi.upsample, ConvTrUpsample1d) and mimi.upsample.learnt):
                raise Unsupported("decoder resampling other than a learnt transposed convolution")
            specs: list[StateSpec] = []
            if mimi.encoder_frame_rate != mimi.frame_rate:
                _specs_convtr(mimi.upsample.convtr, "upsample", specs)
            _transformer_specs(mimi.decoder_transformer, "decoder_transformer", specs)
            _seanet_specs(mimi.decoder.model, "decoder", specs)
            self.specs = specs
            self.tables = _dequantizer_tables(mimi.quantizer)

        def forward(self, codes, offset, *state):
            cur = _Cursor(state)
            m = self.mimi
            x = _dequantize(self.tables, codes)
            if m.encoder_frame_rate != m.frame_rate:
                x = _convtr(m.upsample.convtr, x, cur)
            x = _transformer(m.decoder_transformer, x, cur, offset)
            x = _seanet(m.decoder.model, x, cur, offset == 0)
            return (x, *cur.out)

        def key_parts(self):
            m = self.mimi
            return [m.quantizer, getattr(m, "upsample", None), m.decoder_transformer, m.decoder]

    return StreamEncoder, StreamDecoder


def stream_encoder(mimi):
    """The functional streaming encoder of a moshi ``MimiModel`` (raises ``Unsupported``)."""
    return _modules()[0](mimi).eval()


def stream_decoder(mimi):
    return _modules()[1](mimi).eval()


class StreamState:
    """The state of one batch of streams through a graph: arrays and per-row positions."""

    def __init__(self, specs: list[StateSpec], batch: int, steps_per_frame: int) -> None:
        import numpy as np

        self.specs, self.batch, self.steps = specs, batch, steps_per_frame
        self.arrays = [np.zeros((batch, *s.shape), np.float32) for s in specs]
        self.offset = np.zeros(batch, np.int64)  # transformer steps so far, per row

    def feeds(self) -> dict:
        return {"offset": self.offset, **{f"s{i}": a for i, a in enumerate(self.arrays)}}

    def advance(self, outputs, frames: int) -> None:
        """Take a call's state outputs (in spec order) for ``frames`` frames."""
        import numpy as np

        t = frames * self.steps
        for i, (spec, out) in enumerate(zip(self.specs, outputs)):
            if spec.ring_axis is None:
                self.arrays[i] = out
                continue
            ring, axis = self.arrays[i], spec.ring_axis
            keep = min(t, spec.shape[axis])
            new = np.arange(t - keep, t)
            slots = (self.offset[:, None] + new) % spec.shape[axis]  # [B, keep]
            for b in range(self.batch):
                at: list = [slice(None)] * len(spec.shape)
                at[axis] = slots[b]
                ring[b][tuple(at)] = np.take(out[b], new, axis=axis)
        self.offset = self.offset + t

    def reset(self, mask) -> None:
        """Restart the rows where ``mask`` is true."""
        import numpy as np

        rows = np.asarray(mask, dtype=bool)
        for a in self.arrays:
            a[rows] = 0.0
        self.offset = np.where(rows, 0, self.offset)
