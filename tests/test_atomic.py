"""The one atomic-write helper: OS failures become one OutputError naming the path."""

from __future__ import annotations

import errno

import pytest

from moshikit import atomic
from moshikit.errors import OutputError


@pytest.mark.parametrize("code,reason,stops", [
    (errno.ENOSPC, "no space left on device", True), (errno.EDQUOT, "disk quota exceeded", True),
    (errno.EROFS, "read-only file system", True), (errno.EACCES, "permission denied", False),
    (errno.EISDIR, "is a directory", False), (errno.EFBIG, "file too large for this file system", False),
])
def test_each_errno_is_one_line_naming_the_path(tmp_path, code, reason, stops):
    err = atomic.output_error(tmp_path / "o.wav", OSError(code, "x"))
    assert str(err) == f"cannot write {tmp_path / 'o.wav'}: {reason}"
    assert err.stops_batch is stops and err.errno == code


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "out").write_text("x")
    err = atomic.output_error(tmp_path / "out/sub/a.wav", OSError(errno.ENOTDIR, "x"))
    assert str(err) == f"cannot write {tmp_path / 'out/sub/a.wav'}: {tmp_path / 'out'} is a file, not a folder"
    with pytest.raises(OutputError, match="is a file, not a folder"):
        with atomic.atomic_path(tmp_path / "out/sub/a.wav"):
            pass


def test_other_errors_are_not_ours(tmp_path):
    assert atomic.output_error(tmp_path / "a", OSError(errno.ECONNRESET, "x")) is None
    assert atomic.output_error(tmp_path / "a", ValueError("x")) is None
    # an OS error about another file (an input read inside the block) passes through as it is
    with pytest.raises(PermissionError) as e:
        with atomic.atomic_path(tmp_path / "a") as tmp:
            tmp.write_text("half")
            raise PermissionError(errno.EACCES, "denied", str(tmp_path / "input.wav"))
    assert e.value.filename == str(tmp_path / "input.wav")
    assert list(tmp_path.iterdir()) == []


def test_the_partial_file_never_outlives_a_failure(tmp_path):
    with pytest.raises(OutputError, match="no space left on device"):
        with atomic.atomic_path(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    assert atomic.write_text(tmp_path / "a.txt", "whole").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_checked_file_keeps_the_os_error(tmp_path, monkeypatch):
    f = atomic.CheckedFile(tmp_path / "x")
    assert f.write(b"abc") == 3 and f.error is None

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(f, "_f", Full())
    assert f.write(b"abc") == 0 and f.error.errno == errno.ENOSPC


def test_check_room_before_long_work(tmp_path):
    atomic.check_room(tmp_path / "g.onnx", 1)
    with pytest.raises(OutputError, match=r"g\.onnx: no space left on device \(.* MB free, .* MB needed\)"):
        atomic.check_room(tmp_path / "g.onnx", 1 << 60)
