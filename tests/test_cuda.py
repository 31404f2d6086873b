"""The CUDA path, run where a CUDA GPU is (skipped elsewhere by the ``cuda`` marker's hook in
conftest.py). ``python -m moshikit.testing.gpu_proof --device cuda`` runs these and the
benchmarks in one call. What they prove on a CPU they prove with moshi's CUDA-graph rules
enforced (tests/backends/test_torch_graphs.py); here the graphs are real."""

from __future__ import annotations

import os

import numpy as np
import pytest

from moshikit import codec as ops
from moshikit import filejobs
from moshikit.tokens import read_tokens

pytestmark = pytest.mark.cuda

#: "cuda" (or "cuda:N"); the GPU proof's dry run sets "cpu" to run this code on a CPU.
DEVICE = os.environ.get("MOSHIKIT_TEST_CUDA_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")

LONG_FRAMES = 2 * ops.CHUNK_FRAMES + 40  # 23.2 s: two streaming chunks and a short one


@pytest.fixture(scope="module")
def cuda_codec(mimi_weights):
    return ops.load_codec("torch", DEVICE, mimi_weight=mimi_weights)


def _encode(tmp_path, codec, pcm, name):
    from conftest import _write_wav

    src = _write_wav(tmp_path / f"{name}.wav", pcm)
    jobs, _ = filejobs.plan([str(src)], str(tmp_path / name), ".mimi")
    (res,) = list(ops.encode_files(jobs, codec))
    assert res.status == "done", res.error
    return res.output


def test_long_file_encode_decode_with_cuda_graphs(tmp_path, cuda_codec, torch_codec, speech):
    import soundfile as sf

    from moshikit.backends.torch_codec import cuda_graphed

    clip = np.resize(speech, LONG_FRAMES * 1920 - 700).astype(np.float32)
    tokens = _encode(tmp_path, cuda_codec, clip, "gpu")
    codes = read_tokens(tokens).codes
    assert codes.shape == (1, 8, LONG_FRAMES)
    cuda_codec.backend.reset_stream(1)
    assert cuda_graphed(cuda_codec.backend._mimi) == ON_CUDA, "moshi graphs CUDA streams (only)"
    cpu = read_tokens(_encode(tmp_path, torch_codec, clip, "cpu")).codes
    assert (codes[0, 0] == cpu[0, 0]).mean() > 0.9  # other kernels flip near-ties, not whole frames
    (res,) = list(ops.decode_files([filejobs.Job(str(tokens), tmp_path / "gpu-decoded.wav")], lambda k: cuda_codec))
    assert res.status == "done", res.error
    audio, rate = sf.read(tmp_path / "gpu-decoded.wav", dtype="float32")
    assert rate == 24000 and audio.shape == (clip.size,) and np.isfinite(audio).all() and np.abs(audio).max() > 0.01


def test_q8_steps_on_cuda(tmp_path):
    pytest.importorskip("bitsandbytes", reason="q8 is optional: bitsandbytes (61 MB) is not installed")
    import torch

    from moshikit.backends import torch_lm
    from moshikit.synthetic import lm as synthetic_lm, q8 as synthetic_q8

    src = synthetic_lm.write_moshi_repo(tmp_path / "f", seed=0)
    lm = torch_lm.load(synthetic_q8.write_q8_repo(src, tmp_path / "q8"), device=DEVICE)
    assert {p.dtype for n, p in lm.model.named_parameters() if n.endswith("_scb")} == {torch.float32}
    lm.reset(2)
    outs = [lm.step(np.full((2, 8), 7, np.int64)) for _ in range(6)]
    assert outs[-1] is not None and outs[-1].shape == (2, 9)


def test_bf16_lm_with_fp32_mimi_chats(speech):
    import torch

    from moshikit import platform
    from moshikit.conversation import run_offline
    from moshikit.serve import load_conversation

    conv = load_conversation("synthetic", device=DEVICE)
    want = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[platform.auto_dtype(DEVICE)]
    assert next(conv.lm.model.parameters()).dtype == want
    assert next(conv.codec._mimi.parameters()).dtype == torch.float32
    assert conv.lm.info.device.startswith(DEVICE) and conv.codec.info.device.startswith(DEVICE)
    assert conv.codec.info.backend == "torch" or not ON_CUDA
    audio, transcript = run_offline(conv, speech[: 24000 * 3])
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_serve_batch_on_cuda():
    from moshikit.serve import load_conversation

    conv = load_conversation("synthetic", backend="torch", device=DEVICE, batch=4)
    frames = [conv.step(np.zeros((4, 1920), np.float32)) for _ in range(5)]
    conv.reset_slots(np.array([True, False, False, False]))
    frames += [conv.step(np.zeros((4, 1920), np.float32)) for _ in range(3)]
    assert frames[-1].pcm.shape == (4, 1920)
    assert frames[5].tokens is not None and frames[5].tokens[0] == -1  # the restarted stream waits its delay


def test_transcribe_batching_on_cuda(speech, monkeypatch):
    """On CUDA a batch of files shares one batched Mimi stream (the fast path there), and
    batched kernels round differently from batch 1: a file's near-tie codes, and the words
    that follow them, may differ from its lone run (torch Mimi batched on a CPU: 59% of one
    stream's codes equal; word counts [14, 32, 24] alone against [9, 20, 18]), so word counts
    are not compared across batch sizes. What holds, and is tested: every file comes back
    once, with all its audio and ordered words inside it, at batch 1 and 3; and a file's words
    do not depend on its batch mates: the same audio in every slot of one batch gets the same
    words (one batch's rows run the same kernels in the same order)."""
    from moshikit import stt

    model = stt.load_stt("synthetic", device=DEVICE)
    if not ON_CUDA:  # the dry run takes CUDA's path: one batched codec stream, not a state per file
        monkeypatch.setattr(model.codec, "batch_gain", True)
    audio = [np.resize(np.roll(speech, 24000 * i), 24000 * 4).astype(np.float32) for i in range(3)]

    def run(batch, clips):
        streams = [stt.Stream(model, f"s{i}", [a]) for i, a in enumerate(clips)]
        done = {s.source: s.finish() for s in stt.run_streams(model, streams, batch)}
        assert sorted(done) == [f"s{i}" for i in range(len(clips))]
        for t in done.values():
            assert abs(t.duration - 4.0) < 1e-9
            assert all(0 <= w.start <= w.end <= t.duration for w in t.words)
            assert [w.start for w in t.words] == sorted(w.start for w in t.words)
        return [[w.text for w in done[f"s{i}"].words] for i in range(len(clips))]

    run(1, audio), run(3, audio)
    same = run(3, [audio[1]] * 3)
    assert same[0] == same[1] == same[2], same
    assert sum(len(w) for w in same) > 0, "the synthetic model says something"


def test_bench_rows_on_cuda(mimi_weights):
    from moshikit import bench

    plan = bench.CodecPlan(["torch", "rustymimi", "onnx"], str(mimi_weights), reference=True, seconds=[2.0],
                           repeats=1, stream_frames=5, device=DEVICE)
    rows = list(bench.bench_codec(plan))
    assert {r.name for r in rows} >= {"moshi MimiModel (reference)", "moshikit torch"}
    assert all(r.params.get("device", DEVICE).startswith(DEVICE) for r in rows if "rustymimi" not in r.name)
    # rustymimi and onnx run on the CPU only; elsewhere a backend is skipped only when it is not
    # installed (rustymimi on a lent machine: scripts/gpu-wheels.py leaves it out).
    from moshikit.backends import registry

    skipped = {n.split(":")[0].removeprefix("moshikit ") for n in plan.notes}
    absent = {n for n in ("rustymimi", "onnx") if not registry.probe("codec", n)[0]}
    assert skipped == ({"rustymimi", "onnx"} if ON_CUDA else absent), plan.notes
    lm_rows = list(bench.bench_lm(bench.LMPlan(["torch"], bench.synthetic_moshi_repo("tiny"), batch_sizes=[1, 4],
                                               steps=5, device=DEVICE)))
    assert {(r.name, r.params.get("batch")) for r in lm_rows if r.task.startswith("step")} >= {
        ("moshikit torch", 1), ("moshikit torch", 4), ("moshi LMGen (reference)", 1)}
