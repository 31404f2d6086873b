import os

import pytest

from moshikit.backends import torch_env


def test_compile_off_by_default_and_flags(monkeypatch):
    monkeypatch.delenv("NO_TORCH_COMPILE", raising=False)
    monkeypatch.delenv("MOSHIKIT_TORCH_COMPILE", raising=False)
    monkeypatch.delenv("NO_CUDA_GRAPH", raising=False)
    torch_env.prepare()
    import os

    assert os.environ["NO_TORCH_COMPILE"] == "1"
    torch_env.configure(compile=True, cuda_graphs=False)
    assert "NO_TORCH_COMPILE" not in os.environ and os.environ["NO_CUDA_GRAPH"] == "1"
    torch_env.configure(compile=False, cuda_graphs=True)
    assert os.environ["NO_TORCH_COMPILE"] == "1" and os.environ["NO_CUDA_GRAPH"] == ""


@pytest.mark.parametrize("kind, name", [("codec", "torch"), ("codec", "onnx"), ("lm", "torch")])
def test_probing_a_backend_imports_moshi_with_compile_off(kind, name):
    """A probe (platform detection runs one before any model loads) is often the first import of
    moshi, which reads NO_TORCH_COMPILE once, then: compiling on a CPU took the live chat's
    first step 38 s, and every frame of a 15 s chat was dropped."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("NO_TORCH_COMPILE", "MOSHIKIT_TORCH_COMPILE")}
    code = (f"from moshikit.backends import registry; ok, why = registry.probe({kind!r}, {name!r}); "
            "from moshi.utils.compile import torch_compile_lazy; "
            "print(ok, torch_compile_lazy(len) is len)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if r.stdout.startswith("False"):
        pytest.skip(f"{name} {kind} backend not installed")
    assert r.stdout.split() == ["True", "True"], r.stdout + r.stderr
