"""Int8 weights for the live decoder graph (issue #7).

A streaming frame through Mimi's decoder reads every weight of it once (~160 MB in
fp32) for two transformer steps of work, so on a CPU its time is mostly memory traffic.
Here the graph's large matrix products become ONNX Runtime's ``MatMulNBits``: weights
stored as 8-bit integers with one fp32 scale per block of ``BLOCK`` inputs (symmetric,
zero point 128), multiplied with int8 kernels. Measured on the synthetic checkpoint:
decode step 0.65-0.70x the time of the fp32 graph, output within ~69 dB SNR of it
(docs/benchmarks.md). Only the decoder: the encoder's codes flip under the same
rounding (36% equal on the synthetic checkpoint), so it stays fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Inputs per quantisation block (one scale each).
BLOCK = 32
#: Products with fewer weights stay fp32 (small ones cost little traffic).
MIN_WEIGHTS = 1 << 18
#: ``MatMulNBits`` accuracy level 4: int8 products (the fp32-compute level has no fast
#: 8-bit kernel: measured 5.7x slower than fp32).
ACCURACY_INT8 = 4


def quantize_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` [K, N] (the second operand of a MatMul) -> (uint8 [N, K / BLOCK, BLOCK], scales [N * K / BLOCK])."""
    k, n = w.shape
    blocks = np.ascontiguousarray(w.T).reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    scale = np.abs(blocks).max(-1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(blocks / scale[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), scale.astype(np.float32).reshape(-1)


def dequantize_blocks(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The inverse of ``quantize_blocks`` (up to rounding): [K, N] float32."""
    n, nb, b = q.shape
    return ((q.astype(np.float32) - 128.0) * scale.reshape(n, nb, 1)).reshape(n, nb * b).T


def write_int8(src: Path, dst: Path) -> int:
    """Copy the graph at ``src`` to ``dst`` with its large constant-weight MatMuls in int8
    (atomically). Returns how many products were converted."""
    import onnx
    from onnx import helper, numpy_helper

    from ..audio import atomic_path

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes, converted = [], 0
    for node in g.node:
        w = numpy_helper.to_array(inits[node.input[1]]) if node.op_type == "MatMul" and node.input[1] in inits else None
        if w is None or w.ndim != 2 or w.size < MIN_WEIGHTS or w.shape[0] % BLOCK:
            nodes.append(node)
            continue
        q, scale = quantize_blocks(w)
        qname, sname = f"{node.input[1]}.int8", f"{node.input[1]}.scale"
        g.initializer.extend([numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname)])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], qname, sname], list(node.output),
                                      name=f"{node.name}.int8", domain="com.microsoft", K=w.shape[0],
                                      N=w.shape[1], bits=8, block_size=BLOCK, accuracy_level=ACCURACY_INT8))
        converted += 1
    del g.node[:]
    g.node.extend(nodes)
    used = {name for node in g.node for name in node.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return converted
