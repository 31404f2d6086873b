"""How fast the CPU engine's matmul kernels stream a model's weights, beside this machine's memory read.

The engine's own layers (``moshikit.backends.cpu_kernels.Linear``: int8 on oneDNN or fbgemm; bf16
plain, as the temporal transformer's, or laid out once for oneDNN, ``pack``, as the depth
transformer's), at a few batch sizes, over:

* ``temporal``: stt-1b's temporal transformer (16 layers of 2048-wide products, 822 MB in int8:
  beyond the caches), one step per pass;
* ``depth``: Kyutai TTS 1.6B's depth transformer at one frame (32 codebooks x 4 layers; each
  layer has weights per step for the first 10 codebooks and one set for the other 22: 44 sets,
  462 M weights, of which the shared 42 M are read 22 times a frame).

``--formats`` may add the engine's int8 kernels forced, ``int8 fbgemm`` and ``int8 onednn`` (``int8``
is what the engine picks on this CPU at that batch), and
two of PyTorch's weight-only kernels the engine measured and does not use:
``int8 weight-only`` (``_weight_int8pack_mm``, bf16 activations) and ``int4`` (
``_weight_int4pack_mm_for_cpu``, groups of 32, bf16 activations); and two of ONNX Runtime's
int8 kernels, ``int8 onnx`` (``DynamicQuantizeMatMul``) and ``int8 onnx blocks`` (``MatMulNBits``
with 8 bits in blocks of 32), one session a product. Random weights (speed only). Prints the CPU,
the load average and the read bandwidth measured by ``moshikit.bench.limits`` in the same run;
``--rounds N`` builds every format first and times them in turns (a VM's drifting speed then falls
on all alike). Run it on an idle machine:

    .venv/bin/python scripts/kernel_rates.py --shapes temporal --rows 1,2,8,32
    .venv/bin/python scripts/kernel_rates.py --shapes temporal --rows 1,8,32 \
        --formats "int8,int8 onnx,int8 onnx blocks" --repeats 2 --rounds 4
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
from torch import nn

from moshikit.backends.cpu_kernels import Linear, OneDnnInt8, full_range_exact, kernel_note, packed_bf16, quantize_rows
from moshikit.backends.torch_int8 import Int8Linear
from moshikit.bench.limits import measure_machine
from tts_profile import machine_line  # this folder is on the path when a script of it runs

TEMPORAL = [(6144, 2048), (2048, 2048), (11264, 2048), (2048, 5632)]  # qkv, out, gated ff in, ff out
DEPTH = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 2048)]
DEPTH_SCHEDULE = list(range(10)) + [10] * 22


def plan(shapes: str) -> tuple[list[list[tuple[int, int]]], list[int]]:
    """The weight sets and the order one pass uses them in."""
    if shapes == "temporal":
        return [TEMPORAL] * 16, list(range(16))
    # Each of the 4 layers has its own weights for each of the 11 sets (44 in all, 462 M weights).
    return [DEPTH] * 44, [4 * s + layer for s in DEPTH_SCHEDULE for layer in range(4)]


class WeightOnly:
    """One of PyTorch's weight-only kernels over ``dense``'s weights: ``int8 weight-only``
    (per output channel) or ``int4`` (asymmetric, groups of 32); bf16 activations."""

    def __init__(self, dense: nn.Linear, fmt: str) -> None:
        w = dense.weight.detach().float()
        if fmt == "int4":
            n, k = w.shape
            groups = w.view(n, k // 32, 32)
            low, high = groups.amin(-1), groups.amax(-1)
            scale = ((high - low) / 15).clamp_min(1e-8)
            q = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).view(n, k)
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            self.scales = torch.stack([scale.T, (low + 8 * scale).T], -1).contiguous().bfloat16()
            self.run = lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, 32, self.scales)
        else:
            q, scale = quantize_rows(w)
            self.run = lambda x: torch._weight_int8pack_mm(x, q, scale.bfloat16())

    def set_batch(self, batch: int) -> None:
        pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x.bfloat16()).float()


class OnnxInt8:
    """One of ONNX Runtime's int8 kernels over ``dense``'s weights (MLAS), one session a product:
    ``int8 onnx`` (``DynamicQuantizeMatMul``: the activations on one 8-bit grid per call, the
    weights per output channel) or ``int8 onnx blocks`` (``MatMulNBits``, 8 bits: the weights in
    blocks of 32 along the input, the activations quantized per block too, ``accuracy_level`` 4)."""

    def __init__(self, dense: nn.Linear, fmt: str, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        w = dense.weight.detach().float().numpy()  # [n, k]
        n, k = w.shape
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])
        if fmt == "int8 onnx":
            scale = np.maximum(np.abs(w).max(1), 1e-8) / 127
            q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
            inits = [numpy_helper.from_array(q.T.copy(), "w"), numpy_helper.from_array(scale.astype(np.float32), "s")]
            self.op = "DynamicQuantizeMatMul"
            node = helper.make_node(self.op, ["x", "w", "s"], ["y"], domain="com.microsoft")
        else:
            block = 32
            blocks = w.reshape(n, k // block, block)
            scale = np.maximum(np.abs(blocks).max(-1), 1e-8) / 127
            q = (np.clip(np.round(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
            inits = [numpy_helper.from_array(q, "w"), numpy_helper.from_array(scale.reshape(-1).astype(np.float32), "s")]
            self.op = "MatMulNBits"
            node = helper.make_node(self.op, ["x", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n,
                                    bits=8, block_size=block, accuracy_level=4)
        graph = helper.make_graph([node], "product", [x], [y], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # One pool per session here (64 for stt-1b's layers): spinning pools would fight for the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def set_batch(self, batch: int) -> None:
        pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.numpy()})[0])


def layers_for(fmt: str, sets: list[list[tuple[int, int]]], threads: int = 2):
    """Per set, per shape: the engine's layer in ``fmt`` (or a weight-only kernel)."""
    out = []
    for shapes in sets:
        row = []
        for n, k in shapes:
            dense = nn.Linear(k, n, bias=False)
            nn.init.normal_(dense.weight, std=0.02)
            if fmt in ("int8 weight-only", "int4"):
                row.append(WeightOnly(dense, fmt))
            elif fmt in ("int8 onnx", "int8 onnx blocks"):
                row.append(OnnxInt8(dense, fmt, threads))
            elif fmt == "int8 fbgemm":
                row.append(fbgemm_linear(dense))
            elif fmt == "int8 onednn":
                row.append(onednn_linear(dense))
            else:
                row.append(Linear(dense, fmt.split()[0], pack=fmt.endswith("packed")))
        out.append(row)
    return out


def fbgemm_linear(dense: nn.Linear) -> Linear:
    """The engine's int8 layer on its other kernel, PyTorch's dynamic quantized linear (fbgemm),
    which it runs where oneDNN's int8 product is missing or inexact."""
    layer = Linear(dense, "fp32")
    layer.kind, layer.weight = "int8", torch.empty(0)
    layer.int8 = Int8Linear(SimpleNamespace(in_features=dense.in_features, out_features=dense.out_features,
                                            weight=dense.weight, bias=None), reduce_range=not full_range_exact())
    return layer


def onednn_linear(dense: nn.Linear) -> Linear:
    """The engine's int8 layer on oneDNN's inner product at every batch (on CPUs without AMX the
    engine runs it only from ``ONE_PASS_FROM`` rows)."""
    layer = Linear(dense, "fp32")
    layer.kind, layer.weight = "int8", torch.empty(0)
    layer.onednn = OneDnnInt8(*quantize_rows(dense.weight))
    return layer


def one_pass(layers, order: list[int], xs: list[torch.Tensor]) -> None:
    for s in order:
        for j, layer in enumerate(layers[s]):
            layer(xs[j])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", choices=("temporal", "depth"), default="temporal")
    ap.add_argument("--rows", default="1,2,8,32")
    ap.add_argument("--formats", default="int8,bf16,bf16 packed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="more than 1: build every format first, then time them in turns this many times")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = measure_machine(("int8",))
    print(f"{machine_line(args.threads)}, memory read {machine.read_gb_s} GB/s, packed bf16: {packed_bf16()}")
    sets, order = plan(args.shapes)
    print("format           rows   ms a pass   GB/s of weights   share of memory read   kernel")
    formats = args.formats.split(",")
    if args.rounds > 1:  # every format built at once, then timed in turns: a drifting VM falls on all
        built = {fmt: layers_for(fmt, sets, args.threads) for fmt in formats}
        for rows in (int(r) for r in args.rows.split(",")):
            best = dict.fromkeys(formats, float("inf"))
            for _ in range(args.rounds):
                for fmt in formats:
                    best[fmt] = min(best[fmt], timed_pass(built[fmt], order, sets, rows, args.repeats))
            for fmt in formats:
                report(fmt, built[fmt], rows, best[fmt], sets, order, machine)
        return
    for fmt in formats:
        layers = layers_for(fmt, sets, args.threads)
        for rows in (int(r) for r in args.rows.split(",")):
            report(fmt, layers, rows, timed_pass(layers, order, sets, rows, args.repeats), sets, order, machine)
        del layers


def timed_pass(layers, order: list[int], sets, rows: int, repeats: int) -> float:
    """The best of ``repeats`` passes at ``rows`` rows (after one to warm up), in seconds."""
    for row in layers:
        for layer in row:
            layer.set_batch(rows)
    xs = [torch.randn(rows, k) for _, k in sets[0]]
    with torch.inference_mode():
        one_pass(layers, order, xs)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            one_pass(layers, order, xs)
            best = min(best, time.perf_counter() - t)
    return best


def report(fmt: str, layers, rows: int, best: float, sets, order: list[int], machine) -> None:
    elem = {"int8": 1, "int8 fbgemm": 1, "int8 onednn": 1, "int8 weight-only": 1, "int4": 0.5,
            "int8 onnx": 1, "int8 onnx blocks": 1 + 4 / 32}.get(fmt, 2)
    read = int(sum(n * k * elem for s in order for n, k in sets[s]))
    rate = read / best / 1e9
    note = "PyTorch's weight-only kernel" if isinstance(layers[0][0], WeightOnly) else \
        f"ONNX Runtime's {layers[0][0].op} (MLAS)" if isinstance(layers[0][0], OnnxInt8) else \
        "fbgemm, PyTorch's dynamic quantized linear" if fmt == "int8 fbgemm" else \
        "oneDNN's int8 inner product" if fmt == "int8 onednn" else \
        kernel_note(fmt.split()[0], rows) + (", laid out once" if fmt.endswith("packed") else "")
    print(f"{fmt:<16} {rows:>4}   {best * 1e3:>9.1f}   {rate:>15.1f}   {rate / machine.read_gb_s:>20.0%}   "
          f"{note}", flush=True)


if __name__ == "__main__":
    main()
