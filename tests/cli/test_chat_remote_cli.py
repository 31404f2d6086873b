"""`moshikit chat --url URL --input FILE --output FILE --transcript FILE`: the remote chat
as a smoke test of a Moshi server (here `moshikit serve` on the tiny synthetic model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moshikit.cli.app import main


@pytest.fixture(scope="module")
def served(mimi_weights):
    from moshikit import serve
    from moshikit.backends.base import SamplingConfig
    from moshikit.synthetic import lm as synthetic_lm

    repo = synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)
    conv = serve.load_conversation(str(repo), backend="torch", device="cpu",
                                   sampling=SamplingConfig(temp=0.0, temp_text=0.0))
    with serve.RunningServer(serve.ChatServer(conv, serve.ServeConfig(port=0))) as running:
        yield running.url


def test_chat_url_file_in_file_out(served, speech, tmp_path, write_wav):
    import soundfile as sf

    src = write_wav(tmp_path / "in.wav", speech[: 24000 * 2])
    out, tr = tmp_path / "reply.wav", tmp_path / "reply.json"
    rc = main(["chat", "--url", served, "--input", str(src), "--output", str(out), "--transcript", str(tr)])
    assert rc == 0
    audio, sr = sf.read(out, dtype="float32")
    assert sr == 24000 and audio.size >= 24000 * 2 and np.count_nonzero(audio) > 24000
    doc = json.loads(tr.read_text())
    assert set(doc) == {"duration", "text", "pieces", "model"} and doc["model"] == served
    assert doc["duration"] == pytest.approx(audio.size / 24000, abs=1e-3)
    pieces = doc["pieces"]
    assert pieces and all(set(p) == {"time", "text"} and p["text"] for p in pieces)
    times = [p["time"] for p in pieces]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= doc["duration"]
    assert doc["text"] == "".join(p["text"] for p in pieces).strip() and doc["text"]


def test_chat_url_unreachable_is_one_line(tmp_path, speech, write_wav, capsys):
    from moshikit.testing.moshi_server import free_port

    src = write_wav(tmp_path / "in.wav", speech[:24000])
    rc = main(["chat", "--url", f"ws://127.0.0.1:{free_port()}/api/chat", "--input", str(src),
               "--output", str(tmp_path / "o.wav")])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach 127.0.0.1") and "Traceback" not in err
    assert not (tmp_path / "o.wav").exists()
