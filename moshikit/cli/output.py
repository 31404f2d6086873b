"""The one place the CLI writes: results to stdout, messages and progress to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Out:
    """Human, JSON or quiet rendering. Rich is imported only when something is drawn."""

    def __init__(self, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self._err = None

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    def message(self, text: str) -> None:
        if not self.quiet and not self.json_mode:
            self.err.print(text)

    def error(self, text: str, hint: str | None = None) -> None:
        from rich.markup import escape

        self.err.print(f"[bold red]error:[/] {escape(text)}")
        if hint:
            self.err.print(f"[dim]hint: {escape(hint)}[/]")

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")

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
