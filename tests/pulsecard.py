"""A clocked fake sound card for live tests: a private PulseAudio server whose null sinks run at the
pace of real hardware (ALSA's file devices have no clock). The microphone is the monitor of one
null sink (``play`` sends speech into it), the speaker another. Use the ``pulse`` fixture by
importing it into a test module (``from pulsecard import pulse``).
System packages: pulseaudio pulseaudio-utils libasound2-plugins (and libportaudio2).
"""

from __future__ import annotations

import glob
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

        def play(times: int = 3, pcm=None) -> None:
            """Play the speech sample (or ``pcm``, 24 kHz) into the microphone ``times`` times."""
            clip = wav if pcm is None else write_wav(root / f"clip{len(players)}.wav", pcm)
            loop = f"for i in $(seq {times}); do paplay --device=micsink '{clip}'; done"
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
