"""8-bit weights for moshi's LM on a CPU: the transformer's Linear layers as int8 matmuls.

Why: a step of a ~1 B-parameter LM at batch 1 reads every weight once, so its time is the
weights' size over the memory bandwidth (4 GB in fp32, 1 GB in int8). The int8 kernels are
PyTorch's quantized dynamic linear (fbgemm / oneDNN: AVX2, AVX-512 VNNI, AMX where present,
so AMD and Intel alike): weights per output channel in int8, activations quantised on the fly.

Activations are quantised so that a row's result depends on that row alone (a stream's text
does not change with its batch mates): each row is divided by its own largest magnitude, and
one sentinel row holding +1 and -1 fixes the tensor's range to [-1, 1], so the quantisation
parameters are the same whatever else is in the batch. The row's scale is multiplied back
after the matmul. The kernel's 7-bit activation grid (``reduce_range``, safe from int16
saturation on AVX2 machines too) alone costs ~6 dB of logit SNR on the test model, so what
it rounds off goes through the same call as extra rows, scaled up (two passes over the
activations, one read of the weights): the error left is the weights' 8-bit rounding
(tiny random model, teacher-forced logits: 32.8 dB vs fp32; bf16 weights give 34.7 dB).

What stays in floating point: embeddings, norms, attention itself (softmax over the KV cache),
the text head and the extra heads (the logits' precision matters most there).
"""

from __future__ import annotations

import torch
from torch import nn

#: Weights quantised per output channel (symmetric int8).
_WEIGHT_DTYPE = torch.qint8


class Int8Linear(nn.Linear):
    """A bias-free ``nn.Linear`` whose weight is stored packed in int8.

    It stays an ``nn.Linear`` (moshi's attention sizes its KV cache from ``in_projs[0]``,
    reading ``weight.device`` and ``weight.dtype``); ``weight`` is an empty placeholder of the
    activations' dtype, and the matmul runs on the packed int8 copy.
    """

    def __init__(self, linear: nn.Linear, *, reduce_range: bool = True) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        qw = torch.quantize_per_channel(w, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0,
                                        _WEIGHT_DTYPE)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(qw, bias)
        self.reduce_range = reduce_range
        self.weight = nn.Parameter(torch.empty(0, dtype=torch.float32), requires_grad=False)
        self.register_parameter("bias", None)
        sentinel = torch.zeros(1, self.in_features)
        sentinel[0, 0], sentinel[0, -1] = 1.0, -1.0
        self.register_buffer("_sentinel", sentinel, persistent=False)
        levels = 127 if reduce_range else 255  # the kernel's activation range in [-1, 1]
        self._step, self._zero = 2.0 / levels, round(levels / 2)  # its choice for min -1, max 1
        self._lift = 1.0 / self._step  # residuals (|r| <= step / 2) scaled up to [-1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scripted(_two_pass)(x, self._sentinel, self._packed, self._step, self._zero, self._lift,
                                   self.reduce_range)

    def one_pass(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` without the residual pass: half the multiply-adds, the activations' grid
        left as it is (what a compute-bound batch wants; rows still independent of each other)."""
        return scripted(_one_pass)(x, self._sentinel, self._packed, self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def scripted(fn):
    """``fn`` compiled by TorchScript, once: its torch calls then run without Python between them.
    A layer's activations take ~15 small torch calls around one int8 product; from Python each
    costs a few microseconds of argument parsing, as much as the product itself at one row on
    weights that fit the caches (Kyutai TTS's depth transformer makes 512 such products a frame)."""
    if EAGER:
        return fn
    compiled = _SCRIPTED.get(fn)
    if compiled is None:
        compiled = _SCRIPTED[fn] = torch.jit.script(fn)
    return compiled


_SCRIPTED: dict = {}
#: True: the same functions run from Python, call by call (``scripts/int8_calls.py`` times both).
EAGER = False


def _two_pass(x: torch.Tensor, sentinel: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase,
              step: float, zero: int, lift: float, reduce_range: bool) -> torch.Tensor:
    """``Int8Linear.forward``: see the module's notes. ``x`` [..., K], any float dtype."""
    rows = x.reshape(-1, x.size(-1)).float()
    n = rows.size(0)
    s = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    xn = rows / s
    # The activations' grid in the int8 kernel (range [-1, 1] fixed by the sentinel): what it
    # cannot represent, the residual, goes through the same matmul as rows of their own,
    # scaled up to the same range (the weights are read once for both).
    hi = torch.quantize_per_tensor(xn, step, zero, torch.quint8).dequantize()
    y = torch.ops.quantized.linear_dynamic(torch.cat([xn, (xn - hi) * lift, sentinel]), packed, reduce_range)
    y = (y[:n] + y[n : 2 * n] / lift) * s
    return y.reshape(list(x.shape[:-1]) + [y.size(1)]).to(x.dtype)


def _one_pass(x: torch.Tensor, sentinel: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase,
              reduce_range: bool) -> torch.Tensor:
    """``Int8Linear.one_pass``. ``x`` [..., K], any float dtype."""
    rows = x.reshape(-1, x.size(-1)).float()
    n = rows.size(0)
    s = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    y = torch.ops.quantized.linear_dynamic(torch.cat([rows / s, sentinel]), packed, reduce_range)[:n] * s
    return y.reshape(list(x.shape[:-1]) + [y.size(1)]).to(x.dtype)


class GatingGeneric(nn.Module):
    """moshi's ``ActivationGating`` calling its linears as modules (its fused kernel reads
    ``.weight`` directly, which an int8 layer does not hold)."""

    def __init__(self, gating: nn.Module) -> None:
        super().__init__()
        self.linear_in, self.linear_out, self.activation = gating.linear_in, gating.linear_out, gating.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from moshi.modules.gating import gating_forward_generic

        return gating_forward_generic(self.linear_in, self.linear_out, self.activation, x)


def quantize_lm(model: nn.Module) -> int:
    """Replace the Linear layers of ``model.transformer`` (attention projections and feed-forward)
    by ``Int8Linear``, in place; the rest of the model becomes float32. Returns the weights
    quantised. The model may arrive in bf16 (half the memory while loading)."""
    from moshi.modules.gating import ActivationGating

    count = 0
    with torch.no_grad():
        for layer in model.transformer.layers:
            attn = layer.self_attn
            for plist in (attn.in_projs, attn.out_projs):
                for i, lin in enumerate(plist):
                    if type(lin) is nn.Linear:
                        plist[i] = Int8Linear(lin)
                        count += lin.weight.numel()
            gating = getattr(layer, "gating", None)
            if isinstance(gating, ActivationGating) and type(gating.linear_in) is nn.Linear:
                n = gating.linear_in.weight.numel() + gating.linear_out.weight.numel()
                gating.linear_in, gating.linear_out = Int8Linear(gating.linear_in), Int8Linear(gating.linear_out)
                layer.gating = GatingGeneric(gating)
                count += n
        model.float()
    return count
