"""What a live chat shows: a Rich panel on a terminal, plain lines elsewhere."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator


def _meter(value: float, width: int = 24) -> str:
    n = int(round(max(0.0, min(1.0, value)) * width))
    return "█" * n + "·" * (width - n)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def status_line(state) -> str:
    """One line of numbers (also what the plain output prints)."""
    parts = [_clock(state.elapsed)]
    if state.latency is not None:
        p50, p99 = state.latency
        parts.append(f"step p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms")
        parts.append(f"margin {state.margin * 100:.0f}%")
    if state.reply_delay is not None:
        parts.append(f"reply delay p50 {state.reply_delay[0] * 1000:.0f} ms p99 {state.reply_delay[1] * 1000:.0f} ms")
    if state.frames_sent is not None:
        parts.append(f"frames sent {state.frames_sent} received {state.frames_received}")
    parts.append(f"dropped {state.dropped_in}")
    parts.append(f"skipped {state.skipped_out}")
    parts.append(f"late {state.late_out}")
    return " | ".join(parts)


class RichUI:
    """A live panel on stderr; keys read from the terminal in cbreak mode.

    While the panel is up, whatever else reaches stderr (a C library's message such as ALSA's
    "underrun occurred", a logging handler bound to the old stream, a warning) is printed
    above the panel: the panel draws to a copy of the terminal's descriptor and descriptor 2
    becomes a pipe read line by line. Written straight to the terminal, such a line moved the
    cursor under the panel and the next refresh drew a second panel below the first.
    """

    def __init__(self, console, render=None) -> None:
        self.console = console
        self.render = render or self._render  # state (None before the first) -> a Rich renderable
        self._fd = None
        self._saved = None
        self._pipe: int | None = None
        self._saved_err: int | None = None
        self._pump = None
        self._live = None

    def _take_stderr(self):
        """A console on a copy of the terminal's stderr, and fd 2 turned into a pipe (None when
        stderr has no descriptor to take)."""
        import threading

        from rich.console import Console

        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return None
        term = os.fdopen(saved, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                         errors="replace", closefd=True)
        console = Console(file=term, highlight=False, soft_wrap=True, force_terminal=True,
                          no_color=self.console.no_color, color_system=self.console.color_system)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._pipe, self._saved_err = r, saved
        self._pump = threading.Thread(target=self._forward, args=(r,), name="moshikit-stderr", daemon=True)
        return console

    def _forward(self, r: int) -> None:
        from rich.text import Text

        rest = b""
        while True:
            try:
                data = os.read(r, 4096)
            except OSError:
                break
            if not data:
                break
            *lines, rest = (rest + data).split(b"\n")
            for line in lines:
                self._live.console.print(Text(line.decode(errors="replace")))
        if rest:
            self._live.console.print(Text(rest.decode(errors="replace")))

    def _give_back_stderr(self) -> None:
        if self._saved_err is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved_err, 2)  # closes the pipe's write end: the forwarder reads to the end
        self._pump.join(timeout=2.0)
        os.close(self._pipe)
        self._saved_err = self._pipe = None

    def __enter__(self) -> "RichUI":
        from rich.live import Live

        if sys.stdin.isatty():
            import termios
            import tty

            self._fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        console = self._take_stderr() or self.console
        self.console = console
        self._live = Live(self.render(None), console=console, refresh_per_second=10, transient=False)
        self._live.__enter__()
        if self._pump is not None:
            self._pump.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._give_back_stderr()
        finally:
            self._live.__exit__(*exc)
            if self.console.file is not sys.stderr and self._pump is not None:
                self.console.file.close()
            if self._saved is not None:
                import termios

                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def keys(self) -> str:
        if self._fd is None:
            return ""
        import select

        got = ""
        while select.select([self._fd], [], [], 0)[0]:
            data = os.read(self._fd, 64)
            if not data:
                break
            got += data.decode(errors="ignore")
        return got

    def text(self, piece: str) -> None:
        pass

    def update(self, state) -> None:
        self._live.update(self.render(state))

    def _render(self, state):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        if state is None:
            return Panel(Text("starting the audio devices..."), title="moshikit chat")
        width = max(20, (self.console.width or 80) - 6)
        said = state.text.replace("\n", " ")
        tail = said[-(width * 4):]
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        mic = _meter(state.input_level) + ("  MUTED" if state.muted else "")
        grid.add_row("you", mic)
        grid.add_row("Moshi", _meter(state.output_level))
        if state.latency is not None:
            p50, p99 = state.latency
            grid.add_row("step", f"p50 {p50 * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms   "
                                 f"real-time margin {state.margin * 100:.0f}%")
        elif state.frames_sent is not None:  # a server: its step time is not seen from here
            delay = "-" if state.reply_delay is None else (
                f"reply delay p50 {state.reply_delay[0] * 1000:.0f} ms   p99 {state.reply_delay[1] * 1000:.0f} ms   ")
            grid.add_row("server", f"{delay}frames sent {state.frames_sent}   received {state.frames_received}")
        else:
            grid.add_row("step", "-")
        grid.add_row("frames", f"dropped {state.dropped_in}   skipped {state.skipped_out}   late {state.late_out}")
        grid.add_row("elapsed", _clock(state.elapsed))
        grid.add_row("echo", f"cancellation {state.aec}")
        if state.recording:
            grid.add_row("REC", state.recording)
        keys = Text("q quit · m mute · r record", style="dim")
        body = Group(Text(tail or "…", style="cyan"), Text(""), grid, Text(""), keys)
        title = "moshikit chat" + (" — done" if state.done else "")
        return Panel(body, title=title, subtitle=f"{state.backend} · {state.devices}")


class PlainUI:
    """Moshi's text on stdout as it comes; a status line on stderr every few seconds."""

    def __init__(self, out, every: float = 5.0, *, show_text: bool = True) -> None:
        self.out = out
        self.every = every
        self.show_text = show_text
        self._last = time.monotonic()
        self._wrote = False
        self._rec = None

    def __enter__(self) -> "PlainUI":
        return self

    def __exit__(self, *exc) -> None:
        if self._wrote:
            self.out.env.stdout.write("\n")
            self.out.env.stdout.flush()

    def keys(self) -> str:
        return ""

    def text(self, piece: str) -> None:
        if not self.show_text:
            return
        self.out.env.stdout.write(piece)
        self.out.env.stdout.flush()
        self._wrote = True

    def update(self, state) -> None:
        now = time.monotonic()
        if state.recording != self._rec:
            self._rec = state.recording
            if state.recording:
                self.out.status(f"recording to {state.recording}")
        if state.done or now - self._last >= self.every:
            self._last = now
            self.out.status(("done " if state.done else "") + status_line(state))


@contextmanager
def ui_for(out, *, plain: bool = False) -> Iterator[object]:
    """The Rich panel when a person watches stderr, else plain lines."""
    if not plain and not out.json_mode and out.err.is_terminal:
        with RichUI(out.err) as ui:
            yield ui
    else:
        with PlainUI(out, show_text=not out.json_mode) as ui:
            yield ui
