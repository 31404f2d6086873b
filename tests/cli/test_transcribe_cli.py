"""`moshikit transcribe` end to end: outputs per input and format, resume, bad input, the
microphone through a real PortAudio device backed by a file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from moshikit.cli.app import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def tree(tmp_path, speech, write_wav, mimi_weights):
    write_wav(tmp_path / "in/a.wav", speech[: 24000 * 2])
    (tmp_path / "in/sub").mkdir()
    sf.write(tmp_path / "in/sub/b.flac", speech[: 44100 * 3], 44100)
    return tmp_path


def test_tree_to_every_format_then_resume(tree, capsys):
    args = ["transcribe", str(tree / "in"), "-o", str(tree / "out"), "-m", "synthetic", "-f", "all", "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["done"], summary["failed"]) == (2, 0)
    assert summary["audio_seconds"] == pytest.approx(5.0, abs=0.01)
    names = sorted(p.relative_to(tree / "out").as_posix() for p in (tree / "out").rglob("*.*"))
    assert names == [f"{stem}.{ext}" for stem in ("a", "sub/b") for ext in ("json", "srt", "tsv", "txt", "vtt")]
    data = json.loads((tree / "out/sub/b.json").read_text())
    assert data["duration"] == pytest.approx(3.0, abs=1e-3) and data["model"]["audio_delay_seconds"] == 0.5
    assert data["words"] and all(0 <= w["start"] <= w["end"] <= 3.0 for w in data["words"])
    assert (tree / "out/sub/b.txt").read_text().split() == [w["word"] for w in data["words"]]
    # Nothing half written, and a rerun does nothing.
    assert not list((tree / "out").rglob(".*partial*"))
    code, out, err = run(capsys, *args)
    assert code == 0 and json.loads(out)["skipped"] == 2


def test_single_input_streams_text_and_prints_to_stdout(tree, capsys):
    import srt
    code, out, err = run(capsys, "transcribe", str(tree / "in/a.wav"), "-m", "synthetic", "-o", "-", "-f", "srt")
    assert code == 0, err
    subs = list(srt.parse(out))
    assert subs and subs[0].start.total_seconds() >= 0
    assert not (tree / "in/a.srt").exists()
    # Without -o the transcript goes beside the input, and the text streams to stderr.
    code, out, err = run(capsys, "transcribe", str(tree / "in/a.wav"), "-m", "synthetic")
    assert code == 0
    text = (tree / "in/a.txt").read_text()
    assert " ".join(text.split()) in " ".join(err.split())


def test_bad_inputs_fail_alone_with_one_line(tree, capsys):
    (tree / "in/broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    code, out, err = run(capsys, "transcribe", str(tree / "in"), str(tree / "missing.wav"), "-o",
                         str(tree / "out"), "-m", "synthetic", "--json")
    assert code == 1
    summary = json.loads(out)
    assert (summary["done"], summary["failed"]) == (2, 2)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert any("broken.wav" in line for line in lines) and any("missing.wav" in line for line in lines)
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, code, message", [
    (["-f", "xml"], 2, "unknown transcript format 'xml'"),
    (["--mic"], 2, "give audio files or --mic, not both"),
    (["--duration", "3"], 2, "--duration, --save and --input-device go with --mic"),
    (["-o", "-", "-f", "srt,vtt"], 2, "-o - prints one transcript"),
])
def test_usage_errors(tree, capsys, argv, code, message):
    got, out, err = run(capsys, "transcribe", str(tree / "in/a.wav"), "-m", "synthetic", *argv)
    assert got == code and message in err and "Traceback" not in err


def test_a_chat_checkpoint_is_refused(tmp_path, capsys, mimi_weights):
    from moshikit.synthetic.lm import write_moshi_repo

    repo = write_moshi_repo(tmp_path / "moshiko", mimi_path=mimi_weights)
    (tmp_path / "a.wav").write_bytes(b"")
    sf.write(tmp_path / "a.wav", np.zeros(24000, np.float32), 24000)
    code, out, err = run(capsys, "transcribe", str(tmp_path / "a.wav"), "-m", str(repo))
    assert code == 1
    assert "is not a speech-to-text checkpoint" in err and "hint: use --model stt" in err


ASOUNDRC = """
pcm.!default {{ type asym; playback.pcm "fileout"; capture.pcm "filein" }}
pcm.fileout {{ type file; slave.pcm "null"; file "{out}"; format "raw" }}
pcm.filein  {{ type file; slave.pcm "null"; file "/dev/null"; infile "{inp}"; format "raw" }}
"""


def _moshikit(home, *argv):
    env = dict(os.environ, HOME=str(home))  # ALSA reads ~/.asoundrc
    return subprocess.run([sys.executable, "-m", "moshikit", *argv], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file-backed ALSA devices")
def test_mic_through_a_file_backed_portaudio_device(tmp_path, speech, mimi_weights, portaudio):
    heard = speech[: 24000 * 3].astype("<f4")
    heard.tofile(tmp_path / "in.raw")  # the capture device reads the stream's own format
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(out=tmp_path / "out.raw", inp=tmp_path / "in.raw"))
    listed = _moshikit(tmp_path, "transcribe", "--list-devices", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "filein" in [d["name"] for d in json.loads(listed.stdout)]

    r = _moshikit(tmp_path, "transcribe", "--mic", "--input-device", "filein", "--duration", "2.5", "-m",
                  "synthetic", "--save", str(tmp_path / "rec"), "-f", "json,srt", "--json")
    assert r.returncode == 0, r.stderr
    live = json.loads(r.stdout)
    assert live["duration"] == pytest.approx(2.5) and live["words"]
    # What was transcribed is what the device delivered, in order, nothing dropped.
    saved, rate = sf.read(tmp_path / "rec/mic.wav", dtype="float32")
    assert rate == 24000 and saved.size == 60000
    assert np.abs(saved - heard[:60000]).max() < 1e-4  # 16-bit wav
    assert json.loads((tmp_path / "rec/mic.json").read_text())["words"] == live["words"]
    assert (tmp_path / "rec/mic.srt").read_text().startswith("1\n")

    r = _moshikit(tmp_path, "transcribe", "--mic", "--input-device", "no-such-mic", "-m", "synthetic")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[0] == "error: no input device matches 'no-such-mic'"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ALSA")
def test_mic_without_any_input_device(tmp_path, mimi_weights, portaudio):
    listed = _moshikit(tmp_path, "transcribe", "--list-devices", "--json")
    if any(d["inputs"] for d in json.loads(listed.stdout or "[]") if d["name"] != "default"):
        pytest.skip("this machine has a capture device")
    r = _moshikit(tmp_path, "transcribe", "--mic", "-m", "synthetic")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == ["error: no audio input device found on this machine; "
                                             "transcribe audio files instead, or see --list-devices"]
