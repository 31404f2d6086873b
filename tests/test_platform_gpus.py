"""GPU facts without opening CUDA contexts, the LM dtype per GPU generation, and what
``--device gpu`` means, on a fake device table (monkeypatched torch.cuda)."""

import sys
import types

import pytest

from moshikit import platform
from moshikit.errors import UsageError
from moshikit.platform import GPU, PlatformInfo


def plat(**kw):
    base = dict(system="Linux", machine="x86_64", python="3.11", cpu="x", cores=2, ram_gb=24, apple_silicon=False)
    return PlatformInfo(**{**base, **kw})


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two GPUs: a T4 (7.5, no bf16) and an A100 (8.0). Opening a context fails the test."""
    import torch

    table = [("Tesla T4", 15 * 2**30, 7, 5), ("NVIDIA A100-SXM4-80GB", 80 * 2**30, 8, 0)]

    def props(i):
        name, total, major, minor = table[i]
        return types.SimpleNamespace(name=name, total_memory=total, major=major, minor=minor)

    def context(*a, **k):
        raise AssertionError("opened a CUDA context")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(table))
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", context)
    monkeypatch.setattr(torch.cuda, "init", context)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    platform.detect.cache_clear()
    yield table
    platform.detect.cache_clear()


def test_detect_reads_properties_without_a_context(fake_gpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: free memory unknown
    info = platform.detect()
    assert [(g.index, g.name, round(g.total_gb, 1), g.free_gb, g.capability) for g in info.cuda] == [
        (0, "Tesla T4", 16.1, None, "7.5"), (1, "NVIDIA A100-SXM4-80GB", 85.9, None, "8.0")]


def test_detect_takes_free_memory_from_nvml(fake_gpus, monkeypatch):
    calls = []
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(free=(h + 1) * 10**9))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert [g.free_gb for g in platform.detect().cuda] == [1.0, 2.0]
    assert calls == ["init", "shutdown"]
    platform.detect.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # NVML's numbering would not match torch's
    assert [g.free_gb for g in platform.detect().cuda] == [None, None]


def test_auto_dtype_follows_the_gpu_generation(fake_gpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert platform.auto_dtype("cuda") == "fp16"  # GPU 0, the T4: no bf16
    assert platform.auto_dtype("cuda:0") == "fp16"
    assert platform.auto_dtype("cuda:1") == "bf16"
    assert platform.auto_dtype("cpu") == "fp32" and platform.auto_dtype(None) == "fp32"
    assert platform.auto_dtype("mps") == "fp32"
    h100 = plat(cuda=[GPU(0, "H100", 80.0, capability="9.0")])
    assert platform.auto_dtype("cuda", h100) == "bf16"


def test_the_torch_lm_takes_auto_dtype(fake_gpus, monkeypatch):
    import torch

    from moshikit.backends import torch_lm

    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert torch_lm._torch_dtype(torch, "auto", "cuda:0") == torch.float16
    assert torch_lm._torch_dtype(torch, None, "cuda:1") == torch.bfloat16
    assert torch_lm._torch_dtype(torch, "fp32", "cuda:1") == torch.float32
    assert torch_lm._torch_dtype(torch, None, "cpu") == torch.float32


def test_device_gpu_maps_to_a_real_device(monkeypatch):
    cuda = plat(cuda=[GPU(0, "L4", 24.0, capability="8.9")])
    assert platform.real_device("torch", "gpu", cuda) == "cuda"
    assert platform.real_device("torch", "gpu", plat(mps=True)) == "mps"
    assert platform.real_device("mlx", "gpu", plat()) == "gpu"  # MLX's own name for Metal
    assert platform.real_device("torch", "cpu", plat()) == "cpu"
    with pytest.raises(UsageError, match="--device gpu: no GPU") as e:
        platform.real_device("torch", "gpu", plat())
    assert "\n" not in str(e.value) and "--device cpu" in e.value.hint
    monkeypatch.setattr(platform, "detect", lambda gpus=True: cuda)
    assert platform.resolve("lm", "torch", "gpu").device == "cuda"
    assert platform.resolve("codec", "torch", "gpu").device == "cuda"


def test_device_gpu_on_a_cpu_machine_is_one_line(capsys, monkeypatch, tmp_path, write_wav):
    import numpy as np

    from moshikit.cli.app import main

    monkeypatch.setattr(platform, "detect", lambda gpus=True: plat())
    wav = write_wav(tmp_path / "x.wav", np.zeros(2400, np.float32))
    code = main(["transcribe", "-m", str(tmp_path), "--device", "gpu", "-b", "torch", str(wav)])
    err = capsys.readouterr().err
    assert code == 2 and "--device gpu: no GPU" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["chat", "serve", "transcribe"])
def test_dtype_option_reaches_the_loader(command, monkeypatch, tmp_path, capsys, write_wav):
    import numpy as np

    from moshikit import serve, stt
    from moshikit.cli.app import main
    from moshikit.errors import ModelError

    seen = {}

    def loader(*a, **kw):
        seen.update(kw)
        raise ModelError("stop here")

    monkeypatch.setattr(serve, "load_conversation", loader)
    monkeypatch.setattr(stt, "load_stt", loader)
    wav = write_wav(tmp_path / "x.wav", np.zeros(2400, np.float32))
    argv = {"chat": ["chat", "-m", "synthetic", "-i", str(wav), "-o", str(tmp_path / "y.wav")],
            "serve": ["serve", "-m", "synthetic"],
            "transcribe": ["transcribe", "-m", "synthetic", str(wav)]}[command]
    assert main(argv + ["--dtype", "fp16"]) != 0
    assert seen.get("dtype") == "fp16", capsys.readouterr().err
    seen.clear()
    main(argv)
    # every command reached the stubbed loader (chat's goes through serve.load_conversation too)
    assert seen.get("dtype") == "auto"
