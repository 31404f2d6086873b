"""Planning a distributed (or manifest-driven local) job: inputs to tasks, and the job
manifest that records every file's outcome. Runs without Ray."""

from __future__ import annotations

import csv
import os
import posixpath
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..audio import AUDIO_EXTENSIONS
from ..filejobs import FileResult, Job
from ..errors import BackendUnavailable, UsageError
from .storage import INSTALL_HINT, filesystem, is_uri, join_path, with_suffix

MANIFEST_COLUMNS = ("source", "output", "status", "error", "duration", "frames", "seconds", "node", "attempts")


def read_manifest(path: str, column: str | None = None) -> list[str]:
    """Paths or URIs listed in ``path``: a text file (one a line; blank lines and ``#``
    comments skipped), or a column of a CSV or Parquet file (``column``; default the
    first of path, source, uri, file, audio, else the first column)."""
    lower = path.lower()
    opener = filesystem(path)[0].open if is_uri(path) else open
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            with opener(filesystem(path)[1] if is_uri(path) else path, "rb") as f:
                table = pq.read_table(f)
            col = pick_column(list(table.column_names), column, path)
            values = table.column(col).to_pylist()
        elif lower.endswith((".csv", ".tsv")):
            with opener(filesystem(path)[1] if is_uri(path) else path, "r", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if lower.endswith(".tsv") else ",")
                col = pick_column(list(reader.fieldnames or []), column, path)
                values = [row[col] for row in reader]
        else:
            with opener(filesystem(path)[1] if is_uri(path) else path, "r") as f:
                values = [line.strip() for line in f]
            values = [v for v in values if v and not v.startswith("#")]
    except FileNotFoundError:
        raise UsageError(f"{path}: no such manifest file") from None
    except ImportError:
        raise BackendUnavailable(f"{path}: reading Parquet needs pyarrow", hint=INSTALL_HINT) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path}: cannot read the manifest ({str(exc).splitlines()[0][:120]})") from None
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def pick_column(names: list[str], column: str | None, where: str) -> str:
    """The manifest column to read: ``column`` if given, else the first usual name, else the first."""
    if column:
        if column not in names:
            raise UsageError(f"{where}: no column {column!r} (columns: {', '.join(names) or 'none'})")
        return column
    for name in ("path", "source", "uri", "file", "audio"):
        if name in names:
            return name
    if not names:
        raise UsageError(f"{where}: no columns")
    return names[0]


@dataclass
class Task:
    """One file of a distributed job: where it comes from and its (first) output."""

    source: str
    output: str


def plan_tasks(inputs: Sequence[str], out: str | None, suffix: str, *, manifest: Sequence[str] = (),
               include: Sequence[str] = (), extensions: Sequence[str] = AUDIO_EXTENSIONS
               ) -> tuple[list[Task], list[FileResult]]:
    """Map inputs to outputs like the local commands; manifest entries mirror their common
    directory under ``out``; URI directories are walked (fsspec) and mirrored too."""
    from ..filejobs import plan

    tasks: list[Task] = []
    failed: list[FileResult] = []
    local = [i for i in inputs if not is_uri(i)]
    if local:
        # The local planner, run against a placeholder root so ``out`` may be a URI.
        placeholder = Path(tempfile.gettempdir()) / f"moshikit-plan-{os.getpid()}-{id(tasks)}"
        plan_out = None if out is None else (str(placeholder.with_suffix(Path(out).suffix))
                                             if Path(out).suffix.lower() == suffix and len(local) == 1 and not
                                             Path(local[0]).is_dir() else str(placeholder))
        jobs, bad = plan(local, plan_out, suffix, include=include, extensions=extensions)
        failed += bad
        for job in jobs:
            dst = str(job.output)
            if out is not None and plan_out is not None:
                dst = out if dst == plan_out else join_path(out, os.path.relpath(dst, plan_out))
            # Workers run elsewhere (another cwd, another machine): absolute local paths.
            tasks.append(Task(os.path.abspath(job.source), dst if is_uri(dst) else os.path.abspath(dst)))
    for item in (i for i in inputs if is_uri(i)):
        fs, path = filesystem(item)
        try:
            if fs.isdir(path):
                proto = item.split("://", 1)[0]
                found = sorted(p for p in fs.find(path) if wanted(posixpath.basename(p), include, extensions))
                if not found:
                    failed.append(FileResult(item, None, "failed", f"{item}: no matching files in this directory"))
                for p in found:
                    rel = posixpath.relpath(p, path)
                    src = f"{proto}://{p}" if not p.startswith(f"{proto}://") else p
                    dst = join_path(out, with_suffix(rel, suffix)) if out else with_suffix(src, suffix)
                    tasks.append(Task(src, dst))
            elif fs.exists(path):
                dst = join_path(out, with_suffix(posixpath.basename(path), suffix)) if out else with_suffix(item, suffix)
                tasks.append(Task(item, dst))
            else:
                failed.append(FileResult(item, None, "failed", f"{item}: no such file or directory"))
        except OSError as exc:
            failed.append(FileResult(item, None, "failed", f"{item}: {str(exc).splitlines()[0][:120]}"))
    if manifest:
        tasks += plan_manifest(list(manifest), out, suffix, failed)
    seen: dict[str, str] = {}
    unique = []
    for t in tasks:
        if t.output in seen:
            failed.append(FileResult(t.source, t.output, "failed",
                                     f"{t.source}: output {t.output} would overwrite the output of {seen[t.output]}"))
            continue
        seen[t.output] = t.source
        unique.append(t)
    return unique, failed


def wanted(name: str, include: Sequence[str], extensions: Sequence[str]) -> bool:
    """Whether a file found in a URI directory is an input (not hidden; pattern or extension)."""
    import fnmatch

    if name.startswith("."):
        return False
    if include:
        return any(fnmatch.fnmatch(name, pat) for pat in include)
    return name.lower().endswith(tuple(extensions))


def plan_manifest(entries: list[str], out: str | None, suffix: str, failed: list[FileResult]) -> list[Task]:
    """Manifest entries as tasks, mirroring their common directory under ``out``."""
    def key(e: str) -> str:
        return e.split("://", 1)[1] if is_uri(e) else os.path.abspath(e)

    entries = [e if is_uri(e) else os.path.abspath(e) for e in entries]
    if out is not None and not is_uri(out):
        out = os.path.abspath(out)
    if out is None:
        return [Task(e, with_suffix(e, suffix)) for e in entries]
    parents = [posixpath.dirname(key(e)) if is_uri(e) else os.path.dirname(key(e)) for e in entries]
    try:
        root = os.path.commonpath(parents) if parents else ""
    except ValueError:  # mixed absolute and relative keys
        root = ""
    tasks = []
    for e in entries:
        rel = os.path.relpath(key(e), root) if root else key(e).lstrip("/")
        tasks.append(Task(e, join_path(out, with_suffix(rel.replace(os.sep, "/"), suffix))))
    return tasks


def read_result_manifest(path: str) -> dict[str, dict]:
    """Rows of an earlier run's manifest by source ({} when there is none)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BackendUnavailable("the job manifest needs pyarrow", hint=INSTALL_HINT) from None
    try:
        if is_uri(path):
            fs, p = filesystem(path)
            if not fs.exists(p):
                return {}
            with fs.open(p, "rb") as f:
                table = pq.read_table(f)
        else:
            if not os.path.exists(path):
                return {}
            table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own family
        raise UsageError(f"{path}: cannot read the job manifest ({str(exc).splitlines()[0][:120]})",
                         hint="move it away to start the job afresh") from None
    return {r["source"]: r for r in table.to_pylist()}


def write_result_manifest(path: str, rows: Iterable[dict]) -> None:
    """Write the manifest atomically (a temporary file renamed, or one object put)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    schema = pa.schema([("source", pa.string()), ("output", pa.string()), ("status", pa.string()),
                        ("error", pa.string()), ("duration", pa.float64()), ("frames", pa.int64()),
                        ("seconds", pa.float64()), ("node", pa.string()), ("attempts", pa.int32())])
    table = pa.Table.from_pylist([{k: r.get(k) for k in MANIFEST_COLUMNS} for r in rows], schema=schema)
    if is_uri(path):
        fs, p = filesystem(path)
        with tempfile.TemporaryDirectory() as d:
            local = os.path.join(d, "manifest.parquet")
            pq.write_table(table, local)
            fs.makedirs(posixpath.dirname(p), exist_ok=True)
            fs.put_file(local, p)
        return
    from ..audio import atomic_path

    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, str(tmp))


def default_manifest(kind: str, out: str | None) -> str:
    name = f"moshikit-{kind}.parquet"
    return join_path(out, name) if out and not Path(out).suffix else name


def jobs_of(tasks: Sequence[Task]) -> list[Job]:
    """Tasks as local jobs (for the local commands reading a manifest)."""
    remote = [t.source for t in tasks if is_uri(t.source) or is_uri(t.output)]
    if remote:
        raise UsageError(f"{remote[0]}: URIs are read and written by the Ray runner only", hint="add --ray")
    return [Job(t.source, Path(t.output)) for t in tasks]
