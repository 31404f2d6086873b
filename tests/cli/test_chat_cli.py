"""`moshikit chat`: offline chat over a file (deterministic under a seed), option checks,
and the refusal to run Moshi 7B live on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from moshikit.cli.app import main


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)


@pytest.fixture(scope="module")
def user_wav(tmp_path_factory, speech, write_wav):
    return write_wav(tmp_path_factory.mktemp("chat") / "user.wav", speech[: 24000 * 2])


def _run(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_offline_chat_is_deterministic_under_a_seed(repo, user_wav, tmp_path, capsys):
    import soundfile as sf

    outs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        wav, tr = tmp_path / f"{name}.wav", tmp_path / f"{name}.json"
        code, out, err = _run(capsys, "chat", "-m", str(repo), "--input", str(user_wav), "--output", str(wav),
                              "--transcript", str(tr), "--seed", str(seed))
        assert code == 0, err
        audio, rate = sf.read(wav, dtype="float32")
        doc = json.loads(tr.read_text())
        outs.append((wav.read_bytes(), tr.read_text(), audio, doc, out))
        assert rate == 24000
        # Input (2 s = 25 frames) plus the LM's delay (1 frame) comes out.
        assert audio.size == 26 * 1920
        assert np.count_nonzero(audio[1920:]) > 20000  # Moshi's audio after its delay frame
        assert not audio[:1920].any()
        assert doc["duration"] == pytest.approx(26 * 0.08)
        assert doc["pieces"] and doc["text"] == "".join(p["text"] for p in doc["pieces"]).strip()
        times = [p["time"] for p in doc["pieces"]]
        assert times == sorted(times) and times[0] >= 0.08
        assert out.strip() == doc["text"]  # the text streamed on stdout as it came
    assert outs[0][0] == outs[1][0] and outs[0][1] == outs[1][1]  # same seed: same bytes
    assert outs[0][1] != outs[2][1] or outs[0][0] != outs[2][0]  # another seed: another chat


def test_offline_chat_json_summary(repo, user_wav, tmp_path, capsys):
    code, out, err = _run(capsys, "chat", "-m", str(repo), "-i", str(user_wav), "-o", str(tmp_path / "r.flac"),
                          "--temp", "0", "--temp-text", "0", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["output"].endswith("r.flac") and data["duration"] == pytest.approx(2.08) and data["pieces"]
    assert (tmp_path / "r.flac").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--input", "x.wav"], "--input needs --output"),
    (["--output", "x.wav"], "--output and --transcript go with --input"),
    (["--url", "ws://h:1", "--seed", "3"], "--seed choose a local model"),
    (["--insecure"], "--insecure goes with --url"),
    (["--input", "x.wav", "--output", "y.wav", "--record", "d"], "--record go with a live chat"),
])
def test_usage_errors(capsys, argv, message):
    code, _, err = _run(capsys, "chat", *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_live_7b_on_a_cpu_is_refused_plainly(capsys, monkeypatch):
    from moshikit import platform

    monkeypatch.setattr(platform, "default_lm", lambda plat=None: platform.Choice("torch", "cpu", "test"))
    code, _, err = _run(capsys, "chat", "--backend", "torch", "--device", "cpu")
    assert code == 1
    assert "Moshi 7B cannot run in real time on a CPU" in err and "hint:" in err
    code, _, err = _run(capsys, "chat", "-m", "moshika", "--device", "cpu")
    assert code == 1 and "cannot run in real time on a CPU" in err


def test_missing_input_file_is_one_line(repo, tmp_path, capsys):
    code, _, err = _run(capsys, "chat", "-m", str(repo), "-i", str(tmp_path / "nope.wav"), "-o",
                        str(tmp_path / "o.wav"))
    assert code == 1 and "no such file" in err and "Traceback" not in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ALSA")
def test_live_chat_without_a_sound_card_is_one_line_before_any_model(tmp_path, portaudio):
    """Real PortAudio over an ALSA that has no devices (an empty ~/.asoundrc, no sound card,
    no PulseAudio server reachable): exit 2, one line, and no checkpoint was even built."""
    (tmp_path / ".asoundrc").write_text("")
    (tmp_path / "run").mkdir()
    env = dict(os.environ, HOME=str(tmp_path), MOSHIKIT_CACHE=str(tmp_path / "cache"),
               XDG_RUNTIME_DIR=str(tmp_path / "run"), PULSE_SERVER="unix:/nonexistent")
    listed = subprocess.run([sys.executable, "-m", "moshikit", "chat", "--list-devices", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    if json.loads(listed.stdout):
        pytest.skip("this machine has sound devices even with an empty ALSA configuration")
    r = subprocess.run([sys.executable, "-m", "moshikit", "chat", "-m", "synthetic"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: no audio input device found on this machine; chat over files with -i FILE -o FILE, "
        "talk to a server with --url, or see --list-devices"]
    assert not (tmp_path / "cache").exists()  # the synthetic checkpoint was not built: no model work at all
