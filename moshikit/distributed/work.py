"""The work of a distributed job, as it runs on a worker: stage a shard's files, run the
local library function over them, upload the outputs, one record per file."""

from __future__ import annotations

import os
import posixpath
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..filejobs import FileResult, Job
from ..errors import MoshikitError
from .manifest import Task
from .storage import ATOMIC_PUT, filesystem, is_uri, with_suffix


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
            side = [with_suffix(output, ".json")] if self.opts.fmt == "npy" else []
            return side + [output]
        return [with_suffix(output, f".{fmt}") for fmt in self.opts.formats]

    @property
    def overwrite(self) -> bool:
        return bool(getattr(self.opts, "overwrite", False))


def load_model(spec: WorkSpec):
    """The model a worker loads once for the job's kind."""
    if spec.kind == "encode":
        from ..codec import load_codec

        return load_codec(**spec.load)
    if spec.kind == "transcribe":
        from ..stt import load_stt

        model = load_stt(**spec.load)
        if not spec.opts.batch_size:  # the local command's default, for the device this worker got
            spec.opts.batch_size = 16 if model.lm.info.device not in ("cpu", None) else 4
        return model
    raise ValueError(f"unknown work kind {spec.kind!r}")


def run_library(spec: WorkSpec, model, jobs: list[Job]) -> Iterator[FileResult]:
    """The local library function of the job's kind over ``jobs``."""
    if spec.kind == "encode":
        from ..codec import encode_files

        return encode_files(jobs, model, spec.opts)
    from ..stt import transcribe_files

    return transcribe_files(jobs, model, spec.opts)


@dataclass
class Staged:
    """A task made local: its job (None when nothing is left to run) or its result already."""

    task: Task
    job: Job | None = None  # None: nothing to run (skipped or failed while fetching)
    result: dict | None = None
    local_dir: str | None = None


def stage(spec: WorkSpec, tasks: Sequence[Task], tmp_root: str) -> list[Staged]:
    """Fetch remote inputs to local files and give remote outputs a local place; inputs
    whose remote outputs all exist are skipped here. Local paths pass through."""
    staged = []
    for i, t in enumerate(tasks):
        s = Staged(t)
        try:
            remote_out = is_uri(t.output)
            if remote_out and not spec.overwrite:
                fs, _ = filesystem(t.output)
                if all(fs.exists(filesystem(o)[1]) for o in spec.outputs(t.output)):
                    s.result = file_row(FileResult(t.source, t.output, "skipped"))
                    staged.append(s)
                    continue
            src = t.source
            if is_uri(src) or remote_out:
                s.local_dir = tempfile.mkdtemp(prefix=f"moshikit-{i}-", dir=tmp_root)
            if is_uri(src):  # the same base name: token headers record it
                fs, path = filesystem(src)
                src = os.path.join(s.local_dir, "in", posixpath.basename(path))
                os.makedirs(os.path.dirname(src))
                fs.get_file(path, src)
            out = os.path.join(s.local_dir, "out", posixpath.basename(t.output)) if remote_out else t.output
            s.job = Job(src, Path(out))
        except (OSError, MoshikitError) as exc:
            s.result = file_row(FileResult(t.source, t.output, "failed", f"{t.source}: cannot fetch it ({exc})"))
        staged.append(s)
    return staged


def upload(spec: WorkSpec, s: Staged, row: dict) -> dict:
    """Put a staged job's local outputs at their remote place (each put is atomic)."""
    if row["status"] != "done" or not is_uri(s.task.output):
        return row
    try:
        for remote, local in zip(spec.outputs(s.task.output), spec.outputs(str(s.job.output))):
            fs, path = filesystem(remote)
            proto = remote.split("://", 1)[0]
            if proto in ATOMIC_PUT:
                fs.put_file(local, path)
            else:
                tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.partial-{os.getpid()}"
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
                fs.put_file(local, tmp)
                fs.mv(tmp, path)
    except OSError as exc:
        row.update(status="failed", error=f"{s.task.output}: cannot upload it ({str(exc)[:120]})")
    return row


def file_row(r: FileResult, node: str = "", attempts: int = 1) -> dict:
    """A file's outcome as a manifest row."""
    return {"source": r.source, "output": r.output, "status": r.status, "error": r.error,
            "duration": float(r.audio_seconds), "frames": int(r.frames), "seconds": float(r.seconds),
            "node": node, "attempts": attempts}


def probe(sources: Sequence[str]) -> list[dict]:
    """Length (samples at 24 kHz) and channels of each input, or why it cannot be opened.

    Runs as light Ray tasks on the workers: the driver plans shards from it (so batches
    are formed exactly as the local command forms them) and knows the audio hours ahead.
    """
    from ..audio import open_audio

    out = []
    for src in sources:
        try:
            if is_uri(src):
                import soundfile as sf

                fs, path = filesystem(src)
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
    from ..codec import CHUNK_FRAMES

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
              staged: list[Staged] | None = None, lock: threading.Lock | None = None) -> list[dict]:
    """One shard on one worker: the library function over the staged files, one record per
    file. An unexpected error fails only the files it touched (retried one by one)."""
    tmp_root = None
    if staged is None:
        tmp_root = tempfile.mkdtemp(prefix="moshikit-shard-")
        staged = stage(spec, tasks, tmp_root)
    by_job: dict[str, Staged] = {s.job.source: s for s in staged if s.job is not None}
    rows: dict[str, dict] = {s.task.source: s.result for s in staged if s.result is not None}

    def take(r: FileResult) -> None:
        s = by_job[r.source]
        row = file_row(FileResult(s.task.source, s.task.output if r.output else None, r.status, r.error,
                              r.audio_seconds, r.frames, r.seconds), node, attempts)
        rows[s.task.source] = upload(spec, s, row)

    def run(jobs: list[Job]) -> None:
        if lock is None:
            for r in run_library(spec, model, jobs):
                take(r)
        else:
            with lock:
                for r in run_library(spec, model, jobs):
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
                    rows[s.task.source] = file_row(FileResult(s.task.source, None, "failed", msg), node, attempts)
    finally:
        if tmp_root:
            import shutil

            shutil.rmtree(tmp_root, ignore_errors=True)
    return [rows.get(t.source) or file_row(FileResult(t.source, None, "failed", f"{t.source}: no result"), node, attempts)
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
