"""The driver of a distributed job: a pool of Ray actors fed shards, retries when a worker
dies, live totals, and the job manifest flushed as files finish."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..filejobs import FileResult
from ..errors import MoshikitError
from .cluster import connect, require_ray
from .manifest import Task, read_result_manifest, write_result_manifest
from .storage import output_exists
from .pool import ActorPool
from .work import WorkSpec, batch_groups, file_row, probe


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
        todo = yield from self._replay_manifest()
        if not todo:
            self._flush(force=True)
            return
        was_connected = require_ray().is_initialized()
        ray = connect(self.opts.address)
        n_workers, cpus, gpus = self._resources(ray)
        pool = ActorPool(ray, self.spec, min(n_workers, len(todo)), cpus, gpus)
        try:
            # Workers load the model while the inputs are probed.
            probes = self._probe(ray, todo)
            if self._on_probe:
                self._on_probe(self.stats.total_audio_seconds)
            pending = self._shards(todo, probes, pool.size)
            while pending or pool.busy():
                pool.assign(pending, self.opts.queue_per_worker)
                if not pool.refs:
                    if not pool.replace():
                        raise MoshikitError("every Ray worker died; stopping (see the Ray logs)")
                if pool.start_timed_out(self.opts.start_timeout):
                    raise MoshikitError(f"no Ray worker started within {self.opts.start_timeout:.0f} s "
                                        f"(each asks for {cpus:g} CPU and {gpus:g} GPU)",
                                        hint="check `ray status`; lower --ray-cpus/--ray-gpus or add nodes")
                done, _ = ray.wait(list(pool.refs), num_returns=1, timeout=min(1.0, self.opts.flush_seconds))
                for ref in done:
                    for r in self._finished(pool, ref, pending):
                        if on_audio and r.status == "done":
                            on_audio(r.audio_seconds)
                        yield r
                self._flush()
        finally:
            self._flush(force=True)
            pool.kill_all()
            if not was_connected:
                ray.shutdown()

    def _replay_manifest(self) -> Iterator[RayResult]:
        """Yield what an earlier run finished (its outputs still there); return what is left to do."""
        earlier = read_result_manifest(self.opts.manifest) if self.opts.manifest else {}
        self._rows = dict(earlier)
        todo: list[Task] = []
        for t in self.tasks:
            old = earlier.get(t.source)
            if (not self.spec.overwrite and old and old.get("status") in ("done", "skipped")
                    and old.get("output") == t.output and all(output_exists(o) for o in self.spec.outputs(t.output))):
                yield self._record({**old, "status": "skipped"})
            else:
                todo.append(t)
        return todo

    def _finished(self, pool: ActorPool, ref, pending: deque) -> Iterator[RayResult]:
        """One call came back: a worker ready, a shard's rows, a task error, or a dead worker."""
        if ref not in pool.refs:  # its worker's death was handled already
            return
        kind, key, shard = pool.refs.pop(ref)
        a = pool.actors.get(key)
        try:
            value = pool.ray.get(ref)
        except pool.died:
            if a is not None:
                yield from self._lost(pool, a, pending)
                pool.replace_dead()
            return
        except pool.task_error as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if kind == "ready":
                if isinstance(cause, MoshikitError):
                    raise cause from None
                raise MoshikitError(f"a Ray worker could not load the model ({type(cause).__name__}: "
                                    f"{str(cause).splitlines()[0][:160]})") from None
            a["inflight"] = [x for x in a["inflight"] if x[0] != ref]
            for t in shard[0]:
                yield self._record(file_row(FileResult(t.source, None, "failed",
                                                       f"{t.source}: {str(cause).splitlines()[0][:160]}")))
            return
        if kind == "ready":
            pool.mark_ready(a, value)
            self.workers.append(value)
            self.stats.nodes.setdefault(value["node_id"], NodeStats(self._label(value["node_id"])))
            self.stats.nodes[value["node_id"]].workers += 1
            if self._on_worker:
                self._on_worker(value)
            return
        a["inflight"] = [x for x in a["inflight"] if x[0] != ref]
        for row in value:
            yield self._record(row)

    def _lost(self, pool: ActorPool, a: dict, pending: deque) -> Iterator[RayResult]:
        """A dead worker: its unfinished shards come back as single files, attempt + 1."""
        self.stats.worker_deaths += 1
        for tasks, attempt in pool.remove(a):
            for t in tasks:
                if attempt >= self.opts.max_attempts:
                    yield self._record(file_row(FileResult(
                        t.source, None, "failed",
                        f"{t.source}: its worker died {attempt} times while on it (see the Ray logs)"), attempts=attempt))
                else:
                    self.stats.retried_files += 1
                    pending.appendleft(([t], attempt + 1))

    def summary_extra(self) -> dict:
        return {"nodes": self.stats.node_rows(), "workers": len(self.workers),
                "probed_audio_seconds": round(self.stats.total_audio_seconds, 3),
                "worker_deaths": self.stats.worker_deaths, "retried_files": self.stats.retried_files,
                "manifest": self.opts.manifest}
