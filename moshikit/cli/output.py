"""The one place the CLI writes: results to stdout, messages and progress to stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Env:
    """What one run of the CLI writes to and reads: its streams, its environment variables and
    whether ``--debug`` is on. ``main(argv, env)`` takes one, so a test runs the CLI in-process
    with its own streams and nothing global to reset; by default the process's own."""

    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    debug: bool | None = None  # None: from $MOSHIKIT_DEBUG

    def __post_init__(self) -> None:
        if self.debug is None:
            self.debug = bool(self.environ.get("MOSHIKIT_DEBUG"))


_CURRENT: ContextVar[Env | None] = ContextVar("moshikit_cli_env", default=None)


def current_env() -> Env:
    """The ``Env`` of the run in progress (the process's own outside ``main``)."""
    env = _CURRENT.get()
    return env if env is not None else Env()


@contextmanager
def using_env(env: Env) -> Iterator[Env]:
    token = _CURRENT.set(env)
    try:
        yield env
    finally:
        _CURRENT.reset(token)


class Out:
    """Human, JSON or quiet rendering: results to the run's stdout, messages and progress to its
    stderr. Rich is imported only when something is drawn."""

    def __init__(self, json_mode: bool = False, quiet: bool = False, env: Env | None = None) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.env = env or current_env()
        self._err = None
        self._con = None

    @property
    def err(self):
        """A Rich console on stderr (messages, progress, live panels)."""
        if self._err is None:
            from rich.console import Console

            self._err = Console(file=self.env.stderr, highlight=False, soft_wrap=True)
        return self._err

    @property
    def console(self):
        """A Rich console on stdout (tables and reports that are the command's result)."""
        if self._con is None:
            from rich.console import Console

            self._con = Console(file=self.env.stdout, highlight=False)
        return self._con

    def result(self, text: object) -> None:
        """One plain line of the command's result on stdout (kept for pipes: no markup)."""
        self.env.stdout.write(f"{text}\n")

    def write(self, text: str, *, err: bool = False) -> None:
        """Raw text as it comes (pieces of a live transcript), flushed at once."""
        f = self.env.stderr if err else self.env.stdout
        f.write(text)
        f.flush()

    def status(self, text: str) -> None:
        """One plain line of state on stderr, shown even in JSON mode (flushed at once)."""
        self.env.stderr.write(text + "\n")
        self.env.stderr.flush()

    def message(self, text: str) -> None:
        if not self.quiet and not self.json_mode:
            self.err.print(text)

    def log(self, text: str) -> None:
        """One dimmed line of a server's log on stderr, as plain text (never read as markup: it
        holds what clients sent)."""
        if not self.quiet and not self.json_mode:
            from rich.text import Text

            self.err.print(Text(text, style="dim"))

    def error(self, text: str, hint: str | None = None) -> None:
        from rich.markup import escape

        self.err.print(f"[bold red]error:[/] {escape(text)}")
        if hint:
            self.err.print(f"[dim]hint: {escape(hint)}[/]")

    def json(self, data: Any) -> None:
        self.env.stdout.write(json.dumps(data, indent=2, default=str) + "\n")

    @contextmanager
    def progress(self, total_files: int, total_seconds: float | None, label: str,
                 show: bool = True) -> Iterator["Progress"]:
        p = Progress(self, total_files, total_seconds, label, show)
        try:
            yield p
        finally:
            p.stop()


class Progress:
    """Files done, audio seconds done and speed in x real time, on stderr when a person watches."""

    def __init__(self, out: Out, total_files: int, total_seconds: float | None, label: str,
                 show: bool = True) -> None:
        import threading
        import time

        self._time = time.perf_counter
        self.started = self._time()
        self.audio = 0.0
        self._lock = threading.Lock()  # add_audio is called from encoding threads
        self._bar = None
        if not show or out.quiet or out.json_mode or not out.err.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self._bar = RichProgress(
            TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
            TextColumn("{task.fields[audio]}"), TextColumn("{task.fields[speed]}"), TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"), console=out.err, transient=False,
        )
        self._task = self._bar.add_task(label, total=total_files, audio="", speed="", note="")
        self._bar.start()

    @property
    def elapsed(self) -> float:
        return self._time() - self.started

    @property
    def speed(self) -> float:
        wall = self.elapsed
        return self.audio / wall if wall > 0 else 0.0

    def add_audio(self, seconds: float) -> None:
        with self._lock:
            self.audio += seconds
        self._refresh()

    def file_done(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)
        self._refresh()

    def note(self, text: str) -> None:
        """An extra line of state after the bar (e.g. per-node throughput)."""
        if self._bar is not None:
            self._bar.update(self._task, note=f"[dim]{text}[/]")

    def _refresh(self) -> None:
        if self._bar is not None:
            audio = f"{self.audio / 3600:,.2f} h audio" if self.audio >= 3600 else f"{self.audio:,.1f} s audio"
            self._bar.update(self._task, audio=audio, speed=f"{self.speed:,.1f}x real time")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
