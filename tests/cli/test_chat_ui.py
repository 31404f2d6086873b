"""The live chat's panel in a real terminal (tmux): drawn once, with other messages above it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")

# Messages that reach stderr while the panel is up, each the way real ones do: a print
# (warnings, moshikit's own lines), a logging handler bound to the stream before the panel
# started (torch's "No CUDA runtime is found"), and a C library writing to descriptor 2
# (ALSA's "underrun occurred").
SCRIPT = textwrap.dedent("""
    import logging, os, sys, time
    from moshikit.chat import LiveState
    from moshikit.cli.chat_ui import RichUI
    from moshikit.cli.output import Out

    log = logging.getLogger("lib")
    log.addHandler(logging.StreamHandler())
    log.propagate = False
    with RichUI(Out().err) as ui:
        time.sleep(0.4)
        print("a printed message", file=sys.stderr)
        log.warning("a logged message")
        os.write(2, b"ALSA lib pcm.c:8570:(snd_pcm_recover) underrun occurred\\n")
        time.sleep(0.4)
        state = LiveState(steps=3)
        ui.update(state)
        time.sleep(0.4)
        state.done = True
        ui.update(state)
    print("after the panel", file=sys.stderr)
""")


def test_the_panel_is_drawn_once_when_messages_come_while_it_is_live(tmp_path):
    (tmp_path / "ui.py").write_text(SCRIPT)
    session = f"mkui{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # the terminal's own size
    env.update(NO_COLOR="1", PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "40",
                    f"{sys.executable} {tmp_path / 'ui.py'}; echo EXITED $?; sleep 30"], check=True, env=env)
    try:
        deadline, shown = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "EXITED" not in shown:
            time.sleep(0.3)
            shown = subprocess.run(["tmux", "capture-pane", "-p", "-S", "-", "-t", session], capture_output=True,
                                   text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert "EXITED 0" in shown, shown
    assert sum("╭" in line for line in lines) == 1, shown  # one panel, not one per message
    top = next(i for i, line in enumerate(lines) if "╭" in line)
    assert "moshikit chat — done" in lines[top], shown
    before = lines[:top]
    assert before == ["a printed message", "a logged message",
                      "ALSA lib pcm.c:8570:(snd_pcm_recover) underrun occurred"], shown
    assert lines[lines.index("after the panel") - 1].startswith("╰"), shown
