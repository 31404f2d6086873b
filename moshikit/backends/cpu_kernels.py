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
  Below ``ONE_PASS_FROM`` streams, where a step only reads weights, the same int8 weights run
  through ONNX Runtime's ``MatMulNBits`` instead (MLAS: int8 products on VNNI/AMX, activations
  quantised per row and block of ``ORT_BLOCK`` inputs, so rows stay independent and one pass
  keeps the precision of fbgemm's two): measured on a loaded 2-core Xeon, one thread, the
  matmuls of one stt-1b step at batch 1 took 73 ms against fbgemm's 134 ms (two passes) and
  115 ms (one pass); at batch 32 fbgemm's one pass wins (228 against 287 ms).
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
#: (one stt-1b step at batch 8 does ~8 GOP over 0.9 GB of weights): one pass of fbgemm.
#: Below it, ONNX Runtime's ``MatMulNBits`` where it runs here, else fbgemm's two passes.
ONE_PASS_FROM = 8
#: Inputs per ``MatMulNBits`` block. The engine's weights are quantised per output channel
#: (fbgemm's layout), so every block of a row carries the row's scale: big blocks, few scales.
ORT_BLOCK = 128

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


@lru_cache(maxsize=1)
def ort_int8() -> bool:
    """Whether ONNX Runtime is installed with an 8-bit ``MatMulNBits`` (checked once, on a tiny product)."""
    try:
        w = torch.randint(-127, 128, (4, ORT_BLOCK), dtype=torch.int8)
        kernel = OrtInt8(w, torch.ones(4), threads=1)
        x = torch.ones(1, ORT_BLOCK)
        return bool(torch.allclose(kernel(x), (w.float() @ x[0])[None], rtol=0.02, atol=0.05 * ORT_BLOCK))
    except Exception:  # no onnxruntime, or one without 8-bit MatMulNBits (it came in 1.20)
        return False


class OrtInt8:
    """``x @ (q * scale).T`` through one ONNX Runtime session holding one ``MatMulNBits``.

    ``q`` int8 [N, K], ``scale`` [N] (per output channel). The session's worker threads do not
    spin after a call (torch's kernels run between the calls)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        from .onnx_int8 import ACCURACY_INT8

        n, k = q.shape
        blocks = (q.numpy().astype(np.int16) + 128).astype(np.uint8).reshape(n, k // ORT_BLOCK, ORT_BLOCK)
        scales = np.repeat(scale.float().numpy(), k // ORT_BLOCK).astype(np.float32)
        node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=8,
                                block_size=ORT_BLOCK, accuracy_level=ACCURACY_INT8)
        graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
                                  initializer=[numpy_helper.from_array(blocks, "w"), numpy_helper.from_array(scales, "s")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.contiguous().numpy()})[0])


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
        self.ort: OrtInt8 | None = None
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
        small = self.int8 is not None and self.two_pass and ort_int8() and self.in_features % ORT_BLOCK == 0
        if small and self.ort is None:  # the same int8 weights, read back from fbgemm's packing
            qw = torch.ops.quantized.linear_unpack(self.int8._packed)[0]
            self.ort = OrtInt8(qw.int_repr(), qw.q_per_channel_scales().float(), torch.get_num_threads())
        elif not small:
            self.ort = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ort is not None:
            y = self.ort(x)
        elif self.int8 is not None:
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
        if batch < ONE_PASS_FROM and ort_int8():
            return "int8 weights, 8-bit activations per block (ONNX Runtime MatMulNBits)"
        bits = "8-bit" if full_range_exact() else "7-bit (no VNNI)"
        passes = "two passes" if batch < ONE_PASS_FROM else "one pass"
        return f"int8 weights, {bits} activations, {passes} (PyTorch {torch.backends.quantized.engine})"
    return f"{kind} weights (PyTorch/oneDNN)"
