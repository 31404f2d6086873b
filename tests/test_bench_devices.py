"""bench on CUDA machines, checked on a CPU: subjects that cannot run on the asked device
are skipped with a note (the others still measure), any ``cuda*`` device string counts as
CUDA, and the STT reference feeds its Mimi on the Mimi's own device."""

import numpy as np
import pytest

from moshikit import bench
from moshikit import codec as ops


def test_cpu_only_backends_are_skipped_with_a_note_on_cuda(mimi_weights, monkeypatch):
    real = ops.load_codec

    def load(name, device, **kw):  # torch stands in for a GPU run; the others refuse "cuda" for real
        return real(name, "cpu" if name == "torch" else device, **kw)

    monkeypatch.setattr(ops, "load_codec", load)
    plan = bench.CodecPlan(["rustymimi", "onnx", "torch"], str(mimi_weights), reference=False, device="cuda")
    subjects = list(bench.codec_subjects(plan))
    assert [name for name, _ in subjects] == ["moshikit torch"]
    assert len(plan.notes) == 2
    assert plan.notes[0].startswith("moshikit rustymimi: skipped") and "cpu only" in plan.notes[0]
    assert plan.notes[1].startswith("moshikit onnx: skipped") and "cpu only" in plan.notes[1]


def test_nothing_to_measure_is_an_error(mimi_weights):
    from moshikit.errors import MoshikitError

    plan = bench.CodecPlan(["rustymimi"], str(mimi_weights), reference=False, device="cuda")
    with pytest.raises(MoshikitError, match="cpu only"):
        list(bench.codec_subjects(plan))


def test_notes_survive_json(tmp_path):
    r = bench.BenchResult(env={}, synthetic=True, notes=["moshikit onnx: skipped (cpu only)"])
    bench.save(r, str(tmp_path / "b.json"))
    assert bench.load(str(tmp_path / "b.json")).notes == r.notes


@pytest.mark.parametrize("device, want", [("cuda", True), ("cuda:0", True), ("cuda:3", True), ("cpu", False),
                                          ("mps", False), (None, False)])
def test_any_cuda_device_string_is_cuda(device, want):
    assert bench.is_cuda(device) is want


def test_stt_reference_feeds_the_mimi_device():
    """moshi's reference loop in bench stt moves each frame to the models' device, in the batch
    runs and the live row (a CUDA Mimi once got CPU tensors)."""
    import contextlib

    import torch

    from moshikit.bench.stt import MoshiLoop

    seen = []

    class Mimi:
        def streaming(self, n):
            return contextlib.nullcontext()

        def encode(self, x):
            seen.append(("mimi", x.device.type, tuple(x.shape)))
            return torch.zeros(x.shape[0], 8, 1, dtype=torch.long, device=x.device)

    class Gen:
        def streaming(self, n):
            return contextlib.nullcontext()

        def step(self, codes):
            seen.append(("lm", codes.device.type))

    loop = object.__new__(MoshiLoop)  # the loop without loading a model
    loop.torch, loop.device, loop.mimi, loop.gen = torch, torch.device("meta"), Mimi(), Gen()
    loop.delay_frames, loop.prefix_frames = 1, 1
    loop.transcribe([np.zeros(1920, np.float32)], batch=1)
    loop.live(np.zeros(4 * 1920, np.float32), frames=2, clock=lambda: 0.0, sleep=lambda s: None)
    assert seen and all(s[1] == "meta" for s in seen), seen
    assert [s for s in seen if s[0] == "mimi"][:3] == [("mimi", "meta", (1, 1, 1920))] * 3


def _platform_with(monkeypatch, cuda: bool):
    from moshikit import platform

    gpus = [platform.GPU(0, "Stand-in GPU", 80.0, 79.0, "9.0")] if cuda else []
    monkeypatch.setattr(platform, "detect", lambda gpus_=True, **kw: platform.PlatformInfo(
        "Linux", "x86_64", "3.12", "cpu", 2, 16.0, False, cuda=gpus, mps=False))


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda-machine", "no-gpu"])
def test_gpu_means_the_torch_gpu_for_every_torch_subject(monkeypatch, cuda):
    """``--device gpu`` reaches the torch reference rows (moshi's Mimi, LMGen, STT loop) and
    moshikit's torch backends through ``pick_device``: it names CUDA there (torch knows no
    "gpu" device: the reference rows once ended in a traceback), and is a one-line refusal
    where there is no GPU."""
    from moshikit.backends.torch_codec import pick_device
    from moshikit.errors import MoshikitError

    _platform_with(monkeypatch, cuda)
    if cuda:
        assert pick_device("gpu") == "cuda"
    else:
        with pytest.raises(MoshikitError, match="no GPU that PyTorch can use"):
            pick_device("gpu")
    assert pick_device("cpu") == "cpu" and pick_device("cuda:1") == "cuda:1"


def test_bench_codec_device_gpu_without_gpu_is_one_line(mimi_weights, capsys, monkeypatch):
    from moshikit.cli.app import main

    _platform_with(monkeypatch, False)
    rc = main(["bench", "codec", "--synthetic", "--device", "gpu", "--seconds", "0.5", "-n", "1",
               "--stream-frames", "0"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and "no GPU that PyTorch can use" in err, err
