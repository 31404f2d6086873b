"""moshikit speak -b pocket end to end on the synthetic Pocket TTS checkpoint (in-process, and one
subprocess for text arriving on stdin over time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

try:  # moshikit's import, which leaves the process's torch thread count alone (pocket_tts sets 1)
    from moshikit.tts.pocket import import_pocket_tts

    import_pocket_tts()
    import tokenizers  # noqa: F401
except ImportError:
    pytest.skip("pocket-tts is not installed", allow_module_level=True)

from moshikit.cli.app import main  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def pocket_model(_isolated_env):
    import torch

    from moshikit.tts import load_tts

    before = torch.get_num_threads()
    yield load_tts("synthetic", backend="pocket")  # built once; speak reuses it in-process
    torch.set_num_threads(before)


def run(capsys, *argv):
    code = main(["speak", "-b", "pocket", "-m", "synthetic", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_to_wav_json_and_seed(capsys, tmp_path):
    import soundfile as sf

    wav = tmp_path / "hello.wav"
    code, out, err = run(capsys, "Hello there. How are you?", "-o", str(wav), "--seed", "1", "--json")
    assert code == 0, err
    summary = json.loads(out)
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 24000 and audio.size / 24000 == pytest.approx(summary["audio_seconds"], abs=1e-3)
    assert summary["model"] == "synthetic" and summary["voices"] == ["alba"] and summary["words"] == 0
    assert summary["characters"] == 24 and summary["time_to_first_audio"] > 0 and summary["complete"]
    again = tmp_path / "again.wav"
    code, _, err = run(capsys, "Hello there. How are you?", "-o", str(again), "--seed", "1")
    assert code == 0, err
    np.testing.assert_array_equal(sf.read(again, dtype="float32")[0], audio)
    assert "0.00x" not in err and "spoke 24 characters" in err


def test_voice_sample_and_list(capsys, tmp_path, speech, write_wav):
    import soundfile as sf

    me = write_wav(tmp_path / "me.wav", speech[10 * 24000:13 * 24000])
    out_me, out_alba = tmp_path / "me_says.wav", tmp_path / "alba_says.wav"
    assert run(capsys, "Hello there.", "-o", str(out_me), "--voice", str(me), "--seed", "2")[0] == 0
    assert run(capsys, "Hello there.", "-o", str(out_alba), "--voice", "alba", "--seed", "2")[0] == 0
    a, b = sf.read(out_me)[0], sf.read(out_alba)[0]
    assert a.size == b.size and not np.array_equal(a, b)
    code, out, err = run(capsys, "--list-voices", "--json")
    assert code == 0 and json.loads(out)["voices"] == ["alba", "javert", "marius"]


@pytest.mark.parametrize("args, message", [
    (["--words", "w.json"], "--words: the pocket backend has no word timings"),
    (["--cfg", "3"], "--cfg 3: Pocket TTS has no classifier-free guidance"),
    (["--speed", "1.5"], "--speed: Pocket TTS has no pace control"),
    (["--voice", "albaa"], "unknown voice 'albaa'"),
])
def test_one_line_errors(capsys, tmp_path, args, message):
    os.chdir(tmp_path)
    code, out, err = run(capsys, "Hello there.", "-o", str(tmp_path / "x.wav"), *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "w.json").exists()


def test_mimi_dialogue_and_not_audio_voice(capsys, tmp_path):
    code, _, err = run(capsys, "Hello there.", "-o", str(tmp_path / "x.mimi"))
    assert code == 2 and "the pocket backend makes no Mimi tokens" in err
    talk = tmp_path / "talk.jsonl"
    talk.write_text('{"speaker": "A", "text": "Hi."}\n{"speaker": "B", "text": "Hello."}\n')
    code, _, err = run(capsys, "--dialogue", str(talk), "-o", str(tmp_path / "t.wav"))
    assert code == 2 and "speaks with one voice" in err
    fake = tmp_path / "voice.wav"
    fake.write_text("hello")
    code, _, err = run(capsys, "Hello there.", "-o", str(tmp_path / "y.wav"), "--voice", str(fake))
    assert code == 2 and "not an audio file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.jsonl", "voice.wav"]


def test_model_name_implies_the_backend_and_torch_refuses_it(capsys, tmp_path):
    code = main(["speak", "Hello.", "-o", str(tmp_path / "x.wav"), "-b", "torch", "--model", "pocket"])
    _, err = capsys.readouterr()
    assert code == 2 and "--model pocket runs on the pocket backend, not torch" in err
    code = main(["speak", "--list-voices", "--model", "pocket-tts", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and "alba" in json.loads(out)["voices"] and len(json.loads(out)["voices"]) == 27


def test_stream_from_stdin_speaks_before_the_input_ends(tmp_path):
    """The first sentence is written (to the hidden partial file) while stdin is still open."""
    wav = tmp_path / "out.wav"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "moshikit", "speak", "-", "--stream", "-b", "pocket", "-m",
                             "synthetic", "-o", str(wav), "--json", "--seed", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        for word in "The first sentence arrives. The".split():
            proc.stdin.write((word + " ").encode())
            proc.stdin.flush()
            time.sleep(0.1)
        deadline = time.monotonic() + 120

        def partial() -> int:
            return sum(p.stat().st_size for p in tmp_path.iterdir() if p.name != "out.wav")

        while time.monotonic() < deadline and partial() < 24000:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        assert partial() >= 24000 and not wav.exists()  # audio out, the input still open
        proc.stdin.write(b"second one ends here.\n")
        proc.stdin.close()
        proc.wait(timeout=120)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["stream"] and summary["characters"] > 40 and summary["time_to_first_audio"] > 0
    assert wav.stat().st_size > summary["audio_seconds"] * 24000 * 2 * 0.9


def test_open_weights_are_reported_and_cloning_refused(capsys, tmp_path, monkeypatch, speech, write_wav,
                                                       pocket_model):
    """The gated weights could not be had: every run says so, and a voice sample is one line."""
    from dataclasses import replace

    from moshikit.tts import pocket as P

    files = replace(pocket_model.files, cloning=False,
                    no_cloning="kyutai/pocket-tts is gated: accept its conditions on the hub and set HF_TOKEN")
    monkeypatch.setattr(P, "load_pocket", lambda *a, **k: P.PocketModel(pocket_model.tts, files))
    code, out, err = run(capsys, "Hello there.", "-o", str(tmp_path / "a.wav"))
    assert code == 0 and "no voice cloning: kyutai/pocket-tts is gated" in err
    code, out, err = run(capsys, "Hello there.", "-o", str(tmp_path / "b.wav"), "--json")
    assert code == 0 and json.loads(out)["voice_cloning"] is False
    me = write_wav(tmp_path / "me.wav", speech[:24000])
    code, out, err = run(capsys, "Hello there.", "-o", str(tmp_path / "c.wav"), "--voice", str(me))
    assert code == 2 and "voice cloning needs the gated weights of kyutai/pocket-tts" in err
    assert "huggingface.co/kyutai/pocket-tts" in err and "hf auth login" in err
    assert not (tmp_path / "c.wav").exists()


def test_directory_of_texts(capsys, tmp_path):
    """A tree of .txt spoken file by file (Pocket TTS does not batch); a rerun skips finished files."""
    import soundfile as sf

    src = tmp_path / "texts"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("Hello there.")
    (src / "sub" / "b.txt").write_text("How are you?")
    code, out, err = run(capsys, str(src), "-o", str(tmp_path / "audio"), "--seed", "0")
    assert code in (0, None), err
    a, b = tmp_path / "audio" / "a.wav", tmp_path / "audio" / "sub" / "b.wav"
    assert sf.info(a).samplerate == 24000 and sf.info(b).frames > 0
    before = a.stat().st_mtime_ns
    code, out, err = run(capsys, str(src), "-o", str(tmp_path / "audio"), "--seed", "0")
    assert code in (0, None), err
    assert a.stat().st_mtime_ns == before
