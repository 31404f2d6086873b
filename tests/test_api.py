"""The Python API: the examples in docs/api.md run as written, and agree with the commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_blocks() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_import_moshikit_loads_no_framework():
    code = ("import sys, moshikit; moshikit.read_tokens; moshikit.MimiCodec;"
            "print([m for m in ('torch', 'mlx', 'moshi', 'sounddevice') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_readme_examples_run(tmp_path, monkeypatch, mimi_weights, capsys):
    blocks = _readme_blocks()
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["codes"].shape == (8, 38) and scope["codes"].dtype == np.int64
    assert scope["back"].shape == (72000,) and scope["back"].dtype == np.float32
    assert (tmp_path / "clip.mimi").is_file()
    assert scope["frame"].pcm.shape == (1, 1920)
    # the synthetic STT's random weights, read greedily, say words on a sine (a pad-only result would
    # leave the snippet's print untested)
    assert scope["result"].text.strip() and scope["result"].words


def test_api_codes_equal_the_encode_command(tmp_path, mimi_weights, speech, write_wav):
    import moshikit
    from moshikit.cli.app import main

    wav = write_wav(tmp_path / "a.wav", speech[: 24000 * 3])
    assert main(["encode", str(wav), "-o", str(tmp_path / "a.mimi"), "--mimi-weight", str(mimi_weights),
                 "--backend", "torch"]) == 0
    codec = moshikit.load_codec(mimi_weight=str(mimi_weights), backend="torch")
    codes = codec.encode(str(wav))
    assert np.array_equal(codes, moshikit.read_tokens(tmp_path / "a.mimi").codes[0])
    stereo = np.stack([speech[: 24000 * 3], speech[: 24000 * 3]])
    assert np.array_equal(codec.encode(stereo, 24000), codes)  # [C, T] is averaged: same audio
    audio = codec.decode(moshikit.read_tokens(tmp_path / "a.mimi"))
    assert audio.shape == (24000 * 3,)


def test_api_rejects_bad_shapes(mimi_weights):
    import moshikit

    codec = moshikit.load_codec(mimi_weight=str(mimi_weights), backend="torch")
    with pytest.raises(ValueError, match=r"\[T\] or \[C, T\]"):
        codec.encode(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[K, F\]"):
        codec.decode(np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="sample_rate goes with an array"):
        codec.encode("x.wav", 16000)
