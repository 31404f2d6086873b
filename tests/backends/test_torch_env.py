"""moshikit's switches for moshi's PyTorch code are set before moshi is imported, on every
entry path, and torch's own log lines stay out of the commands' output."""

import os
import re
import subprocess
import sys

import pytest

from moshikit.backends import torch_env

# torch's logging format: "W1202 19:56:10.947000 6024 torch/utils/cpp_extension.py:117] ..."
TORCH_LOG_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.py:\d+\]", re.M)


def test_compile_off_by_default_and_flags(monkeypatch):
    monkeypatch.delenv("NO_TORCH_COMPILE", raising=False)
    monkeypatch.delenv("MOSHIKIT_TORCH_COMPILE", raising=False)
    monkeypatch.delenv("NO_CUDA_GRAPH", raising=False)
    torch_env.prepare()
    assert os.environ["NO_TORCH_COMPILE"] == "1"
    torch_env.configure(compile=True, cuda_graphs=False)
    assert "NO_TORCH_COMPILE" not in os.environ and os.environ["NO_CUDA_GRAPH"] == "1"
    torch_env.configure(compile=False, cuda_graphs=True)
    assert os.environ["NO_TORCH_COMPILE"] == "1" and os.environ["NO_CUDA_GRAPH"] == ""


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_TORCH_COMPILE", "NO_CUDA_GRAPH", "MOSHIKIT_TORCH_COMPILE", "TORCH_LOGS")}
    env.update(extra)
    return env


# moshi's torch_compile_lazy returns the function itself when NO_TORCH_COMPILE is set at
# import, and a functools.wraps wrapper (with __wrapped__) that compiles on first call otherwise.
_PROBE = "import moshi.modules.gating as g; print('compiled' if hasattr(g.gating_forward_kernel, '__wrapped__') else 'plain')"


@pytest.mark.parametrize("entry", [
    "import moshikit.codec",  # the library API
    "from moshikit.backends import registry; registry.module('codec', 'torch')",  # the registry's probe imports moshi
    "from moshikit.cli.app import app",  # the CLI
    "import moshikit.distributed",  # what a Ray worker unpickles
])
def test_moshi_is_imported_with_compilation_off(entry):
    out = subprocess.run([sys.executable, "-c", f"{entry}\n{_PROBE}"], capture_output=True, text=True,
                         env=_clean_env(), check=True).stdout
    assert out.strip() == "plain"


def test_compilation_on_when_asked():
    out = subprocess.run([sys.executable, "-c", f"import moshikit.codec\n{_PROBE}"], capture_output=True,
                         text=True, env=_clean_env(MOSHIKIT_TORCH_COMPILE="1"), check=True).stdout
    assert out.strip() == "compiled"


def test_moshi_imported_first_is_still_not_compiled():
    code = ("import moshi.modules.gating as g, moshi.utils.compile as c\nimport moshikit.codec\n"
            "print(g.gating_forward_kernel.__wrapped__ is not None, c._compile_disabled)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(),
                         check=True).stdout
    assert out.split() == ["True", "True"]  # wrapped at import, and the wrapper calls the plain function


def test_quiet_library_logs_hides_torch_warnings_unless_debug():
    code = ("from moshikit.backends.torch_env import quiet_library_logs\nimport sys\n"
            "quiet_library_logs(debug=len(sys.argv) > 1)\nimport torch.utils.cpp_extension, logging\n"
            "logging.getLogger('torch.utils.cpp_extension').warning('a torch warning')")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), check=True)
    loud = subprocess.run([sys.executable, "-c", code, "debug"], capture_output=True, text=True, env=_clean_env(),
                          check=True)
    assert "a torch warning" not in quiet.stderr
    assert "a torch warning" in loud.stderr


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)


@pytest.mark.slow  # a whole `moshikit chat` in a fresh process (~20-50 s on 2 cores)
def test_chat_stderr_has_only_moshikit_lines(repo, speech, write_wav, tmp_path):
    wav = write_wav(tmp_path / "x.wav", speech[: 24000 * 2])
    res = subprocess.run([sys.executable, "-m", "moshikit", "chat", "-m", str(repo), "-i", str(wav),
                          "-o", str(tmp_path / "y.wav")], capture_output=True, text=True, env=_clean_env(),
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "y.wav").exists()
    assert not TORCH_LOG_LINE.search(res.stderr), res.stderr
    assert "torch/" not in res.stderr and "Warning" not in res.stderr, res.stderr


def test_encode_stderr_has_only_moshikit_lines(mimi_weights, speech, write_wav, tmp_path):
    wav = write_wav(tmp_path / "x.wav", speech[:24000])
    res = subprocess.run([sys.executable, "-m", "moshikit", "encode", "-b", "torch", "--mimi-weight", str(mimi_weights),
                          str(wav), "-o", str(tmp_path / "out")], capture_output=True, text=True, env=_clean_env(),
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert not TORCH_LOG_LINE.search(res.stderr), res.stderr
    assert "torch/" not in res.stderr, res.stderr


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
