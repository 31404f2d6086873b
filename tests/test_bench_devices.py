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


def test_stt_reference_feeds_the_mimi_device(monkeypatch):
    """The reference loop moves each frame to the Mimi's device (a CUDA Mimi got CPU tensors)."""
    import contextlib

    import torch
    from moshi import models

    seen = []

    class Mimi(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))  # any device but the input's

        def streaming(self, n):
            return contextlib.nullcontext()

        def encode(self, x):
            seen.append(("mimi", x.device.type, tuple(x.shape)))
            return torch.zeros(1, 8, 1, dtype=torch.long, device=x.device)

    class Gen:
        def __init__(self, lm, **kw):
            self.lm_model = lm

        def streaming(self, n):
            return contextlib.nullcontext()

        def step(self, codes):
            seen.append(("lm", codes.device.type))

    class Lm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))

        @property
        def device(self):
            return self.w.device

    class Model:
        prefix_frames, delay_frames = 1, 1
        codec = type("C", (), {"_mimi": Mimi(), "_end_stream": lambda self: None})()
        lm = type("L", (), {"model": Lm(), "close": lambda self: None})()

    monkeypatch.setattr(models, "LMGen", Gen)
    ref = bench._SttReference(Model())
    ref(np.zeros(1920, np.float32))
    assert seen and all(s[1] == "meta" for s in seen)
    assert [s for s in seen if s[0] == "mimi"] == [("mimi", "meta", (1, 1, 1920))] * 3
