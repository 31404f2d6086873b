"""moshikit speak end to end on the tiny synthetic TTS model (in-process unless a real stdin or
sound device is needed)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from moshikit.cli.app import main

pytestmark = pytest.mark.usefixtures("tts_model")  # the model loads once; speak reuses it in-process


@pytest.fixture(scope="module")
def tts_model(mimi_weights):
    import torch

    from moshikit.tts import load_tts

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_tts("synthetic", backend="torch")  # moshi's own model: the tests' reference
    torch.set_num_threads(before)


def run(capsys, *argv):
    code = main(["speak", "-m", "synthetic", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_to_wav_with_words(capsys, tmp_path):
    wav, words = tmp_path / "hello.wav", tmp_path / "hello.json"
    code, out, err = run(capsys, "Hello there. How are you?", "-o", str(wav), "--words", str(words), "--seed", "1",
                         "--json")
    assert code == 0, err
    summary = json.loads(out)
    import soundfile as sf

    audio, rate = sf.read(wav)
    assert rate == 24000 and audio.size / 24000 == pytest.approx(summary["audio_seconds"], abs=1e-3)
    assert summary["words"] == 5 and summary["characters"] == 24 and summary["time_to_first_audio"] > 0
    doc = json.loads(words.read_text())
    assert [w["word"] for w in doc["words"]] == ["Hello", "there.", "How", "are", "you?"]
    assert doc["words"][0]["start"] < doc["words"][-1]["start"] < summary["audio_seconds"]
    assert [s["text"] for s in doc["segments"]] == ["Hello there.", "How are you?"]
    # Same seed, same speech; the existing output is kept unless --overwrite.
    code, _, err = run(capsys, "Hello there. How are you?", "-o", str(wav), "--seed", "1")
    assert code == 2 and "exists" in err
    again = tmp_path / "again.flac"
    code, _, err = run(capsys, "Hello there. How are you?", "-o", str(again), "--seed", "1")
    assert code == 0, err
    np.testing.assert_allclose(sf.read(again)[0], audio, atol=1e-4)  # flac: 16-bit as the wav


def test_opus_output(capsys, tmp_path):
    import soundfile as sf

    code, _, err = run(capsys, "Hello there.", "-o", str(tmp_path / "a.wav"), "--seed", "4")
    assert code == 0, err
    code, _, err = run(capsys, "Hello there.", "-o", str(tmp_path / "a.opus"), "--seed", "4")
    assert code == 0, err
    info = sf.info(str(tmp_path / "a.opus"))
    assert (info.format, info.subtype, info.samplerate) == ("OGG", "OPUS", 24000)
    ref, opus = sf.read(tmp_path / "a.wav")[0], sf.read(tmp_path / "a.opus")[0]
    # The same speech's length, and sound (random weights speak near-Nyquist noise, which Opus
    # mostly drops, so no waveform comparison here: tests/test_audio.py compares a tone).
    assert abs(opus.size - ref.size) <= 960 and np.abs(opus).max() > 0.05


def test_file_stdin_ogg_mimi_srt_vtt(capsys, tmp_path, monkeypatch):
    text = tmp_path / "chapter.txt"
    text.write_text("First line here.\n\nSecond one!\n", encoding="utf-8")
    code, _, err = run(capsys, "-f", str(text), "-o", str(tmp_path / "c.ogg"), "--words", str(tmp_path / "c.srt"),
                       "--seed", "2")
    assert code == 0, err
    import soundfile as sf

    assert sf.info(str(tmp_path / "c.ogg")).format == "OGG"
    srt = (tmp_path / "c.srt").read_text()
    assert srt.startswith("1\n00:00:00,") and "First line here." in srt and "Second one!" in srt
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("First line here.\n\nSecond one!\n".encode())))
    code, _, err = run(capsys, "-", "-o", str(tmp_path / "c.mimi"), "--words", str(tmp_path / "c.vtt"), "--seed", "2")
    assert code == 0, err
    from moshikit.tokens import read_tokens

    tokens = read_tokens(tmp_path / "c.mimi")
    assert tokens.codes.shape[:2] == (1, 8) and tokens.header.frames * 1920 / 24000 == pytest.approx(
        sf.info(str(tmp_path / "c.ogg")).frames / 24000)
    assert (tmp_path / "c.vtt").read_text().startswith("WEBVTT\n\n00:00:00.")


def test_dialogue_two_voices(capsys, tmp_path, tts_model):
    talk = tmp_path / "talk.jsonl"
    talk.write_text('{"speaker": "Ann", "text": "Hi Bob."}\n{"speaker": "Bob", "text": "Hi Ann!",'
                    ' "voice": "vctk/p225_023.wav"}\n{"speaker": "Ann", "text": "Bye."}\n')
    code, out, err = run(capsys, "--dialogue", str(talk), "-o", str(tmp_path / "talk.wav"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["voices"] == ["expresso/ex03-ex01_happy_001_channel1_334s.wav", "vctk/p225_023.wav"]
    assert summary["words"] == 5
    three = tmp_path / "three.jsonl"
    three.write_text('{"speaker": "A", "text": "a"}\n{"speaker": "B", "text": "b"}\n{"speaker": "C", "text": "c"}\n')
    code, _, err = run(capsys, "--dialogue", str(three), "-o", str(tmp_path / "x.wav"))
    assert code == 2 and "3 speakers (A, B, C)" in err and not (tmp_path / "x.wav").exists()


def test_directory_is_resumable(capsys, tmp_path):
    src = tmp_path / "texts"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("One.")
    (src / "sub" / "b.txt").write_text("Two words.")
    (src / "notes.md").write_text("not a text to speak")
    out_dir = tmp_path / "audio"
    code, out, err = run(capsys, str(src), "-o", str(out_dir), "--words", "json", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["done"] == 2 and summary["failed"] == 0
    assert (out_dir / "a.wav").is_file() and (out_dir / "sub" / "b.wav").is_file()
    assert json.loads((out_dir / "sub" / "b.json").read_text())["text"] == "Two words."
    code, out, err = run(capsys, str(src), "-o", str(out_dir), "--words", "json", "--json")
    assert code == 0 and json.loads(out)["skipped"] == 2
    assert not list(out_dir.rglob(".*"))  # no partial files left


def test_directory_in_batches_equals_one_by_one(capsys, tmp_path):
    """Greedy, a batch of texts speaks each as it would alone; a bad text fails alone; a rerun resumes."""
    import soundfile as sf

    src = tmp_path / "texts"
    src.mkdir()
    texts = {"a": "One.", "b": "Two words here, then more. And more!", "c": "Three?", "d": "A fourth one."}
    for name, text in texts.items():
        (src / f"{name}.txt").write_text(text)
    (src / "bad.txt").write_text("Hello 日本")
    code, out, err = run(capsys, str(src), "-o", str(tmp_path / "one"), "--temp", "0", "--batch", "1", "--json")
    assert code == 1 and json.loads(out)["done"] == 4 and "bad.txt" in err and "日" in err
    code, out, err = run(capsys, str(src), "-o", str(tmp_path / "three"), "--temp", "0", "--batch", "3",
                         "--words", "json", "--json")
    summary = json.loads(out)
    assert code == 1 and summary["done"] == 4 and summary["failed"] == 1
    for name, text in texts.items():
        alone, batched = (sf.read(tmp_path / d / f"{name}.wav")[0] for d in ("one", "three"))
        np.testing.assert_allclose(batched, alone, atol=1e-4)
        assert json.loads((tmp_path / "three" / f"{name}.json").read_text())["text"] == text
    (src / "bad.txt").unlink()
    code, out, err = run(capsys, str(src), "-o", str(tmp_path / "three"), "--batch", "3", "--words", "json", "--json")
    assert code == 0 and json.loads(out)["skipped"] == 4
    code, _, err = run(capsys, "hi", "-o", str(tmp_path / "x.wav"), "--batch", "2")
    assert code == 2 and "--batch goes with a directory of texts" in err


@pytest.mark.parametrize("argv, message", [
    (["   ", "-o", "{d}/e.wav"], "nothing to say: the text is empty"),
    (["hi", "-o", "{d}/e.wav", "--voice", "expreso/ex03-ex01_happy_001_channel1_334s.wav"],
     "unknown voice 'expreso/ex03-ex01_happy_001_channel1_334s.wav'"),
    (["hi", "-o", "{d}/e.wav", "--voice", "{d}/notes.txt"], "notes.txt: not an audio file moshikit can read"),
    (["hi", "-o", "{d}/e.wav", "--voice", "{d}/me.wav"], "takes voice embeddings, not audio"),
    (["Hello 日本", "-o", "{d}/e.wav"], "characters this model cannot speak: '日' '本'"),
    (["hi", "-o", "{d}/e.mp4"], "cannot write 'mp4'"),
    (["hi", "-o", "{d}/e.wav", "--speed", "5"], "--speed 5 is out of range"),
    (["hi", "--stream", "-o", "{d}/e.wav"], "--stream reads standard input"),
    (["hi", "-o", "{d}/e.wav", "-b", "nope"], "unknown tts backend 'nope'"),
])
def test_bad_input_is_one_line_and_no_output(capsys, tmp_path, write_wav, argv, message):
    (tmp_path / "notes.txt").write_text("not audio")
    write_wav(tmp_path / "me.wav", np.zeros(2400, np.float32))
    code, out, err = run(capsys, *[a.format(d=tmp_path) for a in argv])
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "e.wav").exists() and not list(tmp_path.glob(".*"))
    if "unknown voice" in message:
        assert "did you mean expresso/ex03-ex01_happy_001_channel1_334s.wav" in err


def test_list_voices(capsys):
    code, out, err = run(capsys, "--list-voices", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert "expresso/ex03-ex01_happy_001_channel1_334s.wav" in data["voices"] and len(data["voices"]) == 4


# --------------------------------------------------------------------------- stdin over time, speaker

ASOUNDRC = """
pcm.!default {{ type asym; playback.pcm "fileout"; capture.pcm "null" }}
pcm.fileout {{ type file; slave.pcm "null"; file "{out}"; format "raw" }}
"""


@pytest.fixture()
def alsa_home(tmp_path, portaudio):
    if not sys.platform.startswith("linux"):
        pytest.skip("file-backed ALSA devices")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text(ASOUNDRC.format(out=home / "played.raw"))
    return home


@pytest.mark.slow
def test_stream_and_play_start_before_the_input_ends(alsa_home, tmp_path):
    """Words trickle in on stdin; sound reaches the (file-backed) speaker while stdin is still open."""
    env = dict(os.environ, HOME=str(alsa_home), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "moshikit", "speak", "-", "--stream", "--play", "-m", "synthetic",
                             "--output-device", "fileout", "--json", "--seed", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    played = alsa_home / "played.raw"
    try:
        for word in "Words come in one at a time from a model that".split():
            proc.stdin.write((word + " ").encode())
            proc.stdin.flush()
            time.sleep(0.2)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (played.exists() and played.stat().st_size > 0):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        assert played.stat().st_size > 0  # audio is out, and the input has not ended
        proc.stdin.write(b"is still thinking.\n")
        proc.stdin.close()
        proc.wait(timeout=240)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["stream"] and summary["words"] == 14 and summary["time_to_first_audio"] > 0
    assert played.stat().st_size >= summary["audio_seconds"] * 24000 * 2 * 0.9  # all of it was played
