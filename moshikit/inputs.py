"""Input paths must be regular files: a FIFO, a device or a socket is refused in one line.

Opening a FIFO for reading waits until something writes to it (in a batch: forever), and a
device such as ``/dev/zero`` never ends; neither holds audio, tokens or text. Every input a
command reads from a path is checked here first, by ``stat`` (which never blocks), and the
few readers that take whole files open them without blocking and read no more than the size
the file had when opened. Data from a pipe comes in as standard input (``-``).
"""

from __future__ import annotations

import os
import stat

from .errors import MoshikitError

HINT = "give a regular file, or pipe the data to standard input as -"
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _why(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    for test, what in _KINDS:
        if test(mode):
            return f"is {what}, not a regular file"
    return "is not a regular file"


def not_regular(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an input file (``"is a FIFO (named pipe), not a regular file"``,
    ``"is a directory"``...); None for a regular file, or a path that cannot be looked at
    (missing, forbidden: whoever opens it says why)."""
    try:
        return _why(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def check_regular(path: str | os.PathLike, error: type[MoshikitError] = MoshikitError) -> None:
    """Raise ``error`` (one line and a hint) when ``path`` exists but is not a regular file."""
    why = not_regular(path)
    if why is not None:
        raise error(f"{os.fspath(path)}: {why}", hint=None if why == "is a directory" else HINT)


def read_regular(path: str | os.PathLike, error: type[MoshikitError] = MoshikitError,
                 limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path``: opened without blocking (a FIFO put there
    after a check does not hang), refused unless regular or when larger than ``limit``, read
    up to the size it had when opened (a file that grows meanwhile does not read on)."""
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{where}: cannot read it ({(exc.strerror or str(exc)).lower()})") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        why = _why(st.st_mode)
        if why is not None:
            raise error(f"{where}: {why}", hint=None if why == "is a directory" else HINT)
        if limit is not None and st.st_size > limit:
            raise error(f"{where}: too large ({st.st_size:,} bytes; at most {limit:,} expected here)")
        chunks, left = [], st.st_size
        try:
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        except OSError as exc:
            raise error(f"{where}: cannot read it ({(exc.strerror or str(exc)).lower()})") from None
    return b"".join(chunks)
