"""The matmuls of moshikit's CPU engine (``cpu_engine``), picked at run time from the CPU and the batch.

Every kernel here comes from PyTorch (fbgemm / oneDNN); none is hand-written.

* ``int8``: weights per output channel in int8, packed once, run through PyTorch's dynamic
  quantized linear (fbgemm on x86: AVX2, AVX-512 VNNI, AMX). Activations are scaled per row
  with a sentinel row fixing the tensor's range (``torch_int8.Int8Linear``), so a stream's
  result does not depend on its batch mates. Two passes (the activations' rounding residual
  through the same call) where the step is bound by reading the weights (small batches: the
  extra rows cost nothing); one pass where it is bound by arithmetic (large batches: half
  the multiply-adds). Where the int8 kernel multiplies full 8-bit activations without int16
  saturation (checked once on this CPU: VNNI/AMX machines), activations use all 8 bits.
* ``bf16``: weights in bf16, oneDNN's bf16 matmul (AMX or AVX-512 BF16 where present).
* ``fp32``: the weights as loaded, in float32 (the tiny test models; the reference).

Measured on a loaded 2-core Xeon (AMX), one thread, the four matmuls of one stt-1b layer
(51 M weights): batch 1: int8 one pass 2.7 ms, two passes 4.9 ms, bf16 10 ms; batch 32: int8
one pass 12 ms, two passes 29 ms, bf16 15 ms (oneDNN re-lays out plain bf16 weights on each
call). Hence int8 at every batch by default; ``bf16`` is selectable (``--dtype bf16``).
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from ..cpu_precision import cpu_flags
from .torch_int8 import Int8Linear

#: From this batch size on, an int8 step is bound by arithmetic, not by reading the weights
#: (one stt-1b step at batch 8 does ~8 GOP over 0.9 GB of weights): one pass.
ONE_PASS_FROM = 8

KINDS = ("int8", "bf16", "fp32")


@lru_cache(maxsize=1)
def full_range_exact() -> bool:
    """Whether PyTorch's int8 linear multiplies full-range (8-bit) activations exactly here.

    Without VNNI the x86 kernels add pairs of u8*s8 products in int16, which saturates for
    255 * 127 * 2; PyTorch then needs ``reduce_range`` (7-bit activations). A worst case is
    run once and compared with the exact integer result."""
    if not any(f in cpu_flags() for f in ("avx512_vnni", "avx_vnni", "amx_int8")):
        return False
    k = 64
    w = torch.full((4, k), 127.0)
    w[1] = -128.0
    qw = torch.quantize_per_channel(w, torch.ones(4, dtype=torch.double), torch.zeros(4, dtype=torch.long), 0,
                                    torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, None)
    x = torch.full((1, k), 1.0)
    x[0, 0] = -1.0  # range [-1, 1]: 1.0 quantises to 255 with full range
    y = torch.ops.quantized.linear_dynamic(x, packed, False)
    exact = w @ x[0]
    return bool(torch.allclose(y[0], exact, rtol=0.02, atol=0.05 * k))


class Linear(nn.Module):
    """A bias-free linear layer of the engine: float32 in, float32 out, weights in ``kind``."""

    def __init__(self, linear: nn.Linear, kind: str) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.two_pass = True
        self.int8: Int8Linear | None = None
        self.register_buffer("weight", torch.empty(0), persistent=False)
        if kind == "int8":
            # The bias is added after the row scales are multiplied back (not packed with the weights).
            bare = SimpleNamespace(in_features=linear.in_features, out_features=linear.out_features,
                                   weight=linear.weight, bias=None)
            self.int8 = Int8Linear(bare, reduce_range=not full_range_exact())
        else:
            dtype = torch.bfloat16 if kind == "bf16" else torch.float32
            self.weight = linear.weight.detach().to(dtype).contiguous()
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def set_batch(self, batch: int) -> None:
        self.two_pass = batch < ONE_PASS_FROM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8 is not None:
            y = self.int8(x) if self.two_pass else self.int8.one_pass(x)
        elif self.kind == "bf16":
            y = F.linear(x.to(torch.bfloat16), self.weight).float()
        else:
            y = F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias

    def weight_bytes(self) -> int:
        if self.int8 is not None:
            return self.in_features * self.out_features + 4 * self.out_features
        return self.weight.numel() * self.weight.element_size()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}"


def kernel_note(kind: str, batch: int) -> str:
    """What runs the matmuls for ``kind`` at ``batch`` here (bench notes, ``info``)."""
    if kind == "int8":
        bits = "8-bit" if full_range_exact() else "7-bit (no VNNI)"
        passes = "two passes" if batch < ONE_PASS_FROM else "one pass"
        return f"int8 weights, {bits} activations, {passes} (PyTorch {torch.backends.quantized.engine})"
    return f"{kind} weights (PyTorch/oneDNN)"
