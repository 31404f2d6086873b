"""moshikit speak -b mlx end to end on the tiny synthetic TTS model (in-process).

MLX's Mimi decodes at ~1.3 s per 80 ms frame on a 2-core x86 CPU, so the runs that write audio
are marked slow; the texts are a word or two.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("moshi_mlx.models.tts")

from moshikit.cli.app import main  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def mlx_model(mimi_weights):
    from moshikit.tts import load_tts

    return load_tts("synthetic", backend="mlx")  # loads once; speak reuses it in-process


def run(capsys, *argv):
    code = main(["speak", "-m", "synthetic", "-b", "mlx", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_voices_and_bad_cfg(capsys, tmp_path):
    code, out, err = run(capsys, "--list-voices", "--json")
    assert code == 0, err
    assert "expresso/ex03-ex01_happy_001_channel1_334s.wav" in json.loads(out)["voices"]
    code, _, err = run(capsys, "hi", "-o", str(tmp_path / "e.wav"), "--cfg", "2.2")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "--cfg 2.2: this model was trained for" in lines[0]
    assert not (tmp_path / "e.wav").exists() and not list(tmp_path.glob(".*"))


@pytest.mark.slow  # ~80 s here (loaded 2-core CPU): two short runs through MLX's Mimi
def test_wav_words_json_and_the_same_seed_again(capsys, tmp_path):
    import soundfile as sf

    wav, words = tmp_path / "hi.wav", tmp_path / "hi.json"
    code, out, err = run(capsys, "Hi there.", "-o", str(wav), "--words", str(words), "--seed", "1", "--json")
    assert code == 0, err
    summary = json.loads(out)
    audio, rate = sf.read(wav)
    assert rate == 24000 and audio.size / 24000 == pytest.approx(summary["audio_seconds"], abs=1e-3)
    assert summary["words"] == 2 and summary["time_to_first_audio"] > 0
    doc = json.loads(words.read_text())
    assert doc["model"]["backend"] == "mlx"
    assert [w["word"] for w in doc["words"]] == ["Hi", "there."]
    assert 0 < doc["words"][0]["start"] < doc["words"][1]["start"] < summary["audio_seconds"]
    code, _, err = run(capsys, "Hi there.", "-o", str(tmp_path / "again.wav"), "--seed", "1")
    assert code == 0, err
    np.testing.assert_array_equal(sf.read(tmp_path / "again.wav")[0], audio)


@pytest.mark.slow  # ~65 s here (loaded 2-core CPU)
def test_mimi_tokens_and_dialogue(capsys, tmp_path, mlx_model):
    from moshikit.tokens import read_tokens
    from moshikit.tts import Settings, chunks

    code, _, err = run(capsys, "Hi.", "-o", str(tmp_path / "hi.mimi"), "--seed", "4")
    assert code == 0, err
    tokens = read_tokens(tmp_path / "hi.mimi")
    assert tokens.header.backend == "mlx" and tokens.codes.shape[:2] == (1, 8)
    direct = mlx_model.generate(chunks(["Hi."]), [mlx_model.resolve_voice(None)],
                                Settings(seed=4, keep_codes=True, decode=False))
    np.testing.assert_array_equal(tokens.codes[0], np.stack(direct.codes, axis=-1))
    talk = tmp_path / "talk.jsonl"
    talk.write_text('{"speaker": "Ann", "text": "Hi."}\n'
                    '{"speaker": "Bob", "text": "Yo!", "voice": "vctk/p225_023.wav"}\n')
    code, out, err = run(capsys, "--dialogue", str(talk), "-o", str(tmp_path / "talk.wav"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["voices"] == ["expresso/ex03-ex01_happy_001_channel1_334s.wav", "vctk/p225_023.wav"]
    assert summary["words"] == 2 and (tmp_path / "talk.wav").stat().st_size > 44
