"""Batch jobs, as every command that works on many files plans and resumes them: inputs mapped
to outputs (directory trees mirrored, collisions and FIFOs refused, one bad path never stopping
the batch), the rule that skips a job whose outputs are kept (a rerun resumes), and the result
of each file."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .atomic import finished
from .audio import AUDIO_EXTENSIONS, is_audio_file
from .errors import MoshikitError, OutputError
from .inputs import not_regular
from .tokens import is_complete

TOKEN_EXTENSIONS = (".mimi", ".npy")


def job_failed(job: "Job", exc: MoshikitError) -> "FileResult":
    """The result of a job that failed alone; a full or read-only output location is
    raised instead, since every next job would fail the same way (the batch stops)."""
    if isinstance(exc, OutputError) and exc.stops_batch:
        raise exc
    return FileResult(job.source, str(job.output), "failed", str(exc))


def kept_output(path: Path) -> bool:
    """An output a rerun keeps: ``atomic.finished`` (a directory there raises ``OutputError``)
    and, by its suffix, a valid token file or readable audio."""
    if not finished(path):
        return False
    suffix = path.suffix.lower()
    if suffix in TOKEN_EXTENSIONS:
        return is_complete(path)
    if suffix in AUDIO_EXTENSIONS:
        return is_audio_file(path)
    return True


def skip_result(job: "Job", outputs: Sequence[Path] | None = None, overwrite: bool = False):
    """The rule of every command that resumes: "skipped" when all the job's ``outputs`` (default:
    ``job.output``) are kept, "failed" when a directory stands where one goes, None: run it
    (always for standard input and ``overwrite``)."""
    if overwrite or job.source == "-":
        return None
    outs = list(outputs) if outputs is not None else [job.output]
    try:  # every output looked at: a directory fails even beside a missing file
        kept = [kept_output(Path(p)) for p in outs]
    except OutputError as exc:
        return job_failed(job, exc)
    return FileResult(job.source, str(outs[0]), "skipped") if outs and all(kept) else None


@dataclass
class Job:
    source: str  # a path, or "-" for standard input
    output: Path


@dataclass
class FileResult:
    source: str
    output: str | None
    status: str  # done | skipped | failed
    error: str | None = None
    audio_seconds: float = 0.0
    frames: int = 0
    seconds: float = 0.0  # wall time spent on this file


def walk_tree(root: Path, include: Sequence[str], extensions: Sequence[str]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if include:
                if any(fnmatch.fnmatch(name, pat) for pat in include):
                    found.append(Path(dirpath) / name)
            elif name.lower().endswith(tuple(extensions)):
                found.append(Path(dirpath) / name)
    return found


def plan(inputs: Iterable[str], out: str | None, suffix: str, *, include: Sequence[str] = (),
         extensions: Sequence[str] = AUDIO_EXTENSIONS) -> tuple[list[Job], list[FileResult]]:
    """Map inputs to outputs, mirroring directory trees under ``out``.

    Returns the jobs and, for inputs that cannot even start (missing paths,
    collisions, FIFOs and devices), failed results, so one bad path never stops a batch.
    """
    inputs = list(inputs)
    out_path = Path(out) if out else None
    single_file_out = out_path is not None and out_path.suffix.lower() == suffix and len(inputs) == 1
    jobs: list[Job] = []
    failed: list[FileResult] = []
    seen: dict[Path, str] = {}

    def add(src: str, dst: Path) -> None:
        why = None if src == "-" else not_regular(src)  # a FIFO would hang, a device never end: it fails alone
        if why is not None:
            failed.append(FileResult(src, str(dst), "failed", f"{src}: {why}"))
            return
        key = dst.resolve() if dst.parent.exists() else dst.absolute()
        if key in seen:
            failed.append(FileResult(src, str(dst), "failed", f"{src}: output {dst} would overwrite the output of {seen[key]}"))
            return
        seen[key] = src
        jobs.append(Job(src, dst))

    for item in inputs:
        if item == "-":
            if out_path is None:
                failed.append(FileResult("-", None, "failed", "-: reading standard input needs -o/--output"))
            else:
                add("-", out_path if single_file_out else out_path / f"stdin{suffix}")
            continue
        path = Path(item)
        if path.is_dir():
            files = walk_tree(path, include, extensions)
            if not files:
                failed.append(FileResult(item, None, "failed", f"{item}: no matching files in this directory"))
            for f in files:
                rel = f.relative_to(path).with_suffix(suffix)
                add(str(f), (out_path / rel) if out_path else f.with_suffix(suffix))
        elif path.exists():
            if single_file_out:
                add(item, out_path)
            else:
                add(item, (out_path / path.with_suffix(suffix).name) if out_path else path.with_suffix(suffix))
        else:
            failed.append(FileResult(item, None, "failed", f"{item}: no such file or directory"))
    return jobs, failed
