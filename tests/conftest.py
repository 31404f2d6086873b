"""Shared test ground: a fitted synthetic Mimi written once per session, an isolated home
(HOME, XDG dirs, the Hugging Face cache, moshikit's cache, Ray's files) with the network off,
and plain (uncoloured) terminal output. Nothing a user keeps in their own home reaches a test."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Set before any test module is imported: huggingface_hub reads its cache location once,
# at import time, so a fixture would be too late.
_ROOT = Path(tempfile.mkdtemp(prefix="moshikit-tests-"))
for _d in ("home", "config", "cache", "data"):
    (_ROOT / _d).mkdir()
# Variables of the user's own setup that would change what a test sees (tokens, endpoints, clusters).
for _var in ("HF_TOKEN", "HF_ENDPOINT", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
             "MOSHIKIT_PLATFORM", "MOSHIKIT_DEBUG", "ALSA_CONFIG_PATH", "XDG_RUNTIME_DIR", "PULSE_SERVER"):
    os.environ.pop(_var, None)
os.environ.update({
    "HOME": str(_ROOT / "home"),  # Ray writes ~/.ray, ALSA reads ~/.asoundrc, Python ~/.local
    "XDG_CONFIG_HOME": str(_ROOT / "config"),
    "XDG_CACHE_HOME": str(_ROOT / "cache"),
    "XDG_DATA_HOME": str(_ROOT / "data"),
    "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp"),  # short: Ray's socket paths are length-limited
    "NO_COLOR": "1",
    "COLUMNS": "120",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HOME": str(_ROOT / "hf"),
    "HF_HUB_CACHE": str(_ROOT / "hf" / "hub"),
    "MOSHIKIT_CACHE": str(_ROOT / "moshikit"),
})


@pytest.fixture(scope="session", autouse=True)
def _isolated_env():
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)
    shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def mimi_weights(_isolated_env) -> Path:
    """The fitted synthetic Mimi, also placed where ``--model synthetic`` finds it."""
    from moshikit.synthetic import core as synthetic

    reuse = os.environ.get("MOSHIKIT_TEST_MIMI")  # a developer may point at a prebuilt file
    path = synthetic.synthetic_dir() / "seed0" / synthetic.MIMI_NAME
    if reuse and Path(reuse).exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reuse, path)
        return path
    return synthetic.ensure_synthetic_mimi()


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    from moshikit.synthetic.core import speech_sample

    return speech_sample()


@pytest.fixture(scope="session")
def torch_codec(mimi_weights):
    from moshikit.codec import load_codec

    return load_codec("torch", "cpu", mimi_weight=mimi_weights)


def _write_wav(path: Path, pcm: np.ndarray, rate: int = 24000) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, pcm.T if pcm.ndim == 2 else pcm, rate, subtype="FLOAT")
    return path


@pytest.fixture(scope="session")
def write_wav():
    """write_wav(path, pcm [T] or [C, T], rate=24000) -> path (float wav)."""
    return _write_wav


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    they gain nothing from threads, and torch's OpenMP threads slow down tens of times when
    another process holds one of a small machine's cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def portaudio_missing() -> str | None:
    """Why PortAudio cannot be used here (None when it can). ``sounddevice`` raises OSError, not
    ImportError, without the system library, so ``importorskip`` would fail instead of skipping."""
    try:
        import sounddevice  # noqa: F401
    except ImportError:
        return "sounddevice is not installed"
    except OSError:
        return "PortAudio is not installed (Debian: libportaudio2; scripts/test.sh installs it as root)"
    return None


@pytest.fixture(scope="session")
def portaudio() -> None:
    """Skip, with the reason in the summary, where the system has no PortAudio."""
    reason = portaudio_missing()
    if reason:
        pytest.skip(reason)


#: Modules that compare two code paths' floats or codes (moshikit against moshi, graphed against
#: plain, batched against alone...). scripts/test.sh runs them a second time with another CPU kernel
#: set forced (AVX2 instead of AVX-512/AMX for ATen, oneDNN and MKL, one thread): rounding that
#: differs between machines shows on any machine, before it reaches a user's CPU.
NUMERICS_MODULES = frozenset({
    "test_torch_graphs.py", "test_pocket.py", "test_codec_backends.py", "test_onnx_codec.py",
    "test_mimi_graph.py", "test_torch_int8.py", "test_tts_speech.py", "test_translate_parity.py",
    "test_lm.py", "test_codec.py", "test_stt_streams.py", "test_tts_slots.py",
})


def pytest_report_header(config):
    """The CPU and kernel set the suite runs on: equal numbers on one machine may differ on another."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    forced = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                         "OMP_NUM_THREADS") if k in os.environ}
    return f"cpu: {cpu}; kernel set forced: {forced or 'none, the best this CPU has'}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in NUMERICS_MODULES:
            item.add_marker(pytest.mark.numerics)
    skip_cuda_without_gpu(items)


def skip_cuda_without_gpu(items):
    """Tests marked ``cuda`` run only where PyTorch sees a CUDA GPU (or, for a dry run of
    their code, with MOSHIKIT_TEST_CUDA_DEVICE=cpu); elsewhere they are skipped. torch is
    imported only when such tests were collected; ``is_available`` asks the driver for a
    device count and creates no CUDA context."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked or os.environ.get("MOSHIKIT_TEST_CUDA_DEVICE") == "cpu":  # the GPU proof's CPU dry run
        return
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if available:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tts_model(mimi_weights):
    """A tiny synthetic Kyutai TTS model, loaded once for the TTS tests (tests/tts/). It lives here,
    not in a tests/tts/conftest.py: a second module named ``conftest`` would shadow this one for
    the tests that import ``_write_wav`` from it."""
    from moshikit.tts import load_tts

    # No thread setting here: a session fixture's would last the rest of the session (one thread
    # for every later test). The modules that use it take ``one_torch_thread`` (module scope).
    yield load_tts("synthetic", backend="torch")  # moshi's own model: the tests' reference
