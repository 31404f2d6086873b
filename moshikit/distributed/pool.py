"""The Ray actors of one job: started, fed shards, replaced when they die, killed at the end."""

from __future__ import annotations

import time
from collections import deque

from .work import Worker, WorkSpec


class ActorPool:
    """``refs`` maps each pending Ray call to ``(kind, actor key, shard)``: kind ``ready`` for a
    worker's model load, ``run`` for a shard. ``actors`` holds each actor's handle, whether it
    is ready, and its shards in flight."""

    def __init__(self, ray, spec: WorkSpec, size: int, cpus: float, gpus: float) -> None:
        from ray import exceptions as rex

        self.ray = ray
        self.spec = spec
        self.size = size
        self.died = tuple(getattr(rex, n) for n in ("RayActorError", "ActorUnavailableError", "WorkerCrashedError",
                                                    "ObjectLostError", "NodeDiedError") if hasattr(rex, n))
        self.task_error = rex.RayTaskError
        self.remote_cls = ray.remote(Worker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                                     max_task_retries=0, max_concurrency=2,
                                                     scheduling_strategy="SPREAD")
        self.actors: dict[int, dict] = {}
        self.refs: dict[object, tuple] = {}
        self.replacements = 0
        self.limit = size * 2 + 4  # replacements before the job gives up
        self.last_ready = time.perf_counter()
        for _ in range(size):
            self.start()

    def start(self) -> None:
        h = self.remote_cls.remote(self.spec)
        a = {"handle": h, "ready": False, "inflight": [], "info": None, "started": time.perf_counter()}
        self.actors[id(a)] = a
        self.refs[h.load.remote()] = ("ready", id(a), None)

    def replace(self) -> bool:
        """A new actor when none is left working; False once too many have died."""
        if self.replacements > self.limit:
            return False
        self.replacements += 1
        self.start()
        return True

    def replace_dead(self) -> None:
        self.replacements += 1
        if self.replacements <= self.limit:
            self.start()

    def busy(self) -> bool:
        return any(a["inflight"] for a in self.actors.values())

    def mark_ready(self, a: dict, info: dict) -> None:
        a["ready"] = True
        a["info"] = info
        self.last_ready = time.perf_counter()

    def start_timed_out(self, timeout: float) -> bool:
        return not any(a["ready"] for a in self.actors.values()) and time.perf_counter() - self.last_ready > timeout

    def assign(self, pending: deque, queue_per_worker: int) -> None:
        """Shards to ready actors; a second queued shard only when the idle (or still
        loading) workers have theirs."""
        for key, a in self.actors.items():
            while a["ready"] and pending and (not a["inflight"] or (
                    len(a["inflight"]) < queue_per_worker and len(pending) > self.idle())):
                shard = pending.popleft()
                ref = a["handle"].run.remote(shard[0], shard[1])
                a["inflight"].append((ref, shard))
                self.refs[ref] = ("run", key, shard)

    def idle(self) -> int:
        return sum(1 for b in self.actors.values() if not b["inflight"])

    def remove(self, a: dict) -> list[tuple]:
        """Forget a dead actor; returns its unfinished shards."""
        shards = []
        for ref, shard in a["inflight"]:
            self.refs.pop(ref, None)
            shards.append(shard)
        a["inflight"] = []
        for k in [k for k, v in self.actors.items() if v is a]:
            del self.actors[k]
        for ref in [r for r, v in self.refs.items() if v[0] == "ready" and v[1] == id(a)]:
            self.refs.pop(ref)
        return shards

    def kill_all(self) -> None:
        for a in self.actors.values():
            try:
                self.ray.kill(a["handle"], no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
