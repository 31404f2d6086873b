"""moshikit download / models end to end, in-process, against the loopback hub."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import HubServer, go_offline, patch_hub

from moshikit.catalog import MIMI_FILE
from moshikit.cli.app import main

FILES = {
    "model.q8.safetensors": os.urandom(400_000),
    MIMI_FILE: os.urandom(50_000),
    "tokenizer_spm_32k_3.model": b"spm" * 100,
    "config.json": b'{"moshi_name": "model.q8.safetensors"}',
}


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    server = HubServer().start()
    server.add("kyutai/moshika-pytorch-q8", FILES)
    patch_hub(monkeypatch, server, tmp_path / "hub")
    monkeypatch.setenv("MOSHIKIT_PLATFORM", "cuda:16")
    yield server
    from huggingface_hub.utils import reset_sessions

    server.stop()
    reset_sessions()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_imports_nothing_heavy():
    code = ("import sys; from moshikit.cli.app import main\n"
            "for argv in (['--help'], ['download', '--help'], ['models', '--help'], ['models', 'remove', '--help']):\n"
            "    main(argv)\n"
            "print([m for m in ('torch', 'numpy', 'huggingface_hub', 'requests', 'mlx', 'moshi') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_download_prints_the_path_and_json(hub, capsys, tmp_path):
    code, out, err = run(capsys, "download", "moshika")
    assert code == 0, err
    snap = Path(out.strip())
    assert snap.parent.parent == tmp_path / "hub" / "models--kyutai--moshika-pytorch-q8"
    assert (snap / "model.q8.safetensors").read_bytes() == FILES["model.q8.safetensors"]
    assert "moshika -> kyutai/moshika-pytorch-q8 (pytorch q8): 4 files" in err
    assert "4 files" in err and "checked: git-sha1, sha256" in err
    code, out, err = run(capsys, "download", "moshika", "--json")
    data = json.loads(out)["models"][0]
    assert code == 0 and data["repo"] == "kyutai/moshika-pytorch-q8" and data["downloaded_bytes"] == 0
    assert data["variant"] == "pytorch-q8" and data["path"] == str(snap)
    assert any("precision q8" in r for r in data["reasons"])
    code, out, err = run(capsys, "download", "moshika", "-q")
    assert code == 0 and out == f"{snap}\n" and err == ""


def test_dry_run_and_explain(hub, capsys):
    code, out, err = run(capsys, "download", "moshika", "--dry-run")
    assert code == 0, err
    assert "model.q8.safetensors" in out and "400.0 kB" in out and "to download" in out
    assert not (Path(os.environ["HF_HUB_CACHE"]) / "models--kyutai--moshika-pytorch-q8" / "snapshots").exists()
    code, out, _ = run(capsys, "download", "moshika", "--dry-run", "--json")
    plan = json.loads(out)["models"][0]
    assert plan["total_size"] == sum(len(v) for v in FILES.values()) and plan["sizes_exact"]
    code, out, _ = run(capsys, "download", "--explain", "moshika", "stt")
    assert code == 0 and "moshika on this machine (a CUDA GPU (16 GB; free memory unknown, the total used))" in out
    assert "-> kyutai/moshika-pytorch-q8" in out and "-> kyutai/stt-1b-en_fr" in out
    code, out, _ = run(capsys, "download", "--explain", "moshika", "--json")
    assert json.loads(out)["models"][0]["repo"] == "kyutai/moshika-pytorch-q8"


def test_bad_names_and_platform_mismatch(hub, capsys):
    code, _, err = run(capsys, "download", "moshka")
    assert code == 1 and "unknown model 'moshka'" in err and "did you mean moshika, moshiko?" in err
    code, _, err = run(capsys, "download", "moshika", "--variant", "mlx-q4", "--dry-run")
    assert code == 1 and "MLX variant for Apple silicon" in err and "--any-platform" in err
    code, _, err = run(capsys, "download", "moshika", "--variant", "q3")
    assert code == 2 and "moshika has no variant 'q3'" in err
    code, _, err = run(capsys, "download", "moshika", "--revision", "nope")
    assert code == 1 and "has no revision 'nope'" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "download")
    assert code == 2 and "name a model" in err


def test_offline_from_cache_and_missing(hub, capsys, monkeypatch):
    assert run(capsys, "download", "moshika")[0] == 0
    go_offline(monkeypatch)
    n = len(hub.requests)
    code, out, err = run(capsys, "download", "moshika", "-q")
    assert code == 0 and out.strip().endswith(tuple("0123456789abcdef")) and len(hub.requests) == n
    code, _, err = run(capsys, "download", "stt")
    assert code == 1 and "HF_HUB_OFFLINE is set" in err and "moshikit download stt" in err


def test_models_list_remove_verify(hub, capsys, monkeypatch):
    code, out, _ = run(capsys, "models", "--json")
    rows = {(m["model"], m["variant"]): m for m in json.loads(out)["models"]}
    q8 = rows[("moshika", "pytorch-q8")]
    assert code == 0 and not q8["cached"] and q8["picked_here"]
    assert run(capsys, "download", "moshika")[0] == 0
    code, out, _ = run(capsys, "download", "--list", "--json")
    row = {(m["model"], m["variant"]): m for m in json.loads(out)["models"]}[("moshika", "pytorch-q8")]
    assert row["state"] == "cached" and row["size_on_disk"] == sum(len(v) for v in FILES.values())
    code, out, _ = run(capsys, "models")
    line = next(ln for ln in out.splitlines() if "moshika-pytorch-q8" in ln)
    assert "yes" in line and "*" in line and "kB" in line
    # verify: all good, then a corrupted blob is caught.
    code, _, err = run(capsys, "models", "verify")
    assert code == 0 and err.count("ok ") == 4
    blob = Path(os.path.realpath(Path(os.environ["HF_HUB_CACHE"]) / "models--kyutai--moshika-pytorch-q8"
                                 / "snapshots" / hub.repos["kyutai/moshika-pytorch-q8"].refs["main"] / MIMI_FILE))
    good = blob.read_bytes()
    blob.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])  # always a change (a fixed byte equals the first 1 in 256 runs)
    code, out, err = run(capsys, "models", "verify", "moshika", "--json")
    data = json.loads(out)
    assert code == 1 and not data["ok"] and [c["file"] for c in data["checks"] if not c["ok"]] == [MIMI_FILE]
    assert "moshikit download kyutai/moshika-pytorch-q8 --force" in err
    # remove: shows what it frees, asks, and does nothing on "n".
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, _, err = run(capsys, "models", "remove", "moshika")
    assert code == 1 and "frees 450.4 kB" in err and "nothing removed" in err
    code, out, _ = run(capsys, "models", "remove", "moshika", "--dry-run", "--json")
    assert json.loads(out)["freed_bytes"] >= sum(len(v) for v in FILES.values())
    code, _, err = run(capsys, "models", "remove", "moshika", "-y")
    assert code == 0 and "removed; 450.4 kB freed" in err
    assert not (Path(os.environ["HF_HUB_CACHE"]) / "models--kyutai--moshika-pytorch-q8").exists()
    code, _, err = run(capsys, "models", "remove", "moshika", "-y")
    assert code == 1 and "nothing of moshika is in the Hugging Face cache" in err


def test_encode_with_a_missing_model_names_the_download(capsys, tmp_path, speech, write_wav, monkeypatch):
    from huggingface_hub import constants

    # an empty cache of its own: other tests may place stt-en in the session's cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    wav = write_wav(tmp_path / "a.wav", speech[:24000])
    code, _, err = run(capsys, "encode", str(wav), "-o", str(tmp_path / "t"), "--model", "stt-en")
    assert code == 1 and "Traceback" not in err
    assert "stt-en (kyutai/stt-2.6b-en) is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in err
    assert "run `moshikit download mimi`" in err and "--mimi-weight" in err
