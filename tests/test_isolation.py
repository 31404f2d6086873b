"""The suite runs in a home of its own: a user's files (Ray's token, ALSA config, caches) cannot change it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_home_and_caches_are_temporary():
    root = Path(os.environ["HOME"]).parent
    assert root.name.startswith("moshikit-tests-") and Path.home() == root / "home"
    for var in ("HF_HOME", "HF_HUB_CACHE", "MOSHIKIT_CACHE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        assert Path(os.environ[var]).is_relative_to(root), var
    assert Path(os.environ["RAY_TMPDIR"]).name.startswith("rt")
    for var in ("RAY_ADDRESS", "HF_TOKEN", "MOSHIKIT_PLATFORM"):
        assert var not in os.environ


def test_a_child_process_sees_the_same_home():
    """CLI subprocesses (and Ray's workers) inherit the isolated home, not the user's."""
    out = subprocess.run([sys.executable, "-c", "from pathlib import Path; print(Path.home() / '.ray')"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == Path(os.environ["HOME"]) / ".ray"
    from moshikit.backends import onnx_codec

    assert Path(onnx_codec.cache_root()).is_relative_to(Path(os.environ["HOME"]).parent)
