"""The convolutional parts of Mimi as pure streaming functions: causal and transposed
convolutions, the SEANet stacks, and the state each keeps between calls."""

from __future__ import annotations

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


class StateCursor:
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


def specs_conv(mod, name: str, out: list[StateSpec]) -> None:
    c = mod.conv.conv
    if _conv_tail(c):
        out.append(StateSpec(name, (c.in_channels, _conv_tail(c))))


def _polyphase(c) -> bool:
    """Whether a transposed convolution runs as ``stream_convtr``'s polyphase convolution."""
    return c.kernel_size[0] == 2 * c.stride[0] and c.dilation[0] == 1 and c.groups in (1, c.in_channels) \
        and c.groups in (1, c.out_channels)


def specs_convtr(mod, name: str, out: list[StateSpec]) -> None:
    c = mod.convtr.convtr
    if not _polyphase(c):
        raise Unsupported(f"{name}: transposed convolution other than kernel = 2 x stride")
    out.append(StateSpec(name, (c.in_channels, 1)))  # the previous input step


def stream_conv(mod, x, cur: StateCursor, first):
    import torch

    c = mod.conv.conv
    pad = _conv_tail(c)
    if pad:
        prev = cur.take()
        if mod.pad_mode == "replicate":
            prev = torch.where(first.view(-1, 1, 1), x[..., :1].expand_as(prev), prev)
        x = torch.cat([prev, x], -1)
        cur.put(x[..., -pad:])
    return conv1d(x, c.weight, c.bias, c.stride[0], c.dilation[0], c.groups)


#: Convolutions with at least this many weights run as a product (``conv1d``).
MATMUL_CONV_WEIGHTS = 1 << 19


def conv1d(x, w, bias, stride: int, dilation: int, groups: int):
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


def stream_convtr(mod, x, cur: StateCursor):
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
    y = conv1d(x, poly, bias.repeat_interleave(s) if bias is not None else None, 1, 1, c.groups)
    return y.unflatten(1, (c.out_channels, s)).transpose(2, 3).reshape(y.shape[0], c.out_channels, -1)


def seanet_specs(seq, prefix: str, out: list[StateSpec]) -> None:
    import torch
    from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d
    from moshi.modules.seanet import SEANetResnetBlock

    for i, mod in enumerate(seq):
        name = f"{prefix}.{i}"
        if isinstance(mod, StreamingConv1d):
            specs_conv(mod, name, out)
        elif isinstance(mod, StreamingConvTranspose1d):
            specs_convtr(mod, name, out)
        elif isinstance(mod, SEANetResnetBlock):
            if not isinstance(mod.shortcut, torch.nn.Identity):
                raise Unsupported(f"{name}: residual block with a convolution shortcut")
            seanet_specs(mod.block, name, out)
        elif not _is_activation(mod):
            raise Unsupported(f"{name}: {type(mod).__name__}")


def stream_seanet(seq, x, cur: StateCursor, first):
    import torch
    from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d
    from moshi.modules.seanet import SEANetResnetBlock

    for mod in seq:
        if isinstance(mod, StreamingConv1d):
            x = stream_conv(mod, x, cur, first)
        elif isinstance(mod, StreamingConvTranspose1d):
            x = stream_convtr(mod, x, cur)
        elif isinstance(mod, SEANetResnetBlock):
            x = x + stream_seanet(mod.block, x, cur, first)
        else:
            x = elu(x, mod.alpha) if isinstance(mod, torch.nn.ELU) else mod(x)
    return x


def elu(x, alpha: float):
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
