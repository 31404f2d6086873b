"""``encode`` and ``transcribe`` over a Ray cluster.

The work is the same as the local commands': each worker runs the library function
(``codec.encode_files`` or ``stt.transcribe_files``) on a shard of files, so outputs are
byte for byte what the local command writes. What this module adds is around it:

* inputs: local paths and trees (mapped exactly as the local command maps them),
  manifest files (one path or URI a line, or a CSV/Parquet column) and fsspec URIs;
* a pool of Ray actors, each loading the model once and reusing it for every shard it is
  given; a worker's inputs on remote storage are fetched (and its outputs uploaded) in a
  second thread while the model works on the previous shard;
* scheduling: shards go to whichever actor is free (at most two queued per actor), so
  fast nodes take more; an actor that dies has its unfinished shards split into single
  files and retried on the others (a replacement actor is started), and a file that
  kills its worker ``max_attempts`` times is recorded as failed instead of looping;
* a Parquet manifest (source, output, duration, frames, status, error, node, ...) written
  atomically every few seconds and at the end: a rerun skips what it lists as done (and
  the worker skips complete outputs that it does not list yet).

Why actors and not Ray Data: the local library already streams long inputs in bounded
memory and batches short ones (STT refills batch slots as files end). Ray Data's
row/batch model would ship whole decoded files through the object store (an hour of
24 kHz float32 audio is 345 MB) and cut the slot refill at every batch boundary, and its
per-row results do not map onto per-file outcomes with retries as directly as a shard
call that returns one record per file.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .audio import AUDIO_EXTENSIONS
from .codec import FileResult, Job
from .errors import BackendUnavailable, MoshikitError, UsageError

INSTALL_HINT = 'pip install "moshikit[ray]"  (Ray and pyarrow, on the driver and every node)'
MANIFEST_COLUMNS = ("source", "output", "status", "error", "duration", "frames", "seconds", "node", "attempts")
_ATOMIC_PUT = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")


def require_ray():
    """Import Ray, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable("--ray needs Ray, which is not installed here", hint=INSTALL_HINT) from None
    return ray


# ---------------------------------------------------------------- inputs


def is_uri(name: str) -> bool:
    """``scheme://...`` (fsspec), but not Windows drive letters or plain paths."""
    head, sep, _ = name.partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


def _fs(uri: str):
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"{uri}: reading URIs needs fsspec", hint='pip install "moshikit[ray]" fsspec '
                         "plus the filesystem's package (s3fs, gcsfs, adlfs...)") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"{uri}: {str(exc).splitlines()[0]}") from None
    return fs, path


def _join(root: str, rel: str) -> str:
    return posixpath.join(root.rstrip("/"), rel) if is_uri(root) else os.path.join(root, rel)


def _with_suffix(name: str, suffix: str) -> str:
    head, base = (name.rsplit("/", 1) if "/" in name else ("", name))
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return f"{head}/{stem}{suffix}" if head or name.startswith("/") else f"{stem}{suffix}"


def read_manifest(path: str, column: str | None = None) -> list[str]:
    """Paths or URIs listed in ``path``: a text file (one a line; blank lines and ``#``
    comments skipped), or a column of a CSV or Parquet file (``column``; default the
    first of path, source, uri, file, audio, else the first column)."""
    lower = path.lower()
    opener = _fs(path)[0].open if is_uri(path) else open
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            with opener(_fs(path)[1] if is_uri(path) else path, "rb") as f:
                table = pq.read_table(f)
            col = _pick_column(list(table.column_names), column, path)
            values = table.column(col).to_pylist()
        elif lower.endswith((".csv", ".tsv")):
            with opener(_fs(path)[1] if is_uri(path) else path, "r", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if lower.endswith(".tsv") else ",")
                col = _pick_column(list(reader.fieldnames or []), column, path)
                values = [row[col] for row in reader]
        else:
            with opener(_fs(path)[1] if is_uri(path) else path, "r") as f:
                values = [line.strip() for line in f]
            values = [v for v in values if v and not v.startswith("#")]
    except FileNotFoundError:
        raise UsageError(f"{path}: no such manifest file") from None
    except ImportError:
        raise BackendUnavailable(f"{path}: reading Parquet needs pyarrow", hint=INSTALL_HINT) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path}: cannot read the manifest ({str(exc).splitlines()[0][:120]})") from None
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def _pick_column(names: list[str], column: str | None, where: str) -> str:
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
    from .codec import plan, walk_tree

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
                dst = out if dst == plan_out else _join(out, os.path.relpath(dst, plan_out))
            # Workers run elsewhere (another cwd, another machine): absolute local paths.
            tasks.append(Task(os.path.abspath(job.source), dst if is_uri(dst) else os.path.abspath(dst)))
    for item in (i for i in inputs if is_uri(i)):
        fs, path = _fs(item)
        try:
            if fs.isdir(path):
                proto = item.split("://", 1)[0]
                found = sorted(p for p in fs.find(path) if _wanted(posixpath.basename(p), include, extensions))
                if not found:
                    failed.append(FileResult(item, None, "failed", f"{item}: no matching files in this directory"))
                for p in found:
                    rel = posixpath.relpath(p, path)
                    src = f"{proto}://{p}" if not p.startswith(f"{proto}://") else p
                    dst = _join(out, _with_suffix(rel, suffix)) if out else _with_suffix(src, suffix)
                    tasks.append(Task(src, dst))
            elif fs.exists(path):
                dst = _join(out, _with_suffix(posixpath.basename(path), suffix)) if out else _with_suffix(item, suffix)
                tasks.append(Task(item, dst))
            else:
                failed.append(FileResult(item, None, "failed", f"{item}: no such file or directory"))
        except OSError as exc:
            failed.append(FileResult(item, None, "failed", f"{item}: {str(exc).splitlines()[0][:120]}"))
    if manifest:
        tasks += _plan_manifest(list(manifest), out, suffix, failed)
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


def _wanted(name: str, include: Sequence[str], extensions: Sequence[str]) -> bool:
    import fnmatch

    if name.startswith("."):
        return False
    if include:
        return any(fnmatch.fnmatch(name, pat) for pat in include)
    return name.lower().endswith(tuple(extensions))


def _plan_manifest(entries: list[str], out: str | None, suffix: str, failed: list[FileResult]) -> list[Task]:
    def key(e: str) -> str:
        return e.split("://", 1)[1] if is_uri(e) else os.path.abspath(e)

    entries = [e if is_uri(e) else os.path.abspath(e) for e in entries]
    if out is not None and not is_uri(out):
        out = os.path.abspath(out)
    if out is None:
        return [Task(e, _with_suffix(e, suffix)) for e in entries]
    parents = [posixpath.dirname(key(e)) if is_uri(e) else os.path.dirname(key(e)) for e in entries]
    try:
        root = os.path.commonpath(parents) if parents else ""
    except ValueError:  # mixed absolute and relative keys
        root = ""
    tasks = []
    for e in entries:
        rel = os.path.relpath(key(e), root) if root else key(e).lstrip("/")
        tasks.append(Task(e, _join(out, _with_suffix(rel.replace(os.sep, "/"), suffix))))
    return tasks


# ---------------------------------------------------------------- the work (runs on workers)


@dataclass
class WorkSpec:
    """What every worker does: ``kind`` encode|transcribe, the loader's keyword arguments
    (``codec.load_codec`` or ``stt.load_stt``) and the library's options."""

    kind: str
    load: dict
    opts: object

    def outputs(self, output: str) -> list[str]:
        """Every file one input produces (the completion marker last)."""
        if self.kind == "encode":
            side = [_with_suffix(output, ".json")] if self.opts.fmt == "npy" else []
            return side + [output]
        return [_with_suffix(output, f".{fmt}") for fmt in self.opts.formats]

    @property
    def overwrite(self) -> bool:
        return bool(getattr(self.opts, "overwrite", False))


def load_model(spec: WorkSpec):
    if spec.kind == "encode":
        from .codec import load_codec

        return load_codec(**spec.load)
    if spec.kind == "transcribe":
        from .stt import load_stt

        model = load_stt(**spec.load)
        if not spec.opts.batch_size:  # the local command's default, for the device this worker got
            spec.opts.batch_size = 16 if model.lm.info.device not in ("cpu", None) else 4
        return model
    raise ValueError(f"unknown work kind {spec.kind!r}")


def _run_library(spec: WorkSpec, model, jobs: list[Job]) -> Iterator[FileResult]:
    if spec.kind == "encode":
        from .codec import encode_files

        return encode_files(jobs, model, spec.opts)
    from .stt import transcribe_files

    return transcribe_files(jobs, model, spec.opts)


@dataclass
class _Staged:
    task: Task
    job: Job | None = None  # None: nothing to run (skipped or failed while fetching)
    result: dict | None = None
    local_dir: str | None = None


def stage(spec: WorkSpec, tasks: Sequence[Task], tmp_root: str) -> list[_Staged]:
    """Fetch remote inputs to local files and give remote outputs a local place; inputs
    whose remote outputs all exist are skipped here. Local paths pass through."""
    staged = []
    for i, t in enumerate(tasks):
        s = _Staged(t)
        try:
            remote_out = is_uri(t.output)
            if remote_out and not spec.overwrite:
                fs, _ = _fs(t.output)
                if all(fs.exists(_fs(o)[1]) for o in spec.outputs(t.output)):
                    s.result = _row(FileResult(t.source, t.output, "skipped"))
                    staged.append(s)
                    continue
            src = t.source
            if is_uri(src) or remote_out:
                s.local_dir = tempfile.mkdtemp(prefix=f"moshikit-{i}-", dir=tmp_root)
            if is_uri(src):  # the same base name: token headers record it
                fs, path = _fs(src)
                src = os.path.join(s.local_dir, "in", posixpath.basename(path))
                os.makedirs(os.path.dirname(src))
                fs.get_file(path, src)
            out = os.path.join(s.local_dir, "out", posixpath.basename(t.output)) if remote_out else t.output
            s.job = Job(src, Path(out))
        except (OSError, MoshikitError) as exc:
            s.result = _row(FileResult(t.source, t.output, "failed", f"{t.source}: cannot fetch it ({exc})"))
        staged.append(s)
    return staged


def upload(spec: WorkSpec, s: _Staged, row: dict) -> dict:
    """Put a staged job's local outputs at their remote place (each put is atomic)."""
    if row["status"] != "done" or not is_uri(s.task.output):
        return row
    try:
        for remote, local in zip(spec.outputs(s.task.output), spec.outputs(str(s.job.output))):
            fs, path = _fs(remote)
            proto = remote.split("://", 1)[0]
            if proto in _ATOMIC_PUT:
                fs.put_file(local, path)
            else:
                tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.partial-{os.getpid()}"
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
                fs.put_file(local, tmp)
                fs.mv(tmp, path)
    except OSError as exc:
        row.update(status="failed", error=f"{s.task.output}: cannot upload it ({str(exc)[:120]})")
    return row


def _row(r: FileResult, node: str = "", attempts: int = 1) -> dict:
    return {"source": r.source, "output": r.output, "status": r.status, "error": r.error,
            "duration": float(r.audio_seconds), "frames": int(r.frames), "seconds": float(r.seconds),
            "node": node, "attempts": attempts}


def probe(sources: Sequence[str]) -> list[dict]:
    """Length (samples at 24 kHz) and channels of each input, or why it cannot be opened.

    Runs as light Ray tasks on the workers: the driver plans shards from it (so batches
    are formed exactly as the local command forms them) and knows the audio hours ahead.
    """
    from .audio import open_audio

    out = []
    for src in sources:
        try:
            if is_uri(src):
                import soundfile as sf

                fs, path = _fs(src)
                with fs.open(path, "rb") as f, sf.SoundFile(f) as snd:
                    rate, frames, channels = snd.samplerate, snd.frames, snd.channels
                out.append({"frames": int(round(frames * 24000 / rate)), "channels": int(channels), "error": None})
            else:
                a = open_audio(src)
                out.append({"frames": a.target_frames, "channels": a.channels, "error": None})
                a.close()
        except MoshikitError as exc:
            out.append({"frames": None, "channels": None, "error": str(exc)})
        except Exception:  # noqa: BLE001 - a remote format soundfile cannot read: the worker will tell
            out.append({"frames": None, "channels": None, "error": None})
    return out


def batch_groups(spec: WorkSpec, tasks: Sequence[Task], probes: Sequence[dict]) -> list[list[Task]]:
    """Runs of files that must share a shard so that each shard batches them as the local
    command does (``codec.encode_files``: consecutive short inputs, ``batch_size`` channels
    a batch; long inputs stream alone meanwhile). Outside encode, every file stands alone."""
    from .codec import CHUNK_FRAMES

    batch = int(getattr(spec.opts, "batch_size", 1) or 1)
    if spec.kind != "encode" or batch <= 1:
        return [[t] for t in tasks]
    limit = CHUNK_FRAMES * 1920
    split = getattr(spec.opts, "channels", "mix") == "split"
    groups: list[list[Task]] = []
    cur: list[Task] = []
    count = 0
    for t, p in zip(tasks, probes):
        cur.append(t)
        if p.get("error") is None and p.get("frames") is not None and p["frames"] <= limit:
            count += p["channels"] if split else 1
            if count >= batch:
                groups.append(cur)
                cur, count = [], 0
        elif count == 0:
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)
    return groups


def run_tasks(spec: WorkSpec, model, tasks: Sequence[Task], *, node: str = "", attempts: int = 1,
              staged: list[_Staged] | None = None, lock: threading.Lock | None = None) -> list[dict]:
    """One shard on one worker: the library function over the staged files, one record per
    file. An unexpected error fails only the files it touched (retried one by one)."""
    tmp_root = None
    if staged is None:
        tmp_root = tempfile.mkdtemp(prefix="moshikit-shard-")
        staged = stage(spec, tasks, tmp_root)
    by_job: dict[str, _Staged] = {s.job.source: s for s in staged if s.job is not None}
    rows: dict[str, dict] = {s.task.source: s.result for s in staged if s.result is not None}

    def take(r: FileResult) -> None:
        s = by_job[r.source]
        row = _row(FileResult(s.task.source, s.task.output if r.output else None, r.status, r.error,
                              r.audio_seconds, r.frames, r.seconds), node, attempts)
        rows[s.task.source] = upload(spec, s, row)

    def run(jobs: list[Job]) -> None:
        if lock is None:
            for r in _run_library(spec, model, jobs):
                take(r)
        else:
            with lock:
                for r in _run_library(spec, model, jobs):
                    take(r)

    jobs = [s.job for s in staged if s.job is not None]
    try:
        try:
            run(jobs)
        except MoshikitError:
            raise
        except Exception:  # noqa: BLE001 - a bug or a backend crash on one input: isolate it
            for job in jobs:
                if by_job[job.source].task.source in rows:
                    continue
                try:
                    run([job])
                except Exception as exc:  # noqa: BLE001
                    s = by_job[job.source]
                    msg = f"{s.task.source}: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                    rows[s.task.source] = _row(FileResult(s.task.source, None, "failed", msg), node, attempts)
    finally:
        if tmp_root:
            import shutil

            shutil.rmtree(tmp_root, ignore_errors=True)
    return [rows.get(t.source) or _row(FileResult(t.source, None, "failed", f"{t.source}: no result"), node, attempts)
            for t in tasks]


class Worker:
    """The actor: loads the model once; ``run`` stages a shard (fetch) outside the model
    lock, so a second queued shard downloads while the first one is on the model."""

    def __init__(self, spec: WorkSpec) -> None:
        self.spec = spec
        self.model = None
        self.lock = threading.Lock()
        self.tmp = tempfile.mkdtemp(prefix="moshikit-worker-")

    def load(self) -> dict:
        import ray

        with self.lock:
            if self.model is None:
                self.model = load_model(self.spec)
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "host": socket.gethostname(), "pid": os.getpid(),
                "ip": ray.util.get_node_ip_address()}

    def run(self, tasks: list[Task], attempts: int = 1) -> list[dict]:
        import ray
        import shutil

        node = ray.get_runtime_context().get_node_id()
        shard_dir = tempfile.mkdtemp(prefix="shard-", dir=self.tmp)
        try:
            staged = stage(self.spec, tasks, shard_dir)
            return run_tasks(self.spec, self.model, tasks, node=node, attempts=attempts, staged=staged,
                             lock=self.lock)
        finally:
            shutil.rmtree(shard_dir, ignore_errors=True)


# ---------------------------------------------------------------- the driver


@dataclass
class RayOptions:
    address: str | None = None  # None: $RAY_ADDRESS or "auto" (an existing cluster); "local": start one here
    workers: int | None = None  # actors; default as many as the cluster's resources fit
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs and the device allows
    shard_size: int | None = None  # files per call; default from the job's size
    queue_per_worker: int = 2
    max_attempts: int = 3  # a file that kills its worker this many times fails
    manifest: str | None = None  # where the Parquet manifest goes
    flush_seconds: float = 10.0
    start_timeout: float = 300.0


@dataclass
class RayResult(FileResult):
    node: str = ""
    attempts: int = 1


@dataclass
class NodeStats:
    label: str
    files: int = 0
    audio_seconds: float = 0.0
    busy_seconds: float = 0.0
    workers: int = 0


@dataclass
class JobStats:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    nodes: dict[str, NodeStats] = field(default_factory=dict)
    worker_deaths: int = 0
    retried_files: int = 0
    total_audio_seconds: float = 0.0  # of the files still to do, once probed

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.started

    def node_rows(self) -> list[dict]:
        wall = self.wall
        return [{"node": n.label, "workers": n.workers, "files": n.files, "audio_seconds": round(n.audio_seconds, 3),
                 "x_real_time": round(n.audio_seconds / wall, 2) if wall > 0 else None}
                for n in sorted(self.nodes.values(), key=lambda n: n.label)]


def read_result_manifest(path: str) -> dict[str, dict]:
    """Rows of an earlier run's manifest by source ({} when there is none)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BackendUnavailable("the job manifest needs pyarrow", hint=INSTALL_HINT) from None
    try:
        if is_uri(path):
            fs, p = _fs(path)
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
        fs, p = _fs(path)
        with tempfile.TemporaryDirectory() as d:
            local = os.path.join(d, "manifest.parquet")
            pq.write_table(table, local)
            fs.makedirs(posixpath.dirname(p), exist_ok=True)
            fs.put_file(local, p)
        return
    from .audio import atomic_path

    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, str(tmp))


def default_manifest(kind: str, out: str | None) -> str:
    name = f"moshikit-{kind}.parquet"
    return _join(out, name) if out and not Path(out).suffix else name


def _output_exists(path: str | None) -> bool:
    if not path:
        return False
    if is_uri(path):
        fs, p = _fs(path)
        return fs.exists(p)
    return os.path.exists(path)


RAY_TOKEN_HINT = ("if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token in "
                  "RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)")


def ray_token_available(env: dict | None = None) -> bool:
    """Whether Ray would find an authentication token in ``env`` (default: this process's):
    ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` (where
    ``ray.init()`` writes one when it starts a local cluster, and ``ray start --head`` then
    turns token authentication on)."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return True
    home = env.get("HOME") or str(Path.home())
    return Path(env.get("RAY_AUTH_TOKEN_PATH") or Path(home) / ".ray" / "auth_token").is_file()


def enable_ray_token_auth() -> bool:
    """Token authentication for this process when ``RAY_AUTH_MODE`` is unset and a token is
    available: what Ray does itself for a cluster it finds on this machine, and what a
    cluster started with that token (``ray start --head`` turns it on when it finds one)
    needs. A cluster without authentication still accepts such a client. Returns whether
    it was turned on here."""
    if os.environ.get("RAY_AUTH_MODE") is not None or not ray_token_available():
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray reads its configuration once, on import: read it again (what Ray does itself)
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass
    return True


def connect(address: str | None):
    """Connect to the cluster (``local`` starts a private one in this process)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address != "local":
        enable_ray_token_auth()
    auth = getattr(ray.exceptions, "AuthenticationError", ())  # () catches nothing
    try:
        if address == "local":
            ray.init(log_to_driver=False, include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except auth as exc:
        raise MoshikitError(f"the Ray cluster at {address} refused this machine's authentication "
                            f"({str(exc).split('.')[0][:160]})", hint=RAY_TOKEN_HINT) from None
    except ConnectionError as exc:
        hint = ("start one with `ray start --head` (then `ray start --address HEAD:6379` on each worker), pass "
                "--ray-address HOST:PORT, or --ray-address local")
        if address == "auto":
            raise MoshikitError("no running Ray cluster found from this machine", hint=hint) from None
        why = str(exc).splitlines()[0][:160]
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            raise MoshikitError(f"no Ray cluster at {address} ({why})", hint=hint) from None
        # Ray says the same whether nothing listens there or the cluster refused a client
        # without its token (its own log lines show which): name both.
        raise MoshikitError(f"cannot connect to the Ray cluster at {address} ({why})",
                            hint=f"{RAY_TOKEN_HINT}; if no cluster runs there, {hint}") from None
    return ray


class RayJob:
    """One distributed run. ``results()`` yields a ``RayResult`` per file as they finish;
    ``stats`` holds the live totals and per-node throughput."""

    def __init__(self, tasks: Sequence[Task], spec: WorkSpec, options: RayOptions | None = None,
                 on_worker: Callable[[dict], None] | None = None,
                 on_probe: Callable[[float], None] | None = None) -> None:
        self.tasks = list(tasks)
        self.spec = spec
        self.opts = options or RayOptions()
        self.stats = JobStats(total=len(self.tasks))
        self.workers: list[dict] = []  # info of every worker that started: node, host, pid
        self._on_worker = on_worker
        self._on_probe = on_probe
        self._rows: dict[str, dict] = {}
        self._last_flush = 0.0
        self._flush_cost = 0.0

    # -- manifest
    def _flush(self, force: bool = False) -> None:
        if not self.opts.manifest:
            return
        now = time.perf_counter()
        if force or now - self._last_flush >= max(self.opts.flush_seconds, 10 * self._flush_cost):
            write_result_manifest(self.opts.manifest, self._rows.values())
            self._last_flush = time.perf_counter()
            # A big manifest is rewritten less often: at most ~10% of the driver's time.
            self._flush_cost = self._last_flush - now

    def _record(self, row: dict) -> RayResult:
        old = self._rows.get(row["source"])
        if row["status"] == "skipped" and old and old.get("status") == "done":
            pass  # keep what the run that made it measured
        else:
            self._rows[row["source"]] = row
        st = self.stats
        if row["status"] == "done":
            st.done += 1
            st.audio_seconds += row["duration"] or 0.0
            if row.get("node"):
                n = st.nodes.setdefault(row["node"], NodeStats(self._label(row["node"])))
                n.files += 1
                n.audio_seconds += row["duration"] or 0.0
                n.busy_seconds += row["seconds"] or 0.0
        elif row["status"] == "skipped":
            st.skipped += 1
        else:
            st.failed += 1
        return RayResult(row["source"], row["output"], row["status"], row["error"], row["duration"] or 0.0,
                         row["frames"] or 0, row["seconds"] or 0.0, self._label(row.get("node") or ""),
                         row.get("attempts") or 1)

    def _label(self, node_id: str) -> str:
        for w in self.workers:
            if w["node_id"] == node_id:
                return f"{w['ip']}/{node_id[:8]}"
        return node_id[:8]

    # -- planning
    def _shards(self, todo: list[Task], probes: list[dict], n_workers: int) -> deque:
        """Whole batch groups, about ``shard_size`` files a shard (default: ~4 shards a worker)."""
        size = self.opts.shard_size
        if not size:
            batch = int(getattr(self.spec.opts, "batch_size", 1) or 1)
            size = max(1, min(32, math.ceil(len(todo) / max(1, n_workers * 4))))
            size = max(size, min(batch, math.ceil(len(todo) / max(1, n_workers))))
        shards: deque = deque()
        cur: list[Task] = []
        for group in batch_groups(self.spec, todo, probes):
            cur += group
            if len(cur) >= size:
                shards.append((cur, 1))
                cur = []
        if cur:
            shards.append((cur, 1))
        return shards

    def _probe(self, ray, todo: list[Task]) -> list[dict]:
        """Probe every input on the cluster, in chunks, as zero-CPU tasks (headers only)."""
        remote = ray.remote(probe).options(num_cpus=0, max_retries=3)
        chunk = max(16, min(512, math.ceil(len(todo) / 64)))
        starts = deque(range(0, len(todo), chunk))
        limit = max(4, 2 * len([n for n in ray.nodes() if n.get("Alive")]))  # zero-CPU tasks: bound them
        parts: dict[int, list[dict]] = {}
        inflight: dict[object, int] = {}
        while starts or inflight:
            while starts and len(inflight) < limit:
                i = starts.popleft()
                inflight[remote.remote([t.source for t in todo[i : i + chunk]])] = i
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                parts[inflight.pop(ref)] = ray.get(ref)
        probes = [p for i in sorted(parts) for p in parts[i]]
        self.stats.total_audio_seconds = sum(p["frames"] or 0 for p in probes) / 24000
        return probes

    def _resources(self, ray) -> tuple[int, float, float]:
        res = ray.cluster_resources()
        cpus = self.opts.cpus_per_worker
        gpus = self.opts.gpus_per_worker
        device = str(self.spec.load.get("device") or "auto")
        if gpus is None:
            gpus = 1.0 if res.get("GPU", 0) >= 1 and device in ("auto", "cuda", "gpu") else 0.0
        fit = [int(res.get("CPU", 0) // cpus)] if cpus else []
        if gpus:
            fit.append(int(res.get("GPU", 0) // gpus))
        n = self.opts.workers or max(1, min(fit) if fit else 1)
        return n, cpus, gpus

    # -- running
    def results(self, on_audio: Callable[[float], None] | None = None) -> Iterator[RayResult]:
        earlier = read_result_manifest(self.opts.manifest) if self.opts.manifest else {}
        self._rows = dict(earlier)
        todo: list[Task] = []
        for t in self.tasks:
            old = earlier.get(t.source)
            if (not self.spec.overwrite and old and old.get("status") in ("done", "skipped")
                    and old.get("output") == t.output and all(_output_exists(o) for o in self.spec.outputs(t.output))):
                yield self._record({**old, "status": "skipped"})
            else:
                todo.append(t)
        if not todo:
            self._flush(force=True)
            return
        was_connected = require_ray().is_initialized()
        ray = connect(self.opts.address)
        from ray import exceptions as rex

        died = tuple(getattr(rex, n) for n in ("RayActorError", "ActorUnavailableError", "WorkerCrashedError",
                                               "ObjectLostError", "NodeDiedError") if hasattr(rex, n))
        n_workers, cpus, gpus = self._resources(ray)
        n_workers = min(n_workers, len(todo))
        remote_cls = ray.remote(Worker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0,
                                                max_concurrency=2, scheduling_strategy="SPREAD")
        actors: dict[int, dict] = {}
        refs: dict[object, tuple] = {}
        spec_ref = self.spec
        replacements = [0]

        def start_actor() -> None:
            h = remote_cls.remote(spec_ref)
            a = {"handle": h, "ready": False, "inflight": [], "info": None, "started": time.perf_counter()}
            actors[id(a)] = a
            refs[h.load.remote()] = ("ready", id(a), None)

        for _ in range(n_workers):
            start_actor()
        last_ready = time.perf_counter()
        try:
            # Workers load the model while the inputs are probed.
            probes = self._probe(ray, todo)
            if self._on_probe:
                self._on_probe(self.stats.total_audio_seconds)
            pending = self._shards(todo, probes, n_workers)
            while pending or any(a["inflight"] for a in actors.values()):
                for key, a in actors.items():
                    # A second queued shard only when the idle (or still loading) workers have theirs.
                    def idle() -> int:
                        return sum(1 for b in actors.values() if not b["inflight"])

                    while a["ready"] and pending and (not a["inflight"] or (
                            len(a["inflight"]) < self.opts.queue_per_worker and len(pending) > idle())):
                        shard = pending.popleft()
                        ref = a["handle"].run.remote(shard[0], shard[1])
                        a["inflight"].append((ref, shard))
                        refs[ref] = ("run", key, shard)
                if not refs:
                    if replacements[0] > n_workers * 2 + 4:
                        raise MoshikitError("every Ray worker died; stopping (see the Ray logs)")
                    replacements[0] += 1
                    start_actor()
                if not any(a["ready"] for a in actors.values()) and time.perf_counter() - last_ready > self.opts.start_timeout:
                    raise MoshikitError(f"no Ray worker started within {self.opts.start_timeout:.0f} s "
                                        f"(each asks for {cpus:g} CPU and {gpus:g} GPU)",
                                        hint="check `ray status`; lower --ray-cpus/--ray-gpus or add nodes")
                done, _ = ray.wait(list(refs), num_returns=1, timeout=min(1.0, self.opts.flush_seconds))
                for ref in done:
                    if ref not in refs:  # its worker's death was handled already
                        continue
                    kind, key, shard = refs.pop(ref)
                    a = actors.get(key)
                    try:
                        value = ray.get(ref)
                    except died:
                        if a is not None:
                            yield from self._lost(a, actors, refs, pending)
                            replacements[0] += 1
                            if replacements[0] <= n_workers * 2 + 4:
                                start_actor()
                        continue
                    except rex.RayTaskError as exc:
                        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                        if kind == "ready":
                            if isinstance(cause, MoshikitError):
                                raise cause from None
                            raise MoshikitError(f"a Ray worker could not load the model ({type(cause).__name__}: "
                                                f"{str(cause).splitlines()[0][:160]})") from None
                        a["inflight"] = [x for x in a["inflight"] if x[0] != ref]
                        for t in shard[0]:
                            yield self._record(_row(FileResult(t.source, None, "failed",
                                                               f"{t.source}: {str(cause).splitlines()[0][:160]}")))
                        continue
                    if kind == "ready":
                        a["ready"] = True
                        last_ready = time.perf_counter()
                        a["info"] = value
                        self.workers.append(value)
                        self.stats.nodes.setdefault(value["node_id"], NodeStats(self._label(value["node_id"])))
                        self.stats.nodes[value["node_id"]].workers += 1
                        if self._on_worker:
                            self._on_worker(value)
                        continue
                    a["inflight"] = [x for x in a["inflight"] if x[0] != ref]
                    for row in value:
                        r = self._record(row)
                        if on_audio and r.status == "done":
                            on_audio(r.audio_seconds)
                        yield r
                self._flush()
        finally:
            self._flush(force=True)
            for a in actors.values():
                try:
                    ray.kill(a["handle"], no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if not was_connected:
                ray.shutdown()

    def _lost(self, a: dict, actors: dict, refs: dict, pending: deque) -> Iterator[RayResult]:
        """A dead worker: its unfinished shards come back as single files, attempt + 1."""
        self.stats.worker_deaths += 1
        for ref, (tasks, attempt) in a["inflight"]:
            refs.pop(ref, None)
            for t in tasks:
                if attempt >= self.opts.max_attempts:
                    yield self._record(_row(FileResult(
                        t.source, None, "failed",
                        f"{t.source}: its worker died {attempt} times while on it (see the Ray logs)"), attempts=attempt))
                else:
                    self.stats.retried_files += 1
                    pending.appendleft(([t], attempt + 1))
        a["inflight"] = []
        for k in [k for k, v in actors.items() if v is a]:
            del actors[k]
        for ref in [r for r, v in refs.items() if v[0] == "ready" and v[1] == id(a)]:
            refs.pop(ref)

    def summary_extra(self) -> dict:
        return {"nodes": self.stats.node_rows(), "workers": len(self.workers),
                "probed_audio_seconds": round(self.stats.total_audio_seconds, 3),
                "worker_deaths": self.stats.worker_deaths, "retried_files": self.stats.retried_files,
                "manifest": self.opts.manifest}


def jobs_of(tasks: Sequence[Task]) -> list[Job]:
    """Tasks as local jobs (for the local commands reading a manifest)."""
    remote = [t.source for t in tasks if is_uri(t.source) or is_uri(t.output)]
    if remote:
        raise UsageError(f"{remote[0]}: URIs are read and written by the Ray runner only", hint="add --ray")
    return [Job(t.source, Path(t.output)) for t in tasks]


__all__ = ["RayJob", "RayOptions", "RayResult", "Task", "WorkSpec", "connect", "jobs_of", "plan_tasks",
           "read_manifest", "read_result_manifest", "require_ray", "run_tasks", "write_result_manifest"]
