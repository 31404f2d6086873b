"""bench serve: a `moshikit serve` process under concurrent clients over loopback, next to the same
models in process, in one run."""

from __future__ import annotations

import json

import pytest

from moshikit.cli.app import main


@pytest.mark.slow
def test_bench_serve_rows(mimi_weights, tmp_path, capsys):
    out = tmp_path / "serve.json"
    code = main(["bench", "serve", "--synthetic", "--streams", "1,2", "--seconds", "2", "--words", "4",
                 "--json", str(out)])
    assert code in (0, None), capsys.readouterr().err
    data = json.loads(out.read_text())
    got = {(r["name"], r["task"]) for r in data["rows"]}
    assert {("moshikit serve stt, unpaced", "2 streams x 2 s"), ("moshikit serve stt, real-time pace",
            "2 streams: marker lag"), ("moshikit serve tts (/v1/audio/speech)", "2 requests x 4 words"),
            ("moshikit serve tts (/v1/audio/speech)", "2 requests: first audio")} <= got
    assert any(name.startswith("moshikit transcribe, in process") for name, _ in got)  # the reference rows
    assert any(name == "moshikit speak, in process" or "pocket-tts" in name for name, _ in got)
    for r in data["rows"]:
        assert r["stage"] == "serve" and r["params"]["load"] is not None
        if r["unit"] == "x real time":
            assert r["stats"]["p50"] > 0
    # each paced stream's marker comes back: the lags are measured, one per stream
    lags = [r for r in data["rows"] if r["task"] == "2 streams: marker lag"][0]
    assert lags["stats"]["n"] == 2 and "held" in lags["params"]
    assert any(n.startswith("stt: the largest count of paced streams held") for n in data["notes"])


def test_bench_serve_needs_a_model(capsys):
    assert main(["bench", "serve"]) == 2
    assert "name a model to serve" in capsys.readouterr().err
