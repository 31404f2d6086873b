"""Fetching a plan into the cache: space and permission checks first, per-file progress,
resumable transfers, and each file checked against the hub's hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .paths import cache_dir, human_size, offline, repo_dir
from .hubapi import fetch_file
from .plan import Plan, PlannedFile


@dataclass
class Progress:
    """One progress report: the current file and the whole plan, in bytes."""

    file: str
    index: int  # 0-based position of ``file`` in the plan
    count: int
    file_done: int
    file_size: int | None
    done: int
    total: int | None
    phase: str  # "start" | "download" | "verify" | "done"
    resumed_from: int = 0


ProgressFn = Callable[[Progress], None]


@dataclass
class FileResult:
    name: str
    path: Path
    size: int
    downloaded: bool  # False: it was already in the cache
    resumed_from: int = 0
    check: str = "cached"  # "sha256" | "git-sha1" | "size" | "cached"

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "size": self.size, "downloaded": self.downloaded,
                "resumed_from": self.resumed_from, "verified": self.check}


@dataclass
class Download:
    plan: Plan
    path: Path  # the snapshot directory
    files: list[FileResult]

    @property
    def downloaded_bytes(self) -> int:
        return sum(f.size - f.resumed_from for f in self.files if f.downloaded)

    @property
    def result_path(self) -> Path:
        """What ``--quiet`` prints: the one file when the plan has one, else the snapshot directory."""
        return self.files[0].path if len(self.files) == 1 else self.path

    def to_json(self) -> dict:
        return {**self.plan.to_json(), "path": str(self.path), "result": str(self.result_path),
                "downloaded_bytes": self.downloaded_bytes, "files": [f.to_json() for f in self.files]}


def check_writable(cache: Path) -> None:
    """Fail with one line when the cache cannot be written (read-only disk, permissions, a file in the way)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".moshikit-probe-"):
            pass
    except OSError as exc:
        raise ModelError(f"cannot write to the Hugging Face cache at {cache} ({exc.strerror or exc})",
                         hint="set HF_HUB_CACHE (or HF_HOME) to a writable directory") from None


def check_space(cache: Path, needed: int | None) -> None:
    if not needed:
        return
    free = shutil.disk_usage(cache).free
    if free < needed:
        raise ModelError(f"not enough disk space in {cache}: {human_size(needed)} to download, "
                         f"{human_size(free)} free", hint="free some space, or set HF_HUB_CACHE to a bigger disk")


class _Watcher:
    """Polls the ``.incomplete`` file huggingface_hub writes and reports its growth."""

    def __init__(self, report: Callable[[int], None], incomplete: Path | None, interval: float = 0.1) -> None:
        self._report = report
        self._path = incomplete
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="moshikit-progress")

    def _run(self) -> None:
        last = -1
        while not self._stop.wait(self._interval):
            try:
                size = self._path.stat().st_size if self._path is not None else -1
            except OSError:
                continue
            if size != last and size >= 0:
                last = size
                try:
                    self._report(size)
                except Exception:  # noqa: BLE001 - a display problem must not stop a download
                    pass

    def __enter__(self) -> "_Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _label(p: Plan) -> str:
    return p.repo if p.asked == p.repo else f"{p.asked} ({p.repo})"


def download(p: Plan, *, on_progress: ProgressFn | None = None, verify: bool = True,
             force: bool = False) -> Download:
    """Fetch every file of ``p`` into the cache (resuming partial files), then check what was fetched."""
    if p.complete and not force:
        return _from_cache(p)
    if offline():
        raise ModelError(f"{_label(p)} is not fully in the Hugging Face cache and HF_HUB_OFFLINE is set",
                         hint=f"unset HF_HUB_OFFLINE and run `{p.command}`")
    if not p.exact:
        raise ModelError(f"{p.repo}: the plan was made offline; make it again online")
    cache = cache_dir()
    check_writable(cache)
    check_space(cache, p.missing_size if not force else p.total_size)
    total = p.total_size
    done_before = sum(f.size or 0 for f in p.files if f.cached and not force)
    results: list[FileResult] = []
    with _quiet_hf_bars(on_progress is not None):
        for i, f in enumerate(p.files):
            size = f.size or 0
            repo, name, revision = f.where(p)
            if f.cached and not force:
                results.append(FileResult(f.name, fetch_file(repo, name, revision), size, False))
                continue
            blobs = repo_dir(repo, cache) / "blobs"
            incomplete = blobs / f"{f.etag}.incomplete" if f.etag else None
            resumed = 0 if force else (incomplete.stat().st_size if incomplete and incomplete.is_file() else 0)

            def report(n: int, phase: str = "download", i=i, f=f, resumed=resumed) -> None:
                if on_progress is not None:
                    on_progress(Progress(f.name, i, len(p.files), n, f.size, done_before + n, total, phase, resumed))

            report(resumed, "start")
            with _Watcher(report, incomplete) if on_progress is not None else _nullcontext():
                path = fetch_file(repo, name, revision, force_download=force)
            check = _verify_download(path, f, p) if verify else "size"
            report(size, "done")
            done_before += size
            results.append(FileResult(f.name, path, size, True, resumed, check))
    return Download(p, _snapshot_dir(p, results, cache), results)


def _snapshot_dir(p: Plan, results: list["FileResult"], cache: Path) -> Path:
    own = [r for r, f in zip(results, p.files) if not f.other_repo]
    return _snapshot_of(own[0]) if own else repo_dir(p.repo, cache)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class _quiet_hf_bars:
    """huggingface_hub's own tqdm bars off while we draw ours."""

    NAME = "huggingface_hub.http_get"

    def __init__(self, active: bool) -> None:
        self.active = active
        self.was_disabled = True

    def __enter__(self):
        if self.active:
            from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

            self.was_disabled = are_progress_bars_disabled(self.NAME)
            disable_progress_bars(self.NAME)
        return self

    def __exit__(self, *exc):
        if self.active and not self.was_disabled:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars(self.NAME)


def _snapshot_of(r: FileResult) -> Path:
    path = r.path
    for _ in r.name.split("/"):
        path = path.parent
    return path


def _from_cache(p: Plan) -> Download:
    """Everything is cached: resolve the pointers without downloading (works offline too)."""
    from huggingface_hub import try_to_load_from_cache

    cache = cache_dir()
    results = []
    for f in p.files:
        repo, name, revision = f.where(p)
        path = try_to_load_from_cache(repo, name, cache_dir=cache,
                                      revision=revision if f.other_repo else p.commit or p.revision)
        if not isinstance(path, str):
            path = str(fetch_file(repo, name, revision))
        results.append(FileResult(f.name, Path(path), f.size or Path(path).stat().st_size, False))
    return Download(p, _snapshot_dir(p, results, cache), results)


def _verify_download(path: Path, f: PlannedFile, p: Plan) -> str:
    """Size, then sha256 (LFS) or git blob id (small files), against the hub's metadata."""
    real = Path(os.path.realpath(path))
    size = real.stat().st_size
    problem = None
    check = "size"
    if f.size is not None and size != f.size:
        problem = f"size {size} instead of {f.size}"
    elif f.sha256:
        check = "sha256"
        got = hash_file(real, "sha256")
        problem = None if got == f.sha256 else f"sha256 {got[:12]}... instead of {f.sha256[:12]}..."
    elif f.blob_id:
        check = "git-sha1"
        got = hash_file(real, "git-sha1")
        problem = None if got == f.blob_id else f"git blob id {got[:12]}... instead of {f.blob_id[:12]}..."
    if problem:
        for q in (Path(path), real):
            try:
                q.unlink()
            except OSError:
                pass
        raise ModelError(f"{p.repo}/{f.name}: downloaded file is corrupt ({problem}); it was removed",
                         hint=f"run `{p.command}` again")
    return check


def hash_file(path: Path, algorithm: str, on_bytes: Callable[[int], None] | None = None) -> str:
    """sha256, or git's blob id (``git-sha1``), of a file."""
    path = Path(path)
    if algorithm == "git-sha1":
        h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return h.hexdigest()
