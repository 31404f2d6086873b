"""What a live agent session shows: a Rich panel like chat's on a terminal (what the user says as
the STT hears it, the LLM's text as it streams, meters, the turn's latency split, the last error),
finished turns printed above it; plain lines elsewhere."""

from __future__ import annotations

import time

from .chat_ui import RichUI


def _meter(value: float, width: int = 24) -> str:
    n = int(round(max(0.0, min(1.0, value)) * width))
    return "█" * n + "·" * (width - n)


def latency_line(parts: dict) -> str:
    """``end of turn 0.80 s -> first token 0.12 s -> first audio 0.31 s (1.23 s)``: the parts known so far."""
    if not parts:
        return "-"
    line = " -> ".join(f"{k} {v:.2f} s" for k, v in parts.items())
    return line + (f"  ({sum(parts.values()):.2f} s)" if len(parts) == 3 else "")


def turn_lines(turn) -> list[str]:
    """A finished turn as Rich markup lines: the user, the agent (cut or not), its latency parts."""
    from rich.markup import escape

    lat = turn.latency()
    parts = [f"{k.replace('_to_', ' -> ').replace('_', ' ')} {v:.2f} s" for k, v in lat.items()
             if v is not None and k != "end_of_speech_to_first_audio"]
    lines = [f"[bold]you[/] ({turn.end_of_turn:.2f} s, by {turn.by}): {escape(turn.user)}"]
    if turn.heard or turn.status != "error":
        cut = f" [yellow](interrupted at {turn.interrupted_at:.2f} s)[/]" if turn.interrupted_at else ""
        lines.append(f"[bold]agent[/]: {escape(turn.heard)}{cut}")
    if parts:
        lines.append(f"[dim]  {'; '.join(parts)}[/]")
    return lines


def render(state, width: int = 80, title: str = "moshikit agent"):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    if state is None:
        return Panel(Text("starting the audio devices..."), title=title)
    room = max(20, width - 16) * 2
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("you", Text(state.heard.strip()[-room:] or "…", style="cyan"))
    if state.turns:
        grid.add_row(f"turn {state.turns}", Text(state.user[-room:]))
        grid.add_row("agent", Text(state.agent.strip()[-room:] or "…", style="green"))
        grid.add_row("latency", latency_line(state.latency))
    grid.add_row("mic", _meter(state.input_level))
    grid.add_row("speaker", _meter(state.output_level) + ("  speaking" if state.speaking else ""))
    grid.add_row("frames", f"in {state.frames_in}   dropped {state.dropped_in}   overflows {state.overflows}   "
                           f"waited at most {state.input_lag_max * 1000:.0f} ms")
    grid.add_row("echo", f"cancellation {state.aec}")
    if state.error:
        grid.add_row("error", Text(state.error, style="red"))
    body = Group(grid, Text(""), Text("q or Ctrl-C: quit", style="dim"))
    return Panel(body, title=title + (" — done" if state.done else ""), subtitle=state.devices)


def status_line(state) -> str:
    return (f"{state.elapsed:.1f} s | turns {state.turns} | frames in {state.frames_in} dropped {state.dropped_in} "
            f"overflows {state.overflows}")


class AgentUI:
    """``with AgentUI(out, plain) as ui``: ``ui.update(state)``, ``ui.turn(turn)``, ``ui.keys()``."""

    def __init__(self, out, *, plain: bool = False, every: float = 5.0) -> None:
        self.out, self.every = out, every
        self.rich = None if plain or out.json_mode or not out.err.is_terminal else RichUI(out.err, render=self._draw)
        self._last = time.monotonic()

    def _draw(self, state):
        return render(state, (self.rich.console.width or 80) if self.rich else 80)

    def __enter__(self) -> "AgentUI":
        if self.rich is not None:
            self.rich.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.rich is not None:
            self.rich.__exit__(*exc)

    def keys(self) -> str:
        return self.rich.keys() if self.rich is not None else ""

    def update(self, state) -> None:
        if self.rich is not None:
            self.rich.update(state)
            return
        now = time.monotonic()
        if state.done or now - self._last >= self.every:
            self._last = now
            if not self.out.json_mode:
                self.out.status(("done " if state.done else "") + status_line(state))

    def turn(self, turn) -> None:
        for line in turn_lines(turn):
            if self.rich is not None:
                self.rich.console.print(line)
            else:
                self.out.message(line)

    def error(self, line: str) -> None:
        """An LLM or TTS failure: one line; the session goes on (the panel shows it too)."""
        if self.rich is None:
            self.out.status(f"llm: {line} (the next turn tries again)")
