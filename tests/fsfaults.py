"""File-system faults for tests: a real full disk and a real read-only folder (tmpfs mounts,
as root), and an injected full disk where mounting is not permitted.

The injected variant raises ENOSPC from the files moshikit opens for writing
(``moshikit.atomic.open``: every token, audio, transcript and recording writer opens its
partial file there) once ``budget`` bytes are written under the folder, as a full
disk would.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False):
    """A tmpfs of ``size`` at ``path``; skips the test where mounting is not permitted."""
    if not _mount(path, f"size={size}" + (",ro" if read_only else "")):
        pytest.skip("mounting a tmpfs is not permitted here (the injected variant covers this fault)")
    try:
        yield path
    finally:
        _unmount(path)


class _FullFile:
    """A file under a 'full' folder: writes beyond the folder's budget raise ENOSPC."""

    def __init__(self, f, disk: "InjectedDisk") -> None:
        self._f, self._disk = f, disk

    def write(self, data) -> int:
        n = len(data.encode()) if isinstance(data, str) else len(memoryview(data).cast("B"))
        if self._disk.used + n > self._disk.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.used += n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class InjectedDisk:
    def __init__(self, root: Path, budget: int) -> None:
        self.root, self.budget, self.used = Path(root), budget, 0

    def open(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and Path(os.path.abspath(path)).is_relative_to(self.root.absolute()):
            return _FullFile(f, self)
        return f


@contextmanager
def full_disk(kind: str, path: Path, size_kb: int, monkeypatch):
    """A folder with about ``size_kb`` kB free: a real tmpfs (``kind="tmpfs"``) or injected."""
    if kind == "tmpfs":
        with tmpfs(path, f"{size_kb}k"):
            yield path
        return
    import moshikit.atomic as atomic

    path.mkdir(parents=True, exist_ok=True)
    disk = InjectedDisk(path, size_kb * 1024)
    monkeypatch.setattr(atomic, "open", disk.open, raising=False)
    yield path


@contextmanager
def read_only_dir(path: Path):
    """A read-only folder: a read-only tmpfs as root, else a folder without write permission."""
    if os.geteuid() != 0:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with tmpfs(path, "1m", read_only=True):
        yield path


def partials(root: Path) -> list[Path]:
    """Hidden partial files left anywhere under ``root``."""
    return sorted(p for p in Path(root).rglob(".*partial*"))


@contextmanager
def full_disk_for_libraries(kind: str, path: Path, size_kb: int, monkeypatch):
    """A folder with about ``size_kb`` kB free for writers moshikit does not open itself (pyarrow,
    torch.onnx, huggingface_hub): a real tmpfs, or injected where mounting is not permitted. The
    injected disk reports ``size_kb`` free to ``os.statvfs``/``shutil.disk_usage`` under ``path``
    and makes any file under ``path`` raise ENOSPC once ``size_kb`` have been written to it (the
    libraries' own writers: pyarrow's C++ writer is replaced by one that writes through Python)."""
    if kind == "tmpfs":
        with tmpfs(path, f"{size_kb}k"):
            yield path
        return
    import builtins
    import io

    root = Path(path).absolute()
    root.mkdir(parents=True, exist_ok=True)
    disk = InjectedDisk(root, size_kb * 1024)
    real_open, real_statvfs, real_usage = builtins.open, os.statvfs, shutil.disk_usage

    def under(p) -> bool:
        try:
            return Path(os.path.abspath(os.fspath(p))).is_relative_to(root)
        except TypeError:  # a file descriptor
            return False

    def fake_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return _FullFile(f, disk) if any(c in mode for c in "wax+") and under(file) else f

    def fake_statvfs(p):
        st = real_statvfs(p)
        if not under(p):
            return st
        free = max(0, disk.budget - disk.used) // st.f_frsize
        return os.statvfs_result((*st[:4], free, free, *st[6:]))

    def fake_usage(p):
        u = real_usage(p)
        return u if not under(p) else type(u)(disk.budget, disk.used, max(0, disk.budget - disk.used))

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "statvfs", fake_statvfs)
    monkeypatch.setattr(shutil, "disk_usage", fake_usage)
    try:
        import pyarrow.parquet as pq

        real_write_table = pq.write_table

        def write_table(table, where, *a, **k):
            if not under(where):
                return real_write_table(table, where, *a, **k)
            import pyarrow as pa

            sink = pa.BufferOutputStream()
            real_write_table(table, sink, *a, **k)
            with fake_open(where, "wb") as f:
                f.write(sink.getvalue().to_pybytes())

        monkeypatch.setattr(pq, "write_table", write_table)
    except ImportError:
        pass
    yield path
