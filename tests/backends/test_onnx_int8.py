"""Int8 weights for the onnx codec's live decoder: the block format and the rewritten graph."""

import numpy as np
import pytest
from deps import needs_onnx


pytestmark = needs_onnx


def test_blocks_round_trip_within_half_a_step():
    from moshikit.backends.onnx_int8 import BLOCK, dequantize_blocks, quantize_blocks

    w = np.random.default_rng(0).standard_normal((4 * BLOCK, 6)).astype(np.float32)
    w[:BLOCK, 0] = 0.0  # an all-zero block keeps a usable scale
    q, scale = quantize_blocks(w)
    assert q.dtype == np.uint8 and q.shape == (6, 4, BLOCK) and scale.shape == (24,)
    back = dequantize_blocks(q, scale)
    step = np.repeat(scale.reshape(6, 4), BLOCK, 1).T  # the scale of each weight's block
    assert np.all(np.abs(back - w) <= step / 2 + 1e-7)
    assert np.all(back[:BLOCK, 0] == 0.0)
    assert q.min() >= 1 and q.max() <= 255  # symmetric: -127..127 around 128


def test_graph_rewrite_converts_large_products_only(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from moshikit.backends import onnx_int8

    rng = np.random.default_rng(1)
    big = rng.standard_normal((512, 512)).astype(np.float32) / 20  # 2^18 weights: converted
    small = rng.standard_normal((512, 64)).astype(np.float32)  # too few weights: stays fp32
    nodes = [helper.make_node("MatMul", ["x", "big"], ["h"]), helper.make_node("MatMul", ["h", "small"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small")])
    src, dst = tmp_path / "g.onnx", tmp_path / "g_int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert onnx_int8.write_int8(src, dst) == 1
    model = onnx.load(str(dst))
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits", "MatMul"]
    assert "big" not in {t.name for t in model.graph.initializer}  # the fp32 copy is gone
    x = rng.standard_normal((2, 512)).astype(np.float32)
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = x @ big @ small
    snr = 10 * np.log10((want**2).sum() / ((got - want) ** 2).sum())
    assert 30 < snr < 80, snr  # int8 products: close, and not the fp32 graph by mistake
