"""The Typer application and the one error boundary.

Command modules import only typer and the standard library at module level;
everything heavy is imported inside the command, so ``--help`` and shell
completion never load torch, mlx or sounddevice.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from typer.completion import completion_init

from .. import __version__
from .agent import agent
from .bench import bench_app
from .chat import chat
from .decode import decode
from .download import download, models_app
from .encode import encode
from .info import info
from .output import Env, Out, current_env, using_env
from .serve import serve
from .speak import speak
from .transcribe import transcribe
from .translate import translate

app = typer.Typer(
    name="moshikit",
    help="One toolkit for Kyutai's Moshi stack: the Mimi codec, Moshi, Kyutai STT and TTS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(rich_help_panel="Codec")(encode)
app.command(rich_help_panel="Codec")(decode)
app.command(rich_help_panel="Moshi")(chat)
app.command(rich_help_panel="Moshi")(serve)
app.command(rich_help_panel="Speech to text")(transcribe)
app.command(rich_help_panel="Translation")(translate)
app.command(rich_help_panel="Text to speech")(speak)
app.command(rich_help_panel="Agent")(agent)
app.command(rich_help_panel="Setup")(info)
app.command(rich_help_panel="Setup")(download)
app.add_typer(models_app, name="models", rich_help_panel="Setup")
app.add_typer(bench_app, name="bench", rich_help_panel="Measure")

# Our scripts in completions/ call back into moshikit; register Typer's shell classes
# (add_completion=False only hides the --install-completion options).
completion_init()

def _version(value: bool) -> None:
    if value:
        Out().result(f"moshikit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (also MOSHIKIT_DEBUG=1).")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    if debug:
        current_env().debug = True


@app.command(rich_help_panel="Setup")
def completion(shell: Annotated[str, typer.Argument(help="bash, zsh or fish")]) -> None:
    """Print the shell completion script (see completions/ and docs/info.md)."""
    from .completion import script

    Out().write(script(shell))


def command():
    """The Click command Typer builds from ``app``, with every value named in its help."""
    from .help import name_values

    return name_values(typer.main.get_command(app))


def main(argv: list[str] | None = None, env: Env | None = None) -> int:
    """Entry point: runs the app and turns known errors into one line and an exit code.

    ``env`` (streams, environment, debug) defaults to the process's own; tests pass theirs
    and read what the run wrote from it."""
    restore = _terminate_like_ctrl_c()
    try:
        with using_env(env or Env()) as run_env:
            return _main(argv, run_env)
    finally:
        restore()


def _main(argv: list[str] | None, env: Env) -> int:
    from ..backends.torch_env import quiet_library_logs
    from ..errors import ExitStatus, MoshikitError, interrupted_status
    args = sys.argv[1:] if argv is None else argv
    quiet_library_logs(debug=env.debug or "--debug" in args)
    try:
        command()(args=argv, prog_name="moshikit")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MoshikitError as exc:
        if env.debug:
            raise
        Out(env=env).error(str(exc), exc.hint)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what, status = interrupted_status(exc)
        Out(env=env).status(f"{what}: finished files are kept; run the same command again to resume")
        return status
    return ExitStatus.OK


def _terminate_like_ctrl_c():
    """SIGTERM and SIGHUP unwind like Ctrl-C (partial files removed, recordings closed) instead
    of killing the process where it stands; exit status 128 + the signal, as the shell expects."""
    import signal
    import threading

    from ..errors import Terminated

    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise Terminated(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def run() -> None:
    sys.exit(main())
