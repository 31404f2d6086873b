"""The live chat in real time, on a sound card with a clock: PulseAudio's null sinks.

ALSA's file devices (tests/test_chat.py) have no clock, so they test the loop's mechanics
only. Here a private PulseAudio server plays speech into a null sink whose monitor is the
microphone, and the speaker is another null sink: both run at the pace of real hardware.
System packages: pulseaudio pulseaudio-utils libasound2-plugins (and libportaudio2).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

PACKAGES = "pulseaudio pulseaudio-utils libasound2-plugins"


def _missing() -> str | None:
    tools = [t for t in ("pulseaudio", "pactl", "paplay") if shutil.which(t) is None]
    if tools:
        return f"{', '.join(tools)} not installed (apt-get install {PACKAGES})"
    if not glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so") and \
            not glob.glob("/usr/lib/alsa-lib/libasound_module_pcm_pulse.so"):
        return "ALSA's pulse plugin not installed (apt-get install libasound2-plugins)"
    return None


@pytest.fixture(scope="module")
def pulse(tmp_path_factory, speech, write_wav, portaudio):
    """A private PulseAudio server with a null-sink speaker and microphone; yields the
    environment that reaches it and a function that starts playing speech into the microphone."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PulseAudio null sinks: Linux")
    why = _missing()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("pulse")
    run = root / "run"
    run.mkdir(mode=0o700)
    (root / ".asoundrc").write_text("pcm.!default { type pulse }\nctl.!default { type pulse }\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PULSE_SERVER", "ALSA_CONFIG_PATH")}
    env.update(HOME=str(root), XDG_RUNTIME_DIR=str(run))
    started = subprocess.run(
        ["pulseaudio", "-D", "-n", "--exit-idle-time=-1", "--load=module-null-sink sink_name=spk",
         "--load=module-null-sink sink_name=micsink", "--load=module-native-protocol-unix",
         "--load=module-remap-source source_name=mic master=micsink.monitor"],
        env=env, capture_output=True, text=True, timeout=30)
    if started.returncode != 0:
        pytest.fail(f"pulseaudio did not start: {started.stderr.strip()[-500:]}")
    try:
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(["pactl", "set-default-sink", "spk"], env=env, check=True, timeout=10)
        subprocess.run(["pactl", "set-default-source", "mic"], env=env, check=True, timeout=10)
        wav = write_wav(root / "speech.wav", speech)
        players: list[subprocess.Popen] = []

        def play(times: int = 3) -> None:
            loop = f"for i in $(seq {times}); do paplay --device=micsink '{wav}'; done"
            players.append(subprocess.Popen(["sh", "-c", loop], env=env, start_new_session=True))

        yield env, play
        for p in players:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=30)


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
