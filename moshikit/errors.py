"""The error family: every failure a user can cause is one of these.

The CLI turns a ``MoshikitError`` into a single line (plus its hint) and a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MoshikitError(Exception):
    """Base class. ``hint`` tells the user how to fix it, when we know."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MoshikitError):
    """A bad option or combination of options."""

    exit_code = 2


class BackendError(MoshikitError):
    """Unknown backend name, or a backend that cannot serve the request."""

    exit_code = 2


class BackendUnavailable(BackendError):
    """A known backend whose packages are not installed or cannot load here."""


class ModelError(MoshikitError):
    """Weights that are missing or are not what the command needs."""


class AudioError(MoshikitError):
    """An input that is not readable audio, or is empty."""


class NoDeviceError(MoshikitError):
    """No sound device of the kind a command needs (none at all, no default, or none matching
    the name given): the user must choose another way in (a file, a server, another device)."""

    exit_code = 2


class TokenFileError(MoshikitError):
    """A token file that is truncated, corrupt, or does not match the codec."""


class RemoteError(MoshikitError):
    """A Moshi server that cannot be reached, refuses the session, or breaks the protocol."""
