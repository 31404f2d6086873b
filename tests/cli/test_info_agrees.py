"""`moshikit info` shows, for every command, the backend and device the command itself runs on.

Each command is run for real on a stubbed machine (CPU-only x86 with and without Pocket TTS, a CUDA
GPU, Apple silicon) until it resolves its backend: the resolution is recorded and the run stopped
there, before any model loads. The choice must equal info's row for that command."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest

import moshikit.codec  # noqa: F401  (binds `resolve` at import: imported here, never while it is patched)
from moshikit import platform
from moshikit.backends import registry
from moshikit.cli.app import main


class Resolved(BaseException):  # not an Exception: no per-file error handling may swallow it
    pass


MACHINES = {
    "cpu-x86": dict(machine="x86_64", apple_silicon=False, cuda=[], mps=False),
    "cpu-x86-no-pocket": dict(machine="x86_64", apple_silicon=False, cuda=[], mps=False),
    "cuda": dict(machine="x86_64", apple_silicon=False, cuda=[platform.GPU(0, "NVIDIA L4", 24.0, 20.0, "8.9")],
                 mps=False),
    "apple": dict(system="Darwin", machine="arm64", apple_silicon=True, cuda=[], mps=True),
}
MISSING = {"cpu-x86": set(), "cpu-x86-no-pocket": {"pocket"}, "cuda": set(), "apple": set()}


@pytest.fixture(params=list(MACHINES))
def machine(request, monkeypatch):
    plat = replace(platform.detect(gpus=False), **MACHINES[request.param])
    missing = MISSING[request.param]
    monkeypatch.setattr(platform, "detect", lambda gpus=True: plat)
    monkeypatch.setattr(platform, "is_apple_silicon", lambda: plat.apple_silicon)
    monkeypatch.setattr(registry, "probe", lambda kind, name: (False, "not installed") if name in missing
                        else (True, "stub"))
    return request.param


def _argv(command: str, tmp_path, request) -> list[str]:
    import soundfile as sf

    from moshikit.tokens import TokenHeader, write_tokens

    wav = tmp_path / "in.wav"
    sf.write(wav, np.zeros(24000, np.float32), 24000)
    weights = tmp_path / "mimi.safetensors"
    weights.write_bytes(b"not read: the run stops at the backend choice")
    if command == "decode":  # decode reads the checkpoint's identity before it loads the codec
        weights = request.getfixturevalue("mimi_weights")
    tok = tmp_path / "in.mimi"
    write_tokens(tok, np.zeros((8, 13), np.int64), TokenHeader(num_codebooks=8, frames=13, num_samples=24000))
    return {
        "encode": ["encode", str(wav), "-o", str(tmp_path / "o.mimi"), "--mimi-weight", str(weights)],
        "decode": ["decode", str(tok), "-o", str(tmp_path / "o.wav"), "--mimi-weight", str(weights), "--force"],
        "transcribe": ["transcribe", str(wav), "-o", str(tmp_path / "o.txt"), "--model", "synthetic"],
        "translate": ["translate", str(wav), "-o", str(tmp_path / "o.wav"), "--model", "synthetic"],
        "speak": ["speak", "Hello there.", "-o", str(tmp_path / "o.wav")],
        "chat": ["chat", "-m", "synthetic", "-i", str(wav), "-o", str(tmp_path / "o.wav")],
        "serve": ["serve", "--model", "synthetic", "--port", "0"],
        "agent": ["agent", "-i", str(wav), "--llm-model", "m", "-o", str(tmp_path / "o.wav")],
    }[command]


#: Commands that resolve more than one model before loading any: how many resolutions to wait for.
MODELS = {"agent": 2}


def _chosen(command: str, tmp_path, monkeypatch, request) -> list[platform.Choice]:
    """Run ``command`` until it resolves its backend (both of ``agent``'s); every resolution it made."""
    seen: list[platform.Choice] = []
    real = platform.resolve

    def recording(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        if len(seen) >= MODELS.get(command, 1):
            raise Resolved
        return seen[-1]

    patched = [mod for name, mod in list(sys.modules.items())  # modules that imported it by name too
               if name.startswith("moshikit") and getattr(mod, "resolve", None) is real]
    assert moshikit.codec in patched
    for mod in patched:
        monkeypatch.setattr(mod, "resolve", recording)
    with pytest.raises(Resolved):
        main(_argv(command, tmp_path, request))
    return seen


def test_every_command_has_a_row():
    assert set(platform.DEFAULTS) == {"encode", "decode", "transcribe", "translate", "speak", "chat", "serve",
                                      "agent"}


@pytest.mark.parametrize("command", sorted(platform.DEFAULTS))
def test_info_shows_what_the_command_runs_on(command, machine, tmp_path, monkeypatch, capsys, request):
    assert main(["info", "--json", "--no-gpus"]) == 0
    row = json.loads(capsys.readouterr().out)["defaults"][command]
    chosen = _chosen(command, tmp_path, monkeypatch, request)
    if command == "agent":  # its STT, then its TTS: one row with both, and each whole in the JSON
        assert len(chosen) == 2
        assert row == vars(platform.PairChoice.of(*chosen))
        assert (row["stt"]["backend"], row["tts"]["backend"]) == (chosen[0].backend, chosen[1].backend)
        return
    assert chosen and {(c.backend, c.device, c.reason) for c in chosen} == {(row["backend"], row["device"],
                                                                             row["reason"])}


def test_the_rows_the_issue_named(monkeypatch, capsys):
    """speak on a CPU with Pocket TTS installed is pocket; transcribe on a CPU is no longer "tiny
    checkpoints only"; translate has a row."""
    plat = replace(platform.detect(gpus=False), **MACHINES["cpu-x86"])
    monkeypatch.setattr(platform, "detect", lambda gpus=True: plat)
    monkeypatch.setattr(platform, "is_apple_silicon", lambda: False)
    monkeypatch.setattr(registry, "probe", lambda kind, name: (True, "stub"))
    assert main(["info", "--no-gpus"]) == 0
    out = capsys.readouterr().out
    rows: dict[str, str] = {}
    for line in (x for x in out.splitlines() if x.count("│") >= 4):  # a row's wrapped lines join it
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[0]:
            name = cells[0]
        rows[name] = rows.get(name, "") + " " + " ".join(cells[1:])
    assert "pocket" in rows["speak"] and "int8" in rows["transcribe"] and "tiny" not in rows["transcribe"]
    assert "CPU engine" in rows["translate"] and "serve" in rows  # Hibiki on the engine with no GPU
    assert "cpu + pocket" in rows["agent"]  # stt-1b on the CPU engine, Pocket TTS
