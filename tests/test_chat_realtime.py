"""The live chat in real time, on a sound card with a clock: PulseAudio's null sinks.

ALSA's file devices (tests/test_chat.py) have no clock, so they test the loop's mechanics
only. Here a private PulseAudio server plays speech into a null sink whose monitor is the
microphone, and the speaker is another null sink: both run at the pace of real hardware.
System packages: pulseaudio pulseaudio-utils libasound2-plugins (and libportaudio2); the server is
tests/pulsecard.py's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pulsecard import pulse  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)


@pytest.mark.slow
def test_live_chat_keeps_real_time_on_a_clocked_sound_card(pulse, repo):
    """After the warm-up (done before the devices open) no microphone frame is dropped and
    a step's p99 stays under the 80 ms a frame lasts (the tiny synthetic model)."""
    env, play = pulse
    listed = subprocess.run([sys.executable, "-m", "moshikit", "chat", "--list-devices", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "pulse" in [d["name"] for d in json.loads(listed.stdout)], listed.stderr
    play()
    seconds = 12
    r = subprocess.run([sys.executable, "-m", "moshikit", "chat", "-m", str(repo), "--duration", str(seconds),
                        "--no-aec", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    frames = seconds / 0.08
    assert s["dropped_in"] == 0, s
    assert s["steps"] >= frames - 5, s  # every frame the microphone gave was stepped
    assert s["latency_p99_ms"] < 80, s
    assert s["text"], s  # Moshi spoke (text pieces came back)
