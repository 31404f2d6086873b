import pytest

from moshikit import platform
from moshikit.errors import BackendError
from moshikit.platform import GPU, PlatformInfo


def plat(**kw):
    base = dict(system="Linux", machine="x86_64", python="3.11", cpu="x", cores=2, ram_gb=24, apple_silicon=False)
    return PlatformInfo(**{**base, **kw})


def test_cpu_default_is_onnx_on_x86_else_torch(monkeypatch):
    monkeypatch.setattr(platform.registry, "probe", lambda kind, name: (True, "v"))
    c = platform.default_codec(plat())
    assert (c.backend, c.device) == ("onnx", "cpu") and "ONNX Runtime" in c.reason
    assert platform.default_codec(plat(machine="aarch64")).backend == "torch"  # not measured there
    monkeypatch.setattr(platform.registry, "probe", lambda kind, name: (name != "onnx", "v"))
    assert platform.default_codec(plat()).backend == "torch"  # onnxruntime missing


def test_codec_beside_lm(monkeypatch):
    monkeypatch.setattr(platform, "default_codec", lambda plat=None: platform.Choice("onnx", "cpu", "test"))
    assert platform.codec_beside_lm("torch", "cuda") == "torch"
    assert platform.codec_beside_lm("torch", "cpu") == "onnx"
    assert platform.codec_beside_lm("mlx", "gpu") == "onnx"


def test_cuda_default():
    c = platform.default_codec(plat(cuda=[GPU(0, "NVIDIA H100", 80.0)]))
    assert (c.backend, c.device) == ("torch", "cuda") and "H100" in c.reason
    assert platform.default_lm(plat(cuda=[GPU(0, "L4", 24.0)])).device == "cuda"


def test_apple_silicon_prefers_mlx(monkeypatch):
    monkeypatch.setattr(platform.registry, "probe", lambda kind, name: (name in ("mlx", "rustymimi"), "v"))
    assert platform.default_codec(plat(system="Darwin", machine="arm64", apple_silicon=True)).backend == "mlx"
    monkeypatch.setattr(platform.registry, "probe", lambda kind, name: (name == "rustymimi", "v"))
    assert platform.default_codec(plat(system="Darwin", machine="arm64", apple_silicon=True)).backend == "rustymimi"


def test_explicit_backend_and_unknown():
    assert platform.resolve("codec", "rustymimi", None).backend == "rustymimi"
    with pytest.raises(BackendError, match="unknown codec backend 'nope'"):
        platform.resolve("codec", "nope", None)
