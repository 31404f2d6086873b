"""The functional streaming wiring of Mimi (no ONNX Runtime): same numbers as moshi's modules."""

import numpy as np
import pytest

import moshi  # noqa: F401  (a core dependency: a broken install fails, never skips)


@pytest.fixture(scope="module")
def mimi(mimi_weights):
    from moshi.models import loaders

    return loaders.get_mimi(str(mimi_weights), device="cpu")


def _run(module, x, chunks, batch=1):
    """``x`` through ``module`` in calls of ``chunks`` frames (the last repeats), state carried."""
    import torch

    from moshikit.backends.mimi_graph import StreamState

    per = x.shape[-1] // (x.shape[-1] // 1920) if module.__class__.__name__ == "StreamEncoder" else 1
    frames = x.shape[-1] // per
    state = StreamState(module.specs, batch, steps_per_frame=2)
    outs, f, i = [], 0, 0
    with torch.inference_mode():
        while f < frames:
            n = min(chunks[min(i, len(chunks) - 1)], frames - f)
            feeds = state.feeds()
            y, *new = module(torch.from_numpy(np.ascontiguousarray(x[..., f * per : (f + n) * per])),
                             torch.from_numpy(feeds["offset"]), *(torch.from_numpy(a) for a in state.arrays))
            state.advance([t.numpy() for t in new], n)
            outs.append(y.numpy())
            f, i = f + n, i + 1
    return np.concatenate(outs, -1)


@pytest.mark.parametrize("chunks", [[1], [3, 25, 7], [150]])
def test_encoder_matches_moshi_whole_file(mimi, speech, chunks):
    """12 s, past the 10 s attention window: any chunking gives moshi's whole-file codes."""
    import torch

    from moshikit.backends.mimi_graph import stream_encoder

    x = np.resize(speech, 1920 * 150)[None, None].astype(np.float32)
    with torch.inference_mode():
        want = mimi.encode(torch.from_numpy(x)).numpy()
    got = _run(stream_encoder(mimi), x, chunks)
    assert got.shape == want.shape == (1, 8, 150) and got.dtype == np.int64
    # A few frames of 150 may differ: a float near-tie on a codebook (this synthetic
    # checkpoint is tie-prone) changes that frame's residual, so its later codebooks too.
    # Measured 0-3 frames, with plain convolutions as with products, by thread count and
    # chunking; the reference's own 1- and 2-thread runs differ by as much.
    assert (got != want).any(1).sum() <= 4


def test_decoder_matches_moshi_whole_file(mimi, speech):
    import torch

    from moshikit.backends.mimi_graph import stream_decoder

    x = np.resize(speech, 1920 * 150)[None, None].astype(np.float32)
    with torch.inference_mode():
        codes = mimi.encode(torch.from_numpy(x))
        want = mimi.decode(codes).numpy()
    dec = stream_decoder(mimi)
    for chunks in ([1], [4, 25, 9]):
        got = _run(dec, codes.numpy(), chunks)
        assert got.shape == want.shape
        snr = 10 * np.log10((want**2).sum() / ((got - want) ** 2).sum())
        assert snr > 100, f"{chunks}: {snr:.1f} dB"  # float rounding only (measured ~137 dB)


def test_ring_state_holds_the_last_context_steps():
    """StreamState writes each call's new steps at position mod ring length, per row."""
    from moshikit.backends.mimi_graph import StateSpec, StreamState

    st = StreamState([StateSpec("k", (1, 4), ring_axis=1), StateSpec("conv", (1, 2))], batch=2, steps_per_frame=1)
    st.reset(np.array([False, False]))
    st.advance([np.arange(6, dtype=np.float32).reshape(1, 1, 6).repeat(2, 0) + 1, np.ones((2, 1, 2), np.float32)], 6)
    # positions 0..5 in a ring of 4: slots hold 5, 6, 3, 4 (values = position + 1)
    np.testing.assert_array_equal(st.arrays[0][0, 0], [5, 6, 3, 4])
    assert st.offset.tolist() == [6, 6]
    st.reset(np.array([True, False]))
    assert st.offset.tolist() == [0, 6] and not st.arrays[0][0].any() and st.arrays[0][1].any()
    assert not st.arrays[1][0].any() and st.arrays[1][1].all()


@pytest.mark.parametrize("cin,cout,kernel,stride,dilation,t", [
    (64, 128, 16, 8, 1, 24),   # Mimi's last downsampling: one frame gives 2 steps
    (32, 48, 3, 1, 2, 40),     # dilated
    (16, 24, 7, 1, 1, 7),      # exactly one output step
    (8, 8, 4, 2, 1, 103),      # kernel = 2 x stride, but a length that leaves a remainder
    (8, 8, 12, 6, 1, 36),      # kernel = 2 x stride on whole strides: windows as folded rows
])
def test_convolution_as_a_product_equals_conv1d(cin, cout, kernel, stride, dilation, t, monkeypatch):
    import torch
    import torch.nn.functional as F

    from moshikit.backends import mimi_graph

    monkeypatch.setattr(mimi_graph.layers, "MATMUL_CONV_WEIGHTS", 1)  # every convolution as a product
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g) for s in ((2, cin, t), (cout, cin, kernel), (cout,)))
    want = F.conv1d(x, w, b, stride, 0, dilation)
    got = mimi_graph.conv1d(x, w, b, stride, dilation, 1)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # a wrong window is off by O(1)
    torch.testing.assert_close(mimi_graph.conv1d(x, w, None, stride, dilation, 1), want - b[:, None], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_elu_passes_equal_torch_elu(alpha):
    import torch

    from moshikit.backends.mimi_graph import elu

    x = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor([0.0, -1e-7, 1e-7, -1e-3, 80.0])])
    torch.testing.assert_close(elu(x, alpha), torch.nn.functional.elu(x, alpha), rtol=1e-6, atol=1e-7)
