"""The onnx codec backend against moshi's MimiModel called directly (the reference).

Tolerances (stated in docs/benchmarks.md): codes equal on the first codebook and on
at least 99% of all codes (only float near-ties in deep residual codebooks may flip);
decoded audio within 60 dB SNR of the reference's.
"""

import numpy as np
import pytest

from moshikit.backends import registry

pytestmark = pytest.mark.skipif(not registry.probe("codec", "onnx")[0], reason="onnxruntime not installed")


@pytest.fixture(scope="module")
def onnx_codec(mimi_weights):
    from moshikit.codec import load_codec

    return load_codec("onnx", mimi_weight=mimi_weights).backend


@pytest.fixture(scope="module")
def reference(onnx_codec):
    """moshi's own MimiModel (the one the backend wraps), called as moshi's README shows."""
    return onnx_codec._mimi


def _snr(got, want) -> float:
    return float(10 * np.log10((want**2).sum() / ((got - want) ** 2).sum()))


def test_encode_matches_reference(onnx_codec, reference, speech):
    import torch

    clip = speech[None, : 24000 * 6 + 777]  # not a whole number of frames
    got = onnx_codec.encode(np.stack([clip[0], clip[0][::-1].copy()]))
    with torch.no_grad():
        want = reference.encode(torch.from_numpy(np.stack([clip[0], clip[0][::-1].copy()]))[:, None]).numpy()
    assert got.shape == want.shape == (2, 8, 76) and got.dtype == np.int64
    np.testing.assert_array_equal(got[:, 0], want[:, 0])
    assert (got == want).mean() >= 0.99


def test_decode_matches_reference(onnx_codec, reference, speech):
    import torch

    codes = onnx_codec.encode(speech[None, : 24000 * 4])
    got = onnx_codec.decode(codes)
    with torch.no_grad():
        want = reference.decode(torch.from_numpy(codes))[:, 0].numpy()
    assert got.shape == want.shape == (1, 50 * 1920) and got.dtype == np.float32
    assert _snr(got, want) > 60


def test_empty_and_cached_graphs(onnx_codec, mimi_weights, speech):
    from moshikit.backends import onnx_codec as mod

    assert onnx_codec.encode(np.zeros((1, 0), np.float32)).shape == (1, 8, 0)
    assert onnx_codec.info.backend == "onnx" and onnx_codec.info.device == "cpu"
    graphs = sorted(p.name for p in mod.cache_root().rglob("*.onnx"))
    assert graphs == ["decoder_transformer.onnx", "encoder_transformer.onnx", "seanet_decoder.onnx",
                      "seanet_encoder.onnx"]
    again = mod.load(mimi_weights)  # reads the cached graphs, exports nothing new
    assert sorted(p.name for p in mod.cache_root().rglob("*.onnx")) == graphs
    clip = speech[None, : 1920 * 10]
    np.testing.assert_array_equal(again.encode(clip), onnx_codec.encode(clip))


def test_cpu_only(mimi_weights):
    from moshikit.backends import onnx_codec as mod
    from moshikit.errors import BackendError

    with pytest.raises(BackendError, match="cpu only"):
        mod.load(mimi_weights, device="cuda")
