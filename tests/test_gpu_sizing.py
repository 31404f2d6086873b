"""Sizes and precisions on CUDA chosen from the machine, not blind (issue 27 item 5), checked
on a CPU with torch.cuda's memory query stubbed: the variant pick reads free memory, batches
fit the free memory, and a precision a model cannot run is refused."""

import pytest

from moshikit import catalog, platform
from moshikit.errors import UsageError
from moshikit.platform import GPU, PlatformInfo


def _cuda(total: float, free: float | None) -> PlatformInfo:
    return PlatformInfo("Linux", "x86_64", "3.12", "x86", 16, 64.0, False, [GPU(0, "RTX 4090", total, free, "8.9")])


def test_variant_pick_reads_free_memory():
    """A 24 GB card with 18 GB free (a display, another job) gets q8, not bf16 (24 GB wanted)."""
    busy = catalog.choose("moshika", _cuda(24.0, 18.0))
    assert busy.entry.variant == "pytorch-q8"
    assert any("18 GB" in r for r in busy.reasons), busy.reasons
    idle = catalog.choose("moshika", _cuda(24.0, 23.9))
    assert idle.entry.variant == "pytorch-q8"  # 23.9 GB free is under the 24 the bf16 model wants
    unknown = catalog.choose("moshika", _cuda(24.0, None))  # no NVML: the total, and it says so
    assert unknown.entry.variant == "pytorch-bf16"
    assert "free memory unknown" in catalog.accelerator(_cuda(24.0, None))[2]


def _mem(monkeypatch, free_gb: float, total_gb: float = 80.0):
    import torch

    seen = []

    def mem_get_info(device=None):
        seen.append(str(device))
        return int(free_gb * 1e9), int(total_gb * 1e9)

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return seen


def test_fit_batch_follows_free_memory(monkeypatch):
    seen = _mem(monkeypatch, 2.0)
    n, why = platform.fit_batch("cuda:1", 16, 200_000_000)
    assert n == 8 and seen == ["cuda:1"]  # 80% of 2 GB at 0.2 GB a stream
    assert "not 16" in why and "2.0 GB free of 80.0 GB" in why
    _mem(monkeypatch, 70.0)
    assert platform.fit_batch("cuda", 16, 200_000_000)[0] == 16
    _mem(monkeypatch, 0.01)
    assert platform.fit_batch("cuda", 16, 200_000_000)[0] == 1  # always at least one
    assert platform.fit_batch("cpu", 4, 200_000_000) == (4, "4 streams at once (the default on cpu)")


class _Info:
    device = "cuda"


def test_transcribe_and_speak_batches_fit_free_memory(monkeypatch):
    from moshikit import stt
    from moshikit.tts.files import default_batch

    _mem(monkeypatch, 1.0)

    class LM:
        info = _Info()

        def stream_bytes(self):
            return 100_000_000

    class Model:
        lm = LM()

    n, why = stt.default_batch(Model())
    assert n == 8 and "not 16" in why

    class Tts:
        def describe(self):
            return {"device": "cuda:0"}

        def stream_bytes(self):
            return 50_000_000

    n, why = default_batch(Tts())
    assert n == 16 and "texts" in why and "not 32" in why
    _Info.device = "cpu"
    assert stt.default_batch(Model())[0] == 4


def test_stream_bytes_counts_the_kv_caches():
    """The estimate behind the batch sizes: keys and values of every attention's context, at
    the model's dtype, doubled for activations (the Moshi 7B architecture: ~0.8 GB a stream
    in bf16: 32 layers x 2 x 3000 steps x 4096 x 2 bytes = 1.57 GB of main-transformer cache
    per stream would be wrong by 2x; see the arithmetic below)."""
    import torch
    from moshi.modules.transformer import StreamingMultiheadAttention

    from moshikit.backends.torch_lm import stream_state_bytes

    class Model(torch.nn.Module):
        dtype = torch.bfloat16

        def __init__(self):
            super().__init__()
            self.attn = torch.nn.ModuleList([
                StreamingMultiheadAttention(64, 4, causal=True, context=100, device="meta")
                for _ in range(3)])

    # 3 layers x (keys + values) x 100 steps x 64 dims x 2 bytes, doubled
    assert stream_state_bytes(Model()) == 2 * 3 * 2 * 100 * 64 * 2


def test_speak_int8_is_refused_not_ignored():
    from moshikit.tts.model import load_torch_tts

    with pytest.raises(UsageError, match="--dtype int8: Kyutai TTS on PyTorch runs in bf16, fp16 or fp32"):
        load_torch_tts("synthetic", device="cpu", dtype="int8")


def test_files_on_the_cpu_engine_run_32_at_once_as_ram_allows(monkeypatch):
    """transcribe on the CPU engine: 32 files at once (its step reads the weights once for all),
    fewer where half the available RAM would not hold their KV caches; a live server keeps 4."""
    from dataclasses import dataclass

    from moshikit import platform, stt

    @dataclass
    class Info:
        device: str = "cpu"
        backend: str = "cpu"

    class LM:
        info = Info()

        def stream_bytes(self):
            return 100_000_000

    class Model:
        lm = LM()

    monkeypatch.setattr(platform, "available_ram", lambda: 10_000_000_000)  # 10 GB: 50 streams fit
    assert stt.default_batch(Model(), files=True)[0] == stt.ENGINE_BATCH == 32
    monkeypatch.setattr(platform, "available_ram", lambda: 2_000_000_000)  # half of 2 GB: 10 streams
    n, why = stt.default_batch(Model(), files=True)
    assert n == 10 and "not 32" in why
    assert stt.default_batch(Model())[0] == stt.CPU_BATCH  # serve's live slots
    LM.info = Info(backend="torch")
    assert stt.default_batch(Model(), files=True)[0] == stt.CPU_BATCH


def test_the_engine_states_what_a_stream_can_hold(mimi_weights, tmp_path):
    from moshikit.backends import cpu_engine
    from moshikit.synthetic.stt import write_stt_repo

    import numpy as np

    lm = cpu_engine.load(write_stt_repo(tmp_path / "stt", kind="random", mimi_path=mimi_weights))
    lm.reset(1)
    codes = np.zeros((1, lm.input_codebooks), np.int64)
    for _ in range(lm.info.context + 5):  # past the context: the cache has grown to its most
        lm.step(codes)
    held = sum(kv.numel() * kv.element_size() for kv in lm.engine.kv)
    assert lm.stream_bytes() == held > 0


def test_speak_on_the_cpu_engine_runs_16_texts_at_once_as_ram_allows(monkeypatch):
    """speak DIR on the CPU engine: 16 texts at once (a frame's per-operation work is shared by the
    batch), fewer where half the available RAM would not hold them; torch on a CPU keeps 4."""
    from moshikit import platform
    from moshikit.tts.files import ENGINE_BATCH, default_batch

    class Tts:
        backend = "cpu"

        def describe(self):
            return {"device": "cpu"}

        def stream_bytes(self):
            return 100_000_000

    monkeypatch.setattr(platform, "available_ram", lambda: 10_000_000_000)  # 10 GB: 50 texts fit
    n, why = default_batch(Tts())
    assert n == ENGINE_BATCH == 16 and "texts" in why
    monkeypatch.setattr(platform, "available_ram", lambda: 1_000_000_000)  # half of 1 GB: 5 texts
    n, why = default_batch(Tts())
    assert n == 5 and "not 16" in why
    Tts.backend = "torch"
    assert default_batch(Tts())[0] == 4
