"""Start-up cost, help, info and completion scripts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moshikit.cli.app import main
from moshikit.cli.completion import SHELLS, script

ROOT = Path(__file__).resolve().parents[2]


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from moshikit.cli.app import main; rc = main(['encode', '--help']); "
            "heavy = [m for m in ('torch', 'mlx', 'sounddevice', 'moshi', 'rustymimi', 'numpy') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_completion_is_answered_without_heavy_imports():
    env = {"_MOSHIKIT_COMPLETE": "complete_bash", "COMP_WORDS": "moshikit enc", "COMP_CWORD": "1",
           "PATH": "/usr/bin:/bin"}
    code = "import sys; from moshikit.cli.app import run; run()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "encode" in res.stdout
    code2 = ("import os, sys; os.environ.update({'_MOSHIKIT_COMPLETE': 'complete_bash', 'COMP_WORDS': 'moshikit e',"
             " 'COMP_CWORD': '1'});\nfrom moshikit.cli.app import main\ntry: main()\nexcept SystemExit: pass\n"
             "print([m for m in ('torch', 'numpy') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True)
    assert res.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_files_are_current(shell):
    path = ROOT / "completions" / {"bash": "moshikit.bash", "zsh": "_moshikit", "fish": "moshikit.fish"}[shell]
    assert path.read_text() == script(shell), f"stale: run `moshikit completion {shell} > {path.relative_to(ROOT)}`"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("moshikit 0.")


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {(b["kind"], b["name"]): b for b in data["backends"]}
    assert names[("codec", "torch")]["available"] is True
    assert data["defaults"]["encode"]["backend"] in ("torch", "onnx", "rustymimi", "mlx")
    assert data["platform"]["cores"] >= 1
    for b in data["backends"]:
        assert b["available"] or b["install"].startswith("pip install")


def test_info_human(capsys):
    assert main(["info", "--no-gpus"]) == 0
    out = capsys.readouterr().out
    assert "codec" in out and "encode" in out and "CPU:" in out


def test_no_args_shows_help(capsys):
    code = main([])
    out, err = capsys.readouterr()
    assert code in (0, 2) and "encode" in out + err
