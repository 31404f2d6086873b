"""`moshikit translate` end to end on the synthetic Hibiki: one file with named outputs, a tree
with formats and resume, one-line errors, and live through real PortAudio devices backed by files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from moshikit.cli.app import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_one_file_audio_text_stereo_seeded(tmp_path, speech, write_wav, mimi_weights, capsys):
    src = write_wav(tmp_path / "fr.wav", speech[: 24000])
    args = ["translate", str(src), "-o", str(tmp_path / "en.wav"), "-t", str(tmp_path / "en.json"), "--stereo",
            str(tmp_path / "both.wav"), "-m", "synthetic", "--seed", "1", "--cfg", "2", "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["done"], summary["failed"]) == (1, 0) and summary["audio_seconds"] == pytest.approx(1.0)
    audio, rate = sf.read(tmp_path / "en.wav", dtype="float32")
    both, _ = sf.read(tmp_path / "both.wav", dtype="float32")
    doc = json.loads((tmp_path / "en.json").read_text())
    assert rate == 24000 and both.shape == (audio.size, 2) and audio.size > 24000
    assert doc["model"]["cfg"] == 2.0 and doc["model"]["seed"] == 1 and doc["duration"] == audio.size / 24000
    first = (tmp_path / "en.wav").read_bytes()
    code, out, err = run(capsys, *args)  # all outputs there: skipped
    assert code == 0 and json.loads(out)["skipped"] == 1
    code, out, err = run(capsys, *args, "--overwrite")  # the same seed: the same bytes
    assert code == 0 and (tmp_path / "en.wav").read_bytes() == first
    assert not list(tmp_path.glob(".*"))


def test_tree_with_formats_resumes_and_a_bad_file_fails_alone(tmp_path, speech, write_wav, mimi_weights, capsys):
    write_wav(tmp_path / "talks/a.wav", speech[: 12000])
    (tmp_path / "talks/sub").mkdir()
    sf.write(tmp_path / "talks/sub/b.flac", speech[: 22050], 22050)
    (tmp_path / "talks/bad.wav").write_bytes(b"not audio")
    args = ["translate", str(tmp_path / "talks"), "-o", str(tmp_path / "english"), "-f", "wav,flac,srt", "-m",
            "synthetic", "--json"]
    code, out, err = run(capsys, *args)
    assert code == 1  # one input failed
    summary = json.loads(out)
    assert (summary["done"], summary["failed"]) == (2, 1)
    assert len([line for line in err.splitlines() if "bad.wav" in line]) == 1 and "Traceback" not in err
    names = sorted(p.relative_to(tmp_path / "english").as_posix() for p in (tmp_path / "english").rglob("*.*"))
    assert names == ["a.flac", "a.srt", "a.wav", "sub/b.flac", "sub/b.srt", "sub/b.wav"]
    assert sf.info(tmp_path / "english/sub/b.wav").samplerate == 24000
    np.testing.assert_allclose(sf.read(tmp_path / "english/a.flac")[0], sf.read(tmp_path / "english/a.wav")[0], atol=1e-4)
    code, out, err = run(capsys, *args)
    assert json.loads(out)["skipped"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--mic"], "give --mic --play"),
    (["x.wav", "--mic", "--play"], "not both"),
    ([], "nothing to translate"),
    (["DIR", "-t", "x.json"], "give a single input file"),
    (["FILE", "-t", "x.mp4"], "-t writes json"),
    (["FILE", "-f", "wav,docx"], "unknown output format 'docx'"),
])
def test_usage_errors_are_one_line(tmp_path, capsys, argv, message, write_wav):
    write_wav(tmp_path / "f.wav", np.zeros(2400, np.float32))
    argv = [str(tmp_path) if a == "DIR" else str(tmp_path / "f.wav") if a == "FILE" else a for a in argv]
    code, out, err = run(capsys, "translate", *argv, "-m", "synthetic")
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_chat_checkpoint_is_refused(tmp_path, capsys, write_wav, mimi_weights):
    from moshikit.synthetic.lm import write_moshi_repo

    repo = write_moshi_repo(tmp_path / "moshiko", mimi_path=mimi_weights)
    src = write_wav(tmp_path / "a.wav", np.zeros(24000, np.float32))
    code, out, err = run(capsys, "translate", str(src), "-m", str(repo))
    assert code == 1 and "is not a Hibiki translation checkpoint" in err and "hint: use --model hibiki" in err


ASOUNDRC = """
pcm.!default {{ type asym; playback.pcm "fileout"; capture.pcm "filein" }}
pcm.fileout {{ type file; slave.pcm "null"; file "{out}"; format "raw" }}
pcm.filein  {{ type file; slave.pcm "null"; file "/dev/null"; infile "{inp}"; format "raw" }}
"""


@pytest.mark.slow  # a subprocess that loads, warms up and runs 3 s live: ~25 s on 2 loaded cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file-backed ALSA devices")
def test_live_mic_and_play_through_file_backed_devices(tmp_path, speech, mimi_weights, portaudio):
    speech[: 24000 * 4].astype("<f4").tofile(tmp_path / "in.raw")
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(out=tmp_path / "out.raw", inp=tmp_path / "in.raw"))
    env = dict(os.environ, HOME=str(tmp_path), OMP_NUM_THREADS="1")  # ALSA reads ~/.asoundrc
    r = subprocess.run([sys.executable, "-m", "moshikit", "translate", "--mic", "--play", "--input-device", "filein",
                        "--output-device", "fileout", "--duration", "3", "-m", "synthetic", "--json"],
                       env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
    live = json.loads(r.stdout)
    assert live["steps"] > 5 and live["seconds"] == pytest.approx(3.0, abs=0.5)
    assert live["text"] and all("time" in p for p in live["pieces"])  # the live text, as produced
    assert (tmp_path / "out.raw").stat().st_size > 0  # the translation was played
