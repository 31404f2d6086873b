"""The matmuls of moshikit's CPU engine (``cpu_engine``), picked at run time from the CPU and the batch.

Every kernel here comes from PyTorch (oneDNN / fbgemm); none is hand-written.

* ``int8``: weights per output channel in int8, packed once. Activations are scaled per row
  (each row divided by its own largest magnitude, then rounded on one fixed 8-bit grid), so
  a stream's result does not depend on its batch mates. Two passes (the activations'
  rounding residual through the same call, as rows of their own) where the step is bound by
  reading the weights (below ``ONE_PASS_FROM`` streams: the extra rows cost nothing); one pass
  where it is bound by arithmetic (half the multiply-adds). The kernel:

  - oneDNN's int8 inner product (``onednn::qlinear_pointwise``: AMX where present, else
    AVX-512 VNNI) where it multiplies full 8-bit activations exactly (checked once on this
    CPU); on CPUs without AMX, only from ``ONE_PASS_FROM`` rows. Measured on a 2-core Xeon
    with AMX (load ~1.5-2, one thread), one stt-1b step: batch 1 (two passes) 91 ms against
    fbgemm's 138 ms and ONNX Runtime ``MatMulNBits``'s 97 ms; batch 32 (one pass) 179 ms
    against fbgemm's 279 ms and ORT's 366 ms. On a 2-core AMD EPYC (Zen 4, VNNI, no AMX; 2
    threads, ``scripts/kernel_rates.py``), stt-1b's temporal products: one row 47-53 ms against
    fbgemm's 33-38, 8 rows 46-48 against 44-45, 32 rows 88 against 111-113. Laying oneDNN's
    copy out from fbgemm's takes a while once (stt-1b: 5.8-6.7 s, the first time 8 rows run);
    fbgemm's is then dropped (one copy of the weights), and oneDNN's runs at every batch after.
  - else PyTorch's dynamic quantized linear (fbgemm: AVX2, AVX-512 VNNI) with a sentinel row
    fixing the tensor's range (``torch_int8.Int8Linear``); 7-bit activations on CPUs whose
    int8 products would saturate int16 (no VNNI).

  Either way the activations' arithmetic around the product (~15 small torch calls) runs as one
  TorchScript call (``torch_int8.scripted``): from Python it cost as much as the product at one
  row (``scripts/int8_calls.py``).
* ``bf16``: weights in bf16, oneDNN's bf16 matmul (AMX or AVX-512 BF16 where present), laid out
  once in oneDNN's own blocked format (``mkldnn._reorder_linear_weight``, as ``torch.compile``
  freezes them), which plain ``F.linear`` re-lays on every call, except for weights streamed
  from memory on a CPU with AMX (``pack`` false: the temporal transformer's).
  ``scripts/kernel_rates.py``, 2 threads: on a 2-core Xeon with AMX, Kyutai TTS's 512 depth
  products of a frame 102 ms packed against 131 plain at one row (measured with layers that
  shared their weights: fewer bytes than the model's), stt-1b's temporal layers no
  faster at one row and ~15% slower at 32 rows packed; on a 2-core AMD EPYC (Zen 4: AVX-512 BF16,
  no AMX), the temporal layers 65 ms packed against 128 plain at one row, 164 against 250 at 32.
* ``attend``: one query per stream and head over the cache's keys and values. PyTorch's fused
  attention (``F.scaled_dot_product_attention``), except with bf16 keys and values on a CPU
  without AMX, where its CPU kernel takes each (stream, head) pair as a small product of its own:
  there two batched matmuls around a float32 softmax. On the 2-core AMD EPYC (2 threads), fused
  attention was 56% of an stt-1b step at batch 32 (torch's profiler); with the matmuls, with
  fbgemm below 8 rows, the step at batch 8 took 72 ms against 111 and at batch 32 174 against
  195 (``scripts/stt_profile.py --steps 30``, a short window).
* ``fp32``: the weights as loaded, in float32 (the tiny test models; the reference).
* CPUs without bf16 products (no AVX-512 BF16, no AMX: AVX2-only CPUs such as AMD's Zen 3):
  oneDNN has no bf16 kernel there and PyTorch multiplies bf16 in a generic loop. The KV caches are
  float32 (``kv_dtype``): attention over 32 streams x 375 positions, one stt-1b layer, took 33 ms
  over bf16 keys against 12-13 ms over float32 ones on a 2-core Zen 3 (2 threads, fused or as two
  matmuls alike); stt-1b's LM step alone went from 152 to 98 ms at batch 8 and from 437 to 313 ms
  at batch 32 (``scripts/stt_profile.py --steps``). bf16 weights (the text and depth heads beside
  int8 layers, ``--dtype bf16``) keep their bf16 values, multiplied in float32 from
  ``ONE_PASS_FROM`` rows: the text head at 32 rows took 22.6 ms in float32 against 50.7 in bf16,
  at 1 and 4 rows 3.1 and 12.7 ms against 1.8 and 6.5.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import List, Optional, Union  # the types TorchScript reads in _onednn_int8

import torch
from torch import nn
from torch.nn import functional as F

from ..cpu_precision import cpu_flags
from .torch_int8 import Int8Linear, scripted

#: From this batch size on, an int8 step is bound by arithmetic, not by reading the weights
#: (one stt-1b step at batch 8 does ~8 GOP over 0.9 GB of weights): one pass.
ONE_PASS_FROM = 8

KINDS = ("int8", "bf16", "fp32")

_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


def _worst_case(low: float, k: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights at the int8 extremes (127 and ``low``) and activations whose 8-bit codes reach 255:
    an int16 accumulation of pairs of u8*s8 products saturates on them (255 * 127 * 2 > 32767)."""
    w = torch.full((4, k), 127.0)
    w[1] = low
    x = torch.full((1, k), 1.0)
    x[0, 0] = -1.0
    return w, x, w @ x[0]


@lru_cache(maxsize=1)
def full_range_exact() -> bool:
    """Whether fbgemm's int8 linear multiplies full-range (8-bit) activations exactly here.

    Without VNNI the x86 kernels add pairs of u8*s8 products in int16, which saturates;
    PyTorch then needs ``reduce_range`` (7-bit activations). A worst case is run once and
    compared with the exact integer result."""
    if not any(f in cpu_flags() for f in _VNNI):
        return False
    w, x, exact = _worst_case(-128.0)
    qw = torch.quantize_per_channel(w, torch.ones(4, dtype=torch.double), torch.zeros(4, dtype=torch.long), 0,
                                    torch.qint8)
    y = torch.ops.quantized.linear_dynamic(x, torch.ops.quantized.linear_prepack(qw, None), False)
    return bool(torch.allclose(y[0], exact, rtol=0.02, atol=0.05 * w.shape[1]))


@lru_cache(maxsize=1)
def onednn_int8() -> bool:
    """Whether oneDNN's int8 inner product runs here on full 8-bit activations exactly (VNNI or
    AMX CPUs with a PyTorch that has ``onednn::qlinear_pointwise``)."""
    if not any(f in cpu_flags() for f in _VNNI):
        return False
    try:
        w, x, exact = _worst_case(-127.0)  # the engine's weights are symmetric: -127 to 127
        y = OneDnnInt8(w.to(torch.int8), torch.ones(4))(x, two_pass=False)
        return bool(torch.allclose(y[0], exact, rtol=1e-3, atol=1e-3))
    except (AttributeError, RuntimeError):  # no such op in this PyTorch, or no kernel for this CPU
        return False


def has_amx() -> bool:
    return any(f in cpu_flags() for f in ("amx_int8", "amx_bf16"))


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX). Without it (AVX2-only
    CPUs: AMD Zen 2 and 3, Intel before Cooper Lake) oneDNN has no bf16 kernel and PyTorch's bf16
    products run in a generic loop: see ``kv_dtype`` and ``Linear.set_batch``."""
    return any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16"))


def kv_dtype(kind: str) -> torch.dtype:
    """The KV caches' dtype beside weights in ``kind``: bf16 (half the bytes attention reads)
    where the CPU multiplies bf16 in hardware; float32 for fp32 weights and on CPUs without it
    (see the module's notes)."""
    return torch.bfloat16 if kind != "fp32" and native_bf16() else torch.float32


@lru_cache(maxsize=1)
def packed_bf16() -> bool:
    """Whether this PyTorch lays bf16 weights out once for oneDNN (``mkldnn._linear_pointwise``)
    and multiplies with them as the plain product does (checked once on this CPU)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.linspace(-1, 1, 24 * 32).view(24, 32).bfloat16()
        x = torch.linspace(1, -1, 3 * 32).view(3, 32).bfloat16()
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w), None, "none", [], "")
        # Both sides round the same bf16 products' fp32 sums to bf16: within a few bf16 steps.
        return bool(torch.allclose(y.float(), F.linear(x, w).float(), rtol=2e-2, atol=2e-2))
    except (AttributeError, RuntimeError):  # no such op in this PyTorch, or no kernel for this CPU
        return False


class OneDnnInt8:
    """``x @ (q * scale).T`` through oneDNN's int8 inner product (AMX or VNNI), PyTorch's
    ``onednn::qlinear_pointwise`` on weights packed once.

    Each row of ``x`` is divided by its own largest magnitude and rounded to 8 bits on a fixed
    grid (zero point 128, step 1/127), so a row's result does not depend on its batch mates;
    with ``two_pass`` its rounding residual goes through the same call as rows of their own,
    254 times larger (the weights are read once for both)."""

    LIFT = 254.0  # residuals (|r| <= 1/2 a step) scaled up to the grid's range

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        self.packed = torch.ops.onednn.qlinear_prepack(q, None)
        self.scale = scale.float().contiguous()
        self.zero = torch.zeros(q.shape[0], dtype=torch.long)

    def __call__(self, x: torch.Tensor, two_pass: bool) -> torch.Tensor:
        return scripted(_onednn_int8)(x, self.packed, self.scale, self.zero, two_pass, self.LIFT)


def _onednn_int8(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, two_pass: bool,
                 lift: float) -> torch.Tensor:
    """``OneDnnInt8``'s arithmetic on ``x`` [n, K] (float32), compiled once (``torch_int8.scripted``)."""
    n = x.size(0)
    s = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    xn = x * (s.reciprocal() * 127.0)  # in [-127, 127]
    rows = xn.round()
    if two_pass:
        rows = torch.cat([rows, ((xn - rows) * lift).round_()])
    no_post_op_args: List[Optional[Union[int, float, complex]]] = []
    y = torch.ops.onednn.qlinear_pointwise(rows.add_(128.0).to(torch.uint8), 1.0 / 127.0, 128, packed, scale, zero,
                                           None, 1.0, 0, torch.float32, "none", no_post_op_args, "")
    if two_pass:
        y = y[:n] + y[n:] / lift
    return y * s


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` [N, K] -> (int8 [N, K], fp32 scales [N]): symmetric, per output channel."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Linear(nn.Module):
    """A bias-free linear layer of the engine: float32 in, float32 out, weights in ``kind``."""

    def __init__(self, linear: nn.Linear, kind: str, *, pack: bool = False) -> None:
        """``pack``: bf16 weights laid out once for oneDNN (where ``packed_bf16``), for weights
        read at a few rows from the caches; without AMX, every bf16 weight is (see the module's notes)."""
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.two_pass = True
        self.int8: Int8Linear | None = None
        self.onednn: OneDnnInt8 | None = None
        # Without AMX, fbgemm's kernel below ONE_PASS_FROM rows and oneDNN's from it (the module's
        # notes); oneDNN's copy replaces fbgemm's the first time a batch that large runs.
        self.onednn_later = kind == "int8" and onednn_int8() and not has_amx()
        self.register_buffer("weight", torch.empty(0), persistent=False)
        if kind == "int8" and onednn_int8() and not self.onednn_later:
            self.onednn = OneDnnInt8(*quantize_rows(linear.weight))
        elif kind == "int8":
            # The bias is added after the row scales are multiplied back (not packed with the weights).
            bare = SimpleNamespace(in_features=linear.in_features, out_features=linear.out_features,
                                   weight=linear.weight, bias=None)
            self.int8 = Int8Linear(bare, reduce_range=not full_range_exact())
        elif kind == "bf16":
            self.weight = linear.weight.detach().to(torch.bfloat16).contiguous()
            if (pack or not has_amx()) and packed_bf16():
                self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight)
        else:
            self.weight = linear.weight.detach().float().contiguous()
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def set_batch(self, batch: int) -> None:
        self.two_pass = batch < ONE_PASS_FROM
        if self.kind == "bf16" and not self.weight.is_mkldnn and not native_bf16():
            # No bf16 kernel here: the same bf16 values multiplied in float32 from ONE_PASS_FROM rows
            # (the module's notes), converted once when the batch changes (one copy at a time).
            dtype = torch.float32 if batch >= ONE_PASS_FROM else torch.bfloat16
            if self.weight.dtype != dtype:
                self.weight = self.weight.to(dtype)
        if self.onednn_later and not self.two_pass:
            # One copy at a time: oneDNN's from now on, at every batch (as with AMX).
            qweight, _ = torch.ops.quantized.linear_unpack(self.int8._packed)
            self.onednn = OneDnnInt8(qweight.int_repr(), qweight.q_per_channel_scales().float())
            self.int8, self.onednn_later = None, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn is not None:
            y = self.onednn(x, self.two_pass)
        elif self.int8 is not None:
            y = self.int8.forward(x) if self.two_pass else self.int8.one_pass(x)  # no module hooks to run
        elif self.kind == "bf16" and self.weight.is_mkldnn:
            y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.weight, None, "none", [], "").float()
        elif self.kind == "bf16":
            y = F.linear(x.to(self.weight.dtype), self.weight).float()
        else:
            y = F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias

    def weight_bytes(self) -> int:
        if self.kind == "int8":
            return self.in_features * self.out_features + 4 * self.out_features
        return self.weight.numel() * self.weight.element_size()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}"


def kernel_note(kind: str, batch: int) -> str:
    """What runs the matmuls for ``kind`` at ``batch`` here (bench notes, ``info``)."""
    if kind == "int8":
        passes = "two passes" if batch < ONE_PASS_FROM else "one pass"
        if onednn_int8() and (has_amx() or batch >= ONE_PASS_FROM):
            return f"int8 weights, 8-bit activations, {passes} (oneDNN)"
        bits = "8-bit" if full_range_exact() else "7-bit (no VNNI)"
        return f"int8 weights, {bits} activations, {passes} (PyTorch {torch.backends.quantized.engine})"
    return f"{kind} weights (PyTorch/oneDNN)"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``q`` [B, H, 1, D] over ``k``, ``v`` [B, H, N, D] (``mask`` [B, 1, 1, N]: True
    where a key counts), in their dtype: see the module's notes."""
    if k.dtype != torch.bfloat16 or has_amx():
        return F.scaled_dot_product_attention(q, k, v, mask)
    # The scores rounded to bf16 once more than the fused kernel's: as much as the keys' own
    # bf16 rounding moves them (2^-9 of each product's terms).
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, -1).to(v.dtype), v)
