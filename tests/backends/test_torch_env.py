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
