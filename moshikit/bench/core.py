"""What every bench stage shares: result rows and their statistics, the environment they were
measured in, peak memory, the timing loop, histograms, saving and comparing runs."""

from __future__ import annotations

import json
import os
import platform as _platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..version import __version__


SCHEMA = "moshikit.bench/1"
FRAME_SECONDS = 0.08
CONVENTION = "x real time = audio seconds / wall seconds (Kyutai's 'RTF'; higher is faster)"


@dataclass
class Stats:
    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stats":
        a = np.asarray(samples, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no samples")
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(int(a.size), float(a.mean()), float(p50), float(p90), float(p99), float(a.min()), float(a.max()))


@dataclass
class Row:
    stage: str  # codec | lm | chat | stt
    name: str  # what ran, e.g. "moshikit torch" or "moshi MimiModel (reference)"
    task: str  # e.g. "encode", "decode", "stream encode+decode", "step"
    unit: str  # "x real time" | "ms"
    stats: Stats
    params: dict = field(default_factory=dict)  # batch, seconds, device, dtype ...
    memory: dict = field(default_factory=dict)  # peak_rss_mb, cuda_max_allocated_mb
    samples: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k in ("batch", "seconds", "frames"))
        return f"{self.stage}|{self.name}|{self.task}|{extra}"

    @property
    def headline(self) -> float:
        """The figure to compare: median throughput, or median latency."""
        return self.stats.p50


@dataclass
class BenchResult:
    env: dict
    synthetic: bool
    rows: list[Row] = field(default_factory=list)
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)  # what was not measured, and why
    schema: str = SCHEMA
    convention: str = CONVENTION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "BenchResult":
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a moshikit benchmark file (schema {data.get('schema')!r})")
        rows = [Row(**{**r, "stats": Stats(**r["stats"])}) for r in data["rows"]]
        return cls(env=data["env"], synthetic=data["synthetic"], rows=rows, interrupted=data.get("interrupted", False),
                   notes=list(data.get("notes") or []))


def compare(new: BenchResult, old: BenchResult) -> list[tuple[Row, Row, float]]:
    """Rows present in both runs with the ratio new/old expressed as a speed-up (>1 is better)."""
    old_rows = {r.key: r for r in old.rows}
    out = []
    for r in new.rows:
        o = old_rows.get(r.key)
        if o is None or o.unit != r.unit or o.headline == 0 or r.headline == 0:
            continue
        ratio = r.headline / o.headline if r.unit == "x real time" else o.headline / r.headline
        out.append((r, o, ratio))
    return out


# ---------------------------------------------------------------- environment and memory


def environment(extra: dict | None = None) -> dict:
    from ..platform import detect

    plat = detect()
    env = {
        "moshikit": __version__, "python": sys.version.split()[0], "os": f"{_platform.system()} {_platform.release()}",
        "cpu": plat.cpu, "cores": plat.cores, "ram_gb": round(plat.ram_gb or 0, 1),
        "gpus": [asdict(g) for g in plat.cuda], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "NO_TORCH_COMPILE": os.environ.get("NO_TORCH_COMPILE"), "NO_CUDA_GRAPH": os.environ.get("NO_CUDA_GRAPH"),
    }
    for mod in ("torch", "moshi", "moshi_mlx", "mlx", "rustymimi"):
        env[mod] = _version(mod)
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["cuda"] = torch.version.cuda
            env["driver"] = _nvidia_driver()
    env.update(extra or {})
    return env


def _version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(mod.replace("_", "-") if mod != "moshi_mlx" else "moshi_mlx")
    except PackageNotFoundError:
        return None


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            return f.readline().strip()
    except OSError:
        return None


class PeakMemory:
    """Peak resident memory (and CUDA max allocated) over a block, where the OS allows a reset."""

    def __enter__(self) -> "PeakMemory":
        try:  # Linux: writing 5 resets the peak RSS (VmHWM) of this process
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        self.result = {}
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.result["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            self.result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                self.result["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


# ---------------------------------------------------------------- measurement core


Clock = Callable[[], float]


def measure(fn: Callable[[], object], *, repeats: int, warmup: int = 1, clock: Clock = time.perf_counter,
            sync: Callable[[], None] | None = None) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = []
    for _ in range(repeats):
        t = clock()
        fn()
        if sync:
            sync()
        out.append(clock() - t)
    return out


def load_average() -> float | None:
    """The 1-minute load average when a row is measured (other processes share the CPU)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def throughput_row(stage: str, name: str, task: str, audio_seconds: float, walls: list[float], **params) -> Row:
    """A row in x real time; ``load`` (the load average now) unless given."""
    samples = [audio_seconds / w for w in walls]
    return Row(stage, name, task, "x real time", Stats.of(samples), {"load": load_average(), **params}, samples=samples)


def latency_row(stage: str, name: str, task: str, walls: list[float], **params) -> Row:
    """A row in ms; ``load`` (the load average now) unless given."""
    samples = [w * 1000 for w in walls]
    return Row(stage, name, task, "ms", Stats.of(samples), {"load": load_average(), **params}, samples=samples)


def histogram(samples: Sequence[float], bins: int = 12, width: int = 40) -> list[tuple[float, float, int, str]]:
    """Text histogram rows: (low, high, count, bar)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return []
    counts, edges = np.histogram(a, bins=bins)
    top = counts.max() or 1
    return [(float(edges[i]), float(edges[i + 1]), int(c), "█" * int(round(width * c / top)))
            for i, c in enumerate(counts)]


def save(result: BenchResult, path: str) -> None:
    from pathlib import Path

    from ..atomic import write_text

    write_text(Path(path), json.dumps(result.to_json(), indent=2) + "\n")


def load(path: str) -> BenchResult:
    from pathlib import Path

    return BenchResult.from_json(json.loads(Path(path).read_text()))
