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


def test_info_json(capsys, monkeypatch):
    """Every registered backend, its availability as the registry probes it, the install
    command of each one that is missing, and the defaults the commands use here."""
    import os

    from moshikit.backends import registry
    from moshikit.platform import default_codec, default_lm

    real_probe = registry.probe
    # One backend made unavailable, so that the missing-backend branch is always exercised.
    monkeypatch.setattr(registry, "probe", lambda kind, name: (False, "No module named 'mlx'")
                        if (kind, name) == ("codec", "mlx") else real_probe(kind, name))
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {(b["kind"], b["name"]): b for b in data["backends"]}
    assert set(names) == {(s.kind, s.name) for s in registry.BACKENDS}
    for spec in registry.BACKENDS:
        b, (ok, detail) = names[spec.kind, spec.name], registry.probe(spec.kind, spec.name)
        assert b["available"] is ok
        if ok:
            assert b["version"] == detail and "install" not in b
        else:
            assert b["reason"] == detail and b["install"] == spec.install
    assert names["codec", "mlx"] == {"kind": "codec", "name": "mlx", "available": False,
                                     "reason": "No module named 'mlx'", "install": "pip install 'moshikit[mlx]'",
                                     "summary": registry.get_spec("codec", "mlx").summary}
    assert names["codec", "torch"]["available"] is True  # a base dependency
    assert data["defaults"]["encode"] == vars(default_codec()) and data["defaults"]["chat"] == vars(default_lm())
    assert data["platform"]["cores"] == os.cpu_count()


def test_info_human(capsys):
    assert main(["info", "--no-gpus"]) == 0
    out = capsys.readouterr().out
    assert "codec" in out and "encode" in out and "CPU:" in out


def test_no_args_shows_help(capsys):
    """Bare `moshikit`: the help on stdout and exit 2 (a command is missing), as Click does."""
    code = main([])
    out, err = capsys.readouterr()
    assert code == 2 and err == ""
    assert "Usage: moshikit [OPTIONS] COMMAND [ARGS]..." in out
    for command in ("encode", "decode", "chat", "serve", "transcribe", "download", "models", "bench", "info",
                    "completion"):
        assert f" {command} " in out, command
