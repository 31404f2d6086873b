"""The error family: every failure a user can cause is one of these.

The CLI turns a ``MoshikitError`` into a single line (plus its hint) and a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Every exit status the CLI uses (a signal adds 128 to its number, as the shell expects)."""

    OK = 0
    FAILED = 1  # an error, or some files of a batch failed
    USAGE = 2  # bad usage, an unusable backend, no device to use
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class MoshikitError(Exception):
    """Base class. ``hint`` tells the user how to fix it, when we know."""

    exit_code: int = ExitStatus.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MoshikitError):
    """A bad option or combination of options."""

    exit_code = ExitStatus.USAGE


class BackendError(MoshikitError):
    """Unknown backend name, or a backend that cannot serve the request."""

    exit_code = ExitStatus.USAGE


class BackendUnavailable(BackendError):
    """A known backend whose packages are not installed or cannot load here."""


class ModelError(MoshikitError):
    """Weights that are missing or are not what the command needs."""


class AudioError(MoshikitError):
    """An input that is not readable audio, or is empty."""


class NoDeviceError(MoshikitError):
    """No sound device of the kind a command needs (none at all, no default, or none matching
    the name given): the user must choose another way in (a file, a server, another device)."""

    exit_code = ExitStatus.USAGE


class TokenFileError(MoshikitError):
    """A token file that is truncated, corrupt, or does not match the codec."""


class OutputError(MoshikitError):
    """An output that cannot be written: a full disk, a read-only or forbidden folder, a
    directory where the file goes. ``stops_batch``: the whole output location is unusable
    (full, read-only), so a batch stops instead of failing every next file the same way."""

    def __init__(self, message: str, *, hint: str | None = None, stops_batch: bool = False,
                 errno: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.stops_batch = stops_batch
        self.errno = errno


class RemoteError(MoshikitError):
    """A Moshi server that cannot be reached, refuses the session, or breaks the protocol."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised like Ctrl-C so that partial outputs are removed on the way out."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.exit_code = 128 + signum


def interrupted_status(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What a stop by Ctrl-C or a signal is called, and the exit status it ends with."""
    if isinstance(exc, Terminated):
        return "terminated", exc.exit_code
    return "interrupted", ExitStatus.INTERRUPTED
