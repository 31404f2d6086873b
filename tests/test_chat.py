"""The live chat: LocalEngine's drop accounting, and the whole loop through real PortAudio
devices backed by files (ALSA's file plugin), with a recording, and its terminal UI in tmux."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from moshikit.chat import LatencyWindow, LocalEngine, Recorder, level
from moshikit.conversation import FRAME, Frame


class _SlowConversation:
    """Stands in for a Conversation: echoes each frame back after ``delay`` seconds."""

    batch_size = 1

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.seen: list[float] = []

    def reset(self) -> None:
        self.seen.clear()

    def step(self, pcm):
        time.sleep(self.delay)
        self.seen.append(float(pcm[0]))
        return Frame(np.asarray(pcm, np.float32)[None] * 2, np.array([5]), [f"{len(self.seen)} "],
                     len(self.seen) - 1, self.delay)


def test_engine_drops_oldest_frames_when_behind_and_counts_them():
    conv = _SlowConversation(0.05)
    engine = LocalEngine(conv, max_backlog=2)
    frames = 40
    for i in range(frames):  # 40 frames at once: far faster than 20 steps a second
        engine.send(np.full(FRAME, i, np.float32))
    time.sleep(0.5)
    engine.close()
    got = []
    for audio, text in engine.receive():
        assert audio.shape == (FRAME,) and text
        got.append(float(audio[0]) / 2)
    assert engine.steps == len(got) == len(conv.seen)
    assert engine.steps + engine.dropped_frames == frames  # every frame is stepped or counted as dropped
    assert engine.dropped_frames > 0
    assert got[-1] == frames - 1  # the newest frame is the one kept: Moshi hears the present
    assert engine.latency.percentiles()[0] == pytest.approx(0.05)


def test_engine_cuts_any_block_length_into_frames():
    conv = _SlowConversation(0.0)
    engine = LocalEngine(conv, max_backlog=100)
    pcm = np.arange(FRAME * 3, dtype=np.float32)
    for chunk in np.split(pcm, [100, 2000, 2001, 5000]):
        engine.send(chunk)
    time.sleep(0.2)
    engine.close()
    assert conv.seen == [0.0, float(FRAME), float(2 * FRAME)]
    assert engine.dropped_frames == 0


def test_latency_window_and_level():
    w = LatencyWindow(seconds=0.8)  # 10 steps
    assert w.percentiles() is None
    for t in [1.0] * 20 + [0.01] * 10:
        w.add(t)
    assert w.percentiles() == pytest.approx((0.01, 0.01)) and w.count == 30
    assert level(np.zeros(100, np.float32)) == 0.0 and level(np.ones(100, np.float32)) == 1.0


def test_recorder_aligns_user_and_moshi(tmp_path):
    import soundfile as sf

    rec = Recorder(tmp_path, stamp="t")
    rec.user(np.full(1000, 0.25, np.float32))
    rec.moshi(np.full(300, -0.5, np.float32))
    rec.text(0.01, " hi")
    rec.moshi(np.full(900, -0.5, np.float32))
    rec.close()
    audio, rate = sf.read(rec.wav_path, dtype="float32")
    assert rate == 24000 and audio.shape == (1200, 2)
    assert np.allclose(audio[:1000, 0], 0.25, atol=1e-4) and not audio[1000:, 0].any()
    assert np.allclose(audio[:, 1], -0.5, atol=1e-4)
    doc = json.loads(rec.json_path.read_text())
    assert doc == {"duration": 0.05, "text": "hi", "pieces": [{"time": 0.01, "text": " hi"}]}


# --------------------------------------------------------------------------- real devices

ASOUNDRC = """
pcm.!default {{ type asym; playback.pcm "fileout"; capture.pcm "filein" }}
pcm.fileout {{ type file; slave.pcm "null"; file "/dev/null"; format "raw" }}
pcm.filein  {{ type file; slave.pcm "null"; file "/dev/null"; infile "{inp}"; format "raw" }}
"""
# ALSA's file plugin has no clock: it delivers and takes samples as fast as asked. The
# live loop ignores what a device delivers ahead of the wall clock, so the chat still
# runs in real time; what the speaker played is checked through the recording.

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file-backed ALSA devices")


@pytest.fixture(scope="module")
def home(tmp_path_factory, speech, portaudio):
    home = tmp_path_factory.mktemp("alsa")
    speech[: 24000 * 8].astype("<f4").tofile(home / "in.raw")  # the stream's own format: float32 24 kHz
    (home / ".asoundrc").write_text(ASOUNDRC.format(inp=home / "in.raw"))
    return home


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)


def _env(home):
    return dict(os.environ, HOME=str(home), OMP_NUM_THREADS="1")


@linux_only
def test_live_chat_through_file_backed_portaudio_devices(home, repo, tmp_path):
    rec = tmp_path / "rec"
    r = subprocess.run([sys.executable, "-m", "moshikit", "chat", "-m", str(repo), "--input-device", "filein",
                        "--output-device", "fileout", "--duration", "6", "--record", str(rec), "--json"],
                       env=_env(home), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert 6.0 <= summary["seconds"] < 8.0  # real time, not as fast as the file plugin goes
    assert summary["steps"] >= 3 and summary["latency_p50_ms"] > 0
    import soundfile as sf

    wavs = list(rec.glob("*.wav"))
    assert len(wavs) == 1
    audio, rate = sf.read(wavs[0], dtype="float32")
    assert rate == 24000 and audio.ndim == 2 and audio.shape[1] == 2
    assert 4 * 24000 < audio.shape[0] < 9 * 24000  # about the chat's length, not the spinning device's
    assert np.abs(audio[:, 0]).max() > 0.05  # the user: the file's speech, echo-cancelled
    assert np.count_nonzero(audio[:, 1]) > 1920  # Moshi: its audio reached the speaker
    doc = json.loads(wavs[0].with_suffix(".json").read_text())
    assert set(doc) == {"duration", "text", "pieces"} and doc["duration"] == pytest.approx(audio.shape[0] / 24000,
                                                                                           abs=0.01)
    # Recording from the first frame: the recording's transcript is the chat's whole text. The tiny
    # model's random text head samples pieces other than padding at most steps: 6 s say something.
    assert doc["text"].strip() and doc["text"] == summary["text"]
    assert doc["text"] == "".join(p["text"] for p in doc["pieces"]).strip()
    times = [p["time"] for p in doc["pieces"]]
    assert times == sorted(times) and all(t >= 0 for t in times)


@linux_only
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_terminal_ui_as_seen_in_tmux(home, repo, tmp_path):
    session = f"mk{os.getpid()}"
    cmd = (f"HOME={home} OMP_NUM_THREADS=1 {sys.executable} -m moshikit chat -m {repo} --input-device filein "
           f"--output-device fileout --duration 25 --no-aec; sleep 30")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True,
                   env=dict(os.environ, NO_COLOR="1"))
    try:
        def pane() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True).stdout

        deadline, shown = time.monotonic() + 200, ""
        while time.monotonic() < deadline:
            shown = pane()
            if "p50" in shown:
                break
            time.sleep(0.5)
        assert "moshikit chat" in shown and "q quit · m mute · r record" in shown, shown
        assert "p50" in shown and "p99" in shown and "real-time margin" in shown, shown
        assert "dropped" in shown and "elapsed" in shown and "cancellation off" in shown, shown

        def press(key: str, expect: str) -> str:
            subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
            deadline, now = time.monotonic() + 20, pane()
            while time.monotonic() < deadline and expect not in now:
                time.sleep(0.3)
                now = pane()
            return now

        shown = press("m", "MUTED")
        assert "MUTED" in shown, shown
        shown = press("q", "done")
        assert "moshikit chat — done" in shown, shown
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


@pytest.mark.slow
def test_long_chat_keeps_step_time_and_memory_flat(repo):
    """1200 steps (96 s of conversation, 2.4x the tiny model's 500-step context): the
    context slides, so late steps cost what early ones do and memory stops growing."""
    import resource

    import torch

    from moshikit.backends.base import SamplingConfig
    from moshikit.chat import load_chat

    torch.set_num_threads(1)
    conv = load_chat(str(repo), backend="torch", device="cpu", sampling=SamplingConfig(seed=1))
    conv.reset()
    rng = np.random.default_rng(0)
    times, rss = [], []
    for i in range(1200):
        f = conv.step((rng.standard_normal(FRAME) * 0.05).astype(np.float32))
        times.append(f.seconds)
        if i % 100 == 99:
            with open("/proc/self/statm") as fh:
                rss.append(int(fh.read().split()[1]) * resource.getpagesize())
    early, late = np.median(times[100:400]), np.median(times[-300:])
    assert late < early * 1.3, (early, late)
    assert rss[-1] - rss[5] < 64 << 20, [r >> 20 for r in rss]  # MB


@linux_only
def test_live_chat_with_a_server_reports_what_the_client_measures(home, repo):
    """`chat --url --json` live: frames sent and received and the reply delay (the server's
    own step time cannot be seen from the client), not `steps: 0` and null latencies."""
    from moshikit import serve
    from moshikit.backends.base import SamplingConfig

    conv = serve.load_conversation(str(repo), backend="torch", device="cpu", sampling=SamplingConfig(seed=1))
    with serve.RunningServer(serve.ChatServer(conv, serve.ServeConfig(port=0))) as running:
        r = subprocess.run([sys.executable, "-m", "moshikit", "chat", "--url", running.url, "--input-device",
                            "filein", "--output-device", "fileout", "--duration", "5", "--no-aec", "--json"],
                           env=_env(home), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert "latency_p50_ms" not in summary
    assert 50 <= summary["frames_sent"] <= 70  # 5 s of the microphone is 62.5 frames
    assert 1 <= summary["frames_received"] <= summary["frames_sent"]  # as many as a busy machine's server made
    assert summary["steps"] == summary["frames_received"]
    assert 0 < summary["reply_delay_p50_ms"] <= summary["reply_delay_p99_ms"] < 10000, summary
