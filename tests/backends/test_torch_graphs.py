"""Streaming Mimi under moshi's CUDA-graph rules (every call after the captured one has its
shape), enforced on a CPU: long files encode and decode, with the codes and audio of an
ungraphed run."""

import numpy as np
import pytest

from moshikit import codec as ops
from moshikit import filejobs
from moshikit.backends.torch_codec import MAX_STEP_FRAMES, StepShapes, cuda_graphed
from moshikit.testing import cuda_graph_rules
from moshikit.tokens import read_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = 2 * MAX_STEP_FRAMES + 40  # 23.2 s: two whole chunks and a short one (the crash of issue 16)


@pytest.fixture(params=[pytest.param(10, id="10-frame-chunks"),
                        pytest.param(MAX_STEP_FRAMES, id="real-chunks", marks=pytest.mark.slow)])
def chunk_frames(request, monkeypatch, speech):
    """The commands' chunk size (slow: 23 s of audio), or the same code with 10-frame chunks
    (a 2.7 s file is then "long": two whole chunks and a short one)."""
    from moshikit.backends import torch_codec as tc

    n = request.param
    monkeypatch.setattr(ops, "CHUNK_FRAMES", n)
    monkeypatch.setattr(tc, "MAX_STEP_FRAMES", n)
    frames = 2 * n + 7 if n != MAX_STEP_FRAMES else FRAMES
    return n, frames, np.resize(speech, frames * 1920 - 700).astype(np.float32)


def _encode(tmp_path, codec, pcm, name):
    from conftest import _write_wav

    src = _write_wav(tmp_path / f"{name}.wav", pcm)
    jobs, _ = filejobs.plan([str(src)], str(tmp_path / name), ".mimi")
    (res,) = list(ops.encode_files(jobs, codec))
    assert res.status == "done", res.error
    return res.output


@pytest.fixture(autouse=True)
def fresh_streams(torch_codec):
    """The session's codec starts and leaves each test with no stream open: a stream of the
    same batch size is kept across ``reset_stream`` (its graphs too), so one built under the
    stand-in would otherwise outlive the test that enforced it."""
    torch_codec.backend._end_stream()
    yield
    torch_codec.backend._end_stream()


def test_the_harness_raises_what_cuda_raises(torch_codec, monkeypatch):
    cuda_graph_rules.enforce(monkeypatch)
    codec = torch_codec.backend
    codec.reset_stream(1)
    mimi = codec._mimi
    import torch

    with torch.inference_mode():
        for frames in (3, 3, 3):
            mimi.encode(torch.zeros(1, 1, frames * 1920))
        with pytest.raises(ValueError, match="had shape"):
            mimi.encode(torch.zeros(1, 1, 2 * 1920))
    assert cuda_graphed(mimi)


def test_long_file_encode_and_decode_keep_graph_shapes(tmp_path, torch_codec, chunk_frames, monkeypatch):
    _, frames, long_clip = chunk_frames
    # Ungraphed first: today's codes and audio.
    plain_tokens = _encode(tmp_path, torch_codec, long_clip, "plain")
    plain = read_tokens(plain_tokens).codes
    (res,) = list(ops.decode_files([filejobs.Job(str(plain_tokens), tmp_path / "plain-decoded.wav")],
                                   lambda k: torch_codec))
    assert res.status == "done", res.error
    import soundfile as sf

    plain_audio, _ = sf.read(tmp_path / "plain-decoded.wav", dtype="float32")

    # Now moshi's Mimi streams are built by the strict wrapper (it replaces CUDAGraphed when
    # a stream starts), as on CUDA: a fresh stream, not the plain run's kept one.
    torch_codec.backend._end_stream()
    graphed = cuda_graph_rules.enforce(monkeypatch)
    graphed_tokens = _encode(tmp_path, torch_codec, long_clip, "graphed")
    assert graphed.instances and all(not g.disable for g in graphed.instances)
    enc = [g for g in graphed.instances if g.calls > 2]
    assert enc, "the encoder ran more than two calls through the wrapper"
    codes = read_tokens(graphed_tokens).codes
    assert codes.shape == plain.shape == (1, 8, frames)
    np.testing.assert_array_equal(codes, plain)

    (res,) = list(ops.decode_files([filejobs.Job(str(graphed_tokens), tmp_path / "graphed-decoded.wav")],
                                   lambda k: torch_codec, ops.DecodeOptions(overwrite=True)))
    assert res.status == "done", res.error
    audio, _ = sf.read(tmp_path / "graphed-decoded.wav", dtype="float32")
    assert audio.shape == plain_audio.shape == (long_clip.size,)
    # The graphed run decodes in other chunk shapes than the plain one, so its float sums round
    # in another order (how much is the CPU's kernel choice: AVX-512 here, AVX2 there). Both land
    # in a 16-bit PCM wav: a sample straddling a rounding boundary may move by one step (an AMD
    # EPYC moved 3 of 51,140), never more; almost every sample stays equal.
    step = 1 / 32768
    np.testing.assert_allclose(audio, plain_audio, rtol=0, atol=step * 1.001)
    assert np.mean(audio == plain_audio) > 0.99


def test_own_state_encoder_keeps_graph_shapes(torch_codec, chunk_frames, monkeypatch):
    n, frames, long_clip = chunk_frames
    pcm = np.pad(long_clip, (0, (-long_clip.size) % 1920))[None]
    plain = torch_codec.backend.open_encoder().encode(pcm)
    cuda_graph_rules.enforce(monkeypatch)
    enc = torch_codec.backend.open_encoder()
    chunk = n * 1920
    parts = [enc.encode(pcm[:, i : i + chunk]) for i in range(0, pcm.shape[-1], chunk)]
    codes = np.concatenate(parts, -1)
    assert codes.shape == (1, 8, frames)
    np.testing.assert_array_equal(codes, plain)
    with pytest.raises(RuntimeError, match="reset_stream"):
        enc.encode(pcm[:, :1920])  # the padded last call ended this stream


def test_step_plans():
    plain = StepShapes(False)
    assert plain.plan(290) == [(0, 125, 0), (125, 250, 0), (250, 290, 0)]
    assert plain.plan(1) == [(0, 1, 0)]
    live = StepShapes(True)  # chat: one frame a call, forever
    assert [live.plan(1) for _ in range(3)] == [[(0, 1, 0)]] * 3
    assert live.plan(3) == [(0, 1, 0), (1, 2, 0), (2, 3, 0)]
    files = StepShapes(True)
    assert files.plan(125) == [(0, 125, 0)]
    assert files.plan(165) == [(0, 125, 0), (125, 165, 85)]
    with pytest.raises(RuntimeError):
        files.plan(125)
    assert files.plan(0) == []


def test_reset_keeps_captured_graphs(torch_codec, speech, monkeypatch):
    """A new session on the same batch size (chat after its warm-up, each serve session)
    resets the stream in place and replays the graphs captured before, as moshi's server
    does; its codes and audio are those of a fresh stream. A session that calls at another
    size captures that size (the encoder here), and a new batch size starts new graphs."""
    import torch

    graphs = cuda_graph_rules.enforce(monkeypatch)
    codec = torch_codec.backend
    frames = np.resize(speech, 6 * 1920).astype(np.float32).reshape(6, 1, 1920)

    def session():
        codes = [codec.encode_step(f) for f in frames]
        return np.concatenate(codes, -1), np.concatenate([codec.decode_step(c) for c in codes], -1)

    codec.reset_stream(1)
    first = session()
    state = codec._mimi.get_streaming_state()[""]
    captures = {name: getattr(state, name).captures for name in ("graphed_encoder", "graphed_decoder")}
    assert captures == {"graphed_encoder": 1, "graphed_decoder": 1}
    codec.reset_stream(1)
    second = session()
    assert codec._mimi.get_streaming_state()[""] is state
    assert {name: getattr(state, name).captures for name in captures} == captures  # nothing captured again
    np.testing.assert_array_equal(second[0], first[0])
    np.testing.assert_array_equal(second[1], first[1])

    codec.reset_stream(1)
    two = codec.encode_step(frames[:2].reshape(1, -1))  # another size: the encoder captures it
    assert state.graphed_encoder.captures == 2 and state.graphed_decoder.captures == 1
    np.testing.assert_array_equal(two, first[0][..., :2])
    codec.reset_stream(2)
    assert codec._mimi.get_streaming_state()[""] is not state
    with torch.inference_mode():
        assert all(g.captures <= 2 for g in graphs.instances)
