"""Shared test ground: a fitted synthetic Mimi written once per session, an isolated
Hugging Face cache with the network off, and plain (uncoloured) terminal output."""

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
os.environ.update({
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


@pytest.fixture(scope="session")
def mimi_weights(_isolated_env) -> Path:
    """The fitted synthetic Mimi, also placed where ``--model synthetic`` finds it."""
    from moshikit.testing import synthetic

    reuse = os.environ.get("MOSHIKIT_TEST_MIMI")  # a developer may point at a prebuilt file
    path = synthetic.synthetic_dir() / "seed0" / synthetic.MIMI_NAME
    if reuse and Path(reuse).exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reuse, path)
        return path
    return synthetic.ensure_synthetic_mimi()


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    from moshikit.testing.synthetic import speech_sample

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


def pytest_collection_modifyitems(config, items):
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
