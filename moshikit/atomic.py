"""Writing outputs safely: a hidden partial file renamed into place, OS failures as one line.

Every writer in moshikit goes through ``atomic_path`` (token files, audio, transcripts,
recordings, manifests, the onnx graph cache): the bytes go to ``.<name>.partial-<pid>``
beside the final name and are renamed onto it only when complete, so a final name
never holds half a file. When the operating system refuses (a full disk, a read-only
or forbidden folder, a directory where the file goes, a file where a folder goes), the
partial file is removed and the failure becomes one ``OutputError`` that names the path
and says why, in the words of the OS error.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

#: What the user reads for each errno a write can meet.
REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a folder on the way is a file",
    errno.EEXIST: "a folder on the way is a file",
    errno.EFBIG: "file too large for this file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}
#: Failures of the whole output location: a batch stops at the first (the next file would fail too).
LOCATION_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere (-o), then run the same command again: finished files are kept",
    errno.EDQUOT: "free some space or write elsewhere (-o), then run the same command again: finished files are kept",
    errno.EROFS: "write elsewhere (-o DIR)",
    errno.EACCES: "check the folder's permissions, or write elsewhere (-o DIR)",
    errno.EPERM: "check the folder's permissions, or write elsewhere (-o DIR)",
    errno.EISDIR: "move the directory away or choose another output name",
}


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def clean_stale_partials(path: Path) -> None:
    """Remove what an interrupted earlier run left for ``path``."""
    try:
        if path.parent.is_dir():
            for stale in path.parent.glob(f".{path.name}.partial-*"):
                try:
                    stale.unlink()
                except OSError:
                    pass
    except OSError:  # an unreadable folder: the write itself will say why
        pass


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (a file where a folder goes)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def output_error(path: str | os.PathLike, exc: BaseException) -> OutputError | None:
    """The one-line error for an OS failure writing ``path``; None when ``exc`` is not one."""
    code = getattr(exc, "errno", None)
    if not isinstance(exc, OSError) or code not in REASONS:
        return None
    path = Path(path)
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _blocking_file(path)
        if blocker is None:
            return None
        return OutputError(f"cannot write {path}: {blocker} is a file, not a folder",
                           hint="move that file away or choose another output folder")
    return OutputError(f"cannot write {path}: {REASONS[code]}", hint=_HINTS.get(code),
                       stops_batch=code in LOCATION_ERRNOS, errno=code)


def _ours(exc: OSError, *paths: Path) -> bool:
    """Raised by writing ``paths`` (not, say, by reading an input inside the ``with``)?"""
    names = {os.fspath(n) for n in (exc.filename, exc.filename2) if n is not None}
    targets = {os.fspath(p) for p in paths} | {os.fspath(p.parent) for p in paths}
    return not names or bool(names & targets)


def prepare(path: Path) -> None:
    """Make the folder for ``path`` and refuse a directory standing where the file goes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err = output_error(path, exc)
        if err is None:
            raise
        raise err from None
    if path.is_dir():
        raise OutputError(f"cannot write {path}: is a directory", hint=_HINTS[errno.EISDIR])


def finished(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an output a rerun may keep: a regular file, not empty, that can be
    read. Missing, empty or unreadable: False (the work is done again, the write replaces it).
    A directory, or another kind of non-file, where the file goes: the ``OutputError`` that
    writing it would end in, raised now (never reported as already there)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, a dangling link, a folder on the way is a file...
        return False
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {path}: is a directory", hint=_HINTS[errno.EISDIR])
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"cannot write {path}: is not a regular file",
                          hint="move it away or choose another output name")
    if st.st_size == 0:
        return False
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True


def check_room(path: str | os.PathLike, need: int) -> None:
    """Before long work whose result goes to ``path``: the folder is writable and has about
    ``need`` bytes free, else the ``OutputError`` the write would end in, raised now."""
    path = Path(path)
    prepare(path)
    folder = path.parent
    st = os.statvfs(folder)
    if st.f_flag & os.ST_RDONLY:
        raise output_error(path, OSError(errno.EROFS, "read-only"))
    if not os.access(folder, os.W_OK):
        raise output_error(path, OSError(errno.EACCES, "denied"))
    free = st.f_bavail * st.f_frsize
    if free < need:
        err = output_error(path, OSError(errno.ENOSPC, "full"))
        err.message += f" ({free / 1e6:,.1f} MB free, {need / 1e6:,.1f} MB needed)"
        raise err


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it becomes ``path`` only on success.

    An OS failure writing it (inside the ``with`` or at the rename) is raised as an
    ``OutputError`` naming ``path``; the temporary file never outlives the block.
    """
    path = Path(path)
    prepare(path)
    clean_stale_partials(path)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        err = output_error(path, exc) if _ours(exc, tmp, path) else None
        if err is None:
            raise
        raise err from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:  # e.g. the folder became unwritable: nothing more can be done
            pass


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``path`` holds ``data`` complete, or is untouched (see ``atomic_path``)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


class CheckedFile:
    """An unbuffered file for libraries that write through callbacks (libsndfile's virtual
    I/O): an OS error is kept in ``error`` (the library would only say "System error." or
    write short) and the write reports 0 bytes, so the caller can raise the real reason."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = self._f.write(view[done:])
                if not n:
                    raise OSError(errno.EIO, "short write")
                done += n
        except OSError as exc:
            self.error = self.error or exc
            return 0
        return done

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
