"""`moshikit serve` as a user runs it: a foreground process that prints its URL and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from moshikit import remote
from moshikit.cli.app import main


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.testing import synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)  # written once per test session


def test_help_lists_the_options(capsys):
    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--host", "--port", "--model", "--backend", "--device", "--ssl", "--ssl-cert", "--ssl-key", "--batch",
                "--temp", "--temp-text", "--top-k", "--seed", "--static"):
        assert opt in text
    assert "127.0.0.1" in text


def test_cert_without_key_is_a_usage_error(capsys):
    assert main(["serve", "--ssl-cert", "c.pem"]) == 2
    assert "--ssl-cert and --ssl-key go together" in capsys.readouterr().err


def test_batch_needs_torch(capsys, repo):
    assert main(["serve", "--model", str(repo), "--backend", "mlx", "--batch", "2"]) == 2
    assert "--batch 2 needs the torch backend" in capsys.readouterr().err


@pytest.mark.slow  # a real process: model load and a conversation (~8 s); the stubbed test covers the wiring
def test_serve_process_prints_url_and_talks(repo, speech, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "moshikit", "serve", "--model", str(repo), "--port", "0",
                             "--backend", "torch", "--device", "cpu", "--temp", "0", "--temp-text", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("ws://localhost:") and url.endswith("/api/chat"), proc.stderr.read()
        out, transcript = remote.chat_file(url, speech[: 8 * 1920], tail_seconds=0.0, quiet_seconds=1.0)
        assert np.count_nonzero(out) > 5 * 1920 and transcript
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read()
    assert rc == 0, err
    assert "serving Moshi (torch LM on cpu, 1 session)" in err and "session from 127.0.0.1" in err
    assert "Traceback" not in err


def test_ssl_flag_makes_a_certificate_and_a_wss_url(monkeypatch, capsys, tmp_path):
    """The command's wiring, with the model and the network loop stubbed out."""
    import ssl
    from types import SimpleNamespace

    from moshikit import serve as lib

    seen = {}

    def fake_load(model, **kw):
        seen["load"] = (model, kw)
        info = SimpleNamespace(backend="torch", device="cpu")
        return SimpleNamespace(batch_size=kw["batch"], lm=SimpleNamespace(info=info))

    def fake_forever(server, on_ready, *, ssl_ctx=None):
        seen["ctx"], seen["cfg"] = ssl_ctx, server.cfg
        on_ready("wss://localhost:8443/api/chat")

    monkeypatch.setattr(lib, "load_conversation", fake_load)
    monkeypatch.setattr(lib, "serve_forever", fake_forever)
    monkeypatch.setenv("MOSHIKIT_CACHE", str(tmp_path))
    assert main(["serve", "--ssl", "--host", "0.0.0.0", "--port", "8443", "--batch", "2", "--temp", "0.5",
                 "--seed", "3", "--model", "some/repo"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "wss://localhost:8443/api/chat"
    assert isinstance(seen["ctx"], ssl.SSLContext)
    assert (tmp_path / "serve-tls" / "cert.pem").is_file() and (tmp_path / "serve-tls" / "key.pem").is_file()
    assert seen["cfg"].host == "0.0.0.0" and seen["cfg"].port == 8443
    model, kw = seen["load"]
    assert model == "some/repo" and kw["batch"] == 2
    assert kw["sampling"].temp == 0.5 and kw["sampling"].seed == 3
