"""`moshikit serve` as a user runs it: a foreground process that prints its URL and stops on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moshikit import remote
from moshikit.cli.app import main


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)  # written once per test session


def test_help_lists_the_options(capsys):
    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--host", "--port", "--model", "--backend", "--device", "--ssl", "--ssl-cert", "--ssl-key", "--batch",
                "--temp", "--temp-text", "--top-k", "--seed", "--static", "--token-file", "--allow-origin",
                "--max-connections", "--max-per-client", "--header-timeout"):
        assert opt in text
    assert "127.0.0.1" in text


def test_cert_without_key_is_a_usage_error(capsys):
    assert main(["serve", "--ssl-cert", "c.pem"]) == 2
    assert "--ssl-cert and --ssl-key go together" in capsys.readouterr().err


def test_batch_needs_torch(capsys, repo):
    assert main(["serve", "--model", str(repo), "--backend", "mlx", "--batch", "2"]) == 2
    assert "--batch 2 needs the torch backend" in capsys.readouterr().err


@pytest.mark.slow  # a real process: model load and a conversation (~8 s); the --ssl test below runs by default
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


def test_ssl_serves_wss_with_a_made_certificate(repo, speech, tmp_path):
    """`serve --ssl` with no certificate, as a user runs it: the real loader and server on the
    tiny model, on loopback. A certificate is made and kept in moshikit's cache, the URL is
    wss://, the server presents that certificate, a client speaking the protocol over TLS
    gets Moshi's audio and text, and the options reach the model (--batch 2: two sessions)."""
    import ssl

    cache = tmp_path / "cache"
    env = dict(os.environ, OMP_NUM_THREADS="1", MOSHIKIT_CACHE=str(cache))
    if (Path(os.environ["MOSHIKIT_CACHE"]) / "onnx").is_dir():  # the session's exported graphs: no second export
        shutil.copytree(Path(os.environ["MOSHIKIT_CACHE"]) / "onnx", cache / "onnx")
    proc = subprocess.Popen([sys.executable, "-m", "moshikit", "serve", "--ssl", "--model", str(repo), "--port", "0",
                             "--batch", "2", "--temp", "0.5", "--seed", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("wss://localhost:") and url.endswith("/api/chat"), proc.stderr.read()
        cert = cache / "serve-tls" / "cert.pem"
        assert cert.is_file() and (cache / "serve-tls" / "key.pem").is_file()
        port = int(url.split(":")[2].split("/")[0])
        served = ssl.get_server_certificate(("127.0.0.1", port))
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(cert.read_text())
        out, transcript = remote.chat_file(url, speech[: 8 * 1920], insecure=True, tail_seconds=0.0,
                                           quiet_seconds=1.0)
        assert np.count_nonzero(out) > 5 * 1920
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read()
    assert rc == 0, err
    assert f"self-signed certificate {cert}" in err and "serving Moshi (torch LM on cpu, 2 sessions)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_sampling_options_reach_the_model(command, repo, capsys, monkeypatch, tmp_path, write_wav):
    """--temp/--top-k/--seed go over the checkpoint's own lm_gen_config (what was not given stays
    the model's), and the LM the command loads samples with exactly that."""
    import json

    from moshikit import loading
    from moshikit.backends.base import SamplingConfig
    from moshikit.errors import MoshikitError

    own = json.loads((Path(repo) / "config.json").read_text())["lm_gen_config"]
    loaded = []
    real = loading.load_lm_and_codec

    def load_and_stop(*args, **kwargs):
        loaded.append(real(*args, **kwargs).lm)
        raise MoshikitError("stopped after loading")

    monkeypatch.setattr(loading, "load_lm_and_codec", load_and_stop)
    argv = [command, "-m", str(repo), "--temp", "0", "--top-k", "7", "--seed", "5"]
    if command == "chat":
        wav = write_wav(tmp_path / "in.wav", np.zeros(2400, np.float32))
        argv += ["--input", str(wav), "--output", str(tmp_path / "out.wav")]
    assert main(argv) == 1
    assert "stopped after loading" in capsys.readouterr().err
    assert loaded[0].sampling == SamplingConfig(temp=0.0, temp_text=own["temp_text"], top_k=7,
                                                top_k_text=own["top_k_text"], seed=5)
