"""Benchmarks: latency and throughput of each stage, every backend side by side.

Library only: functions return ``BenchResult`` objects (rows of sample
statistics plus the environment) and never print; ``moshikit bench`` renders.

Conventions. Throughput is "x real time" = audio seconds / wall seconds (what
Kyutai's scripts call RTF, the inverse of the textbook real-time factor).
Latency is per call, in milliseconds. Warm-up calls are excluded. Percentiles
use linear interpolation between order statistics (numpy's default).
"""

from __future__ import annotations

import json
import os
import platform as _platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from . import __version__
from .backends.base import prepare_live

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
    from .platform import detect

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


def throughput_row(stage: str, name: str, task: str, audio_seconds: float, walls: list[float], **params) -> Row:
    samples = [audio_seconds / w for w in walls]
    return Row(stage, name, task, "x real time", Stats.of(samples), params, samples=samples)


def latency_row(stage: str, name: str, task: str, walls: list[float], **params) -> Row:
    samples = [w * 1000 for w in walls]
    return Row(stage, name, task, "ms", Stats.of(samples), params, samples=samples)


# ---------------------------------------------------------------- codec stage


@dataclass
class CodecPlan:
    backends: list[str]
    weights: str
    reference: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    seconds: list[float] = field(default_factory=lambda: [10.0])
    repeats: int = 3
    stream_frames: int = 50
    num_codebooks: int = 8
    device: str | None = None
    files: tuple[int, float] | None = None  # (count, seconds): many short files vs one long one
    notes: list[str] = field(default_factory=list)  # subjects skipped, and why (filled while running)


def _reference_subjects(plan: CodecPlan) -> list[tuple[str, object]]:
    from .backends import registry

    subjects = []
    if registry.probe("codec", "torch")[0]:
        subjects.append(("moshi MimiModel (reference)", _MoshiReference(plan.weights, plan.device, plan.num_codebooks)))
    if registry.probe("codec", "rustymimi")[0] and plan.device in (None, "auto", "cpu"):
        subjects.append(("rustymimi Tokenizer (reference)", _RustyReference(plan.weights, plan.num_codebooks)))
    return subjects


class _MoshiReference:
    """moshi's MimiModel called directly, as its README shows."""

    def __init__(self, weights: str, device: str | None, k: int) -> None:
        from .backends.torch_env import prepare as _prepare_torch

        _prepare_torch()
        import torch
        from moshi.models import loaders

        from .backends.torch_codec import pick_device

        self.torch = torch
        self.device = pick_device(device)
        self.mimi = loaders.get_mimi(weights, device=self.device, num_codebooks=k)
        self._ctx = None
        self.batch_gain = True

    def encode(self, pcm):
        with self.torch.no_grad():
            return self.mimi.encode(self.torch.from_numpy(pcm).to(self.device)[:, None]).cpu().numpy()

    def decode(self, codes):
        with self.torch.no_grad():
            return self.mimi.decode(self.torch.from_numpy(codes).to(self.device)).cpu().numpy()

    def reset_stream(self, batch_size=1):
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = self.mimi.streaming(batch_size)

    encode_step = encode
    decode_step = decode

    def sync(self):
        if is_cuda(self.device):
            self.torch.cuda.synchronize()


def is_cuda(device) -> bool:
    """``cuda``, ``cuda:0``, a ``torch.device`` of type cuda."""
    return str(device).split(":")[0] == "cuda"


class _RustyReference:
    """rustymimi's Tokenizer called directly."""

    def __init__(self, weights: str, k: int) -> None:
        import rustymimi

        self.tok = rustymimi.Tokenizer(weights, num_codebooks=k)
        self.batch_gain = False

    def encode(self, pcm):
        return self.tok.encode(pcm[:, None])

    def decode(self, codes):
        return self.tok.decode(codes.astype(np.uint32))

    def reset_stream(self, batch_size=1):
        self.tok.reset()

    def encode_step(self, pcm):
        return self.tok.encode_step(pcm[:, None])

    def decode_step(self, codes):
        return self.tok.decode_step(codes.astype(np.uint32))


def codec_subjects(plan: CodecPlan, codecs: dict | None = None) -> Iterator[tuple[str, object]]:
    """The reference rows, then each moshikit backend (its ``Codec`` kept in ``codecs``)."""
    from .codec import load_codec

    if plan.reference:
        yield from _reference_subjects(plan)
    from .errors import MoshikitError

    loaded = 0
    for i, name in enumerate(plan.backends):
        try:
            codec = load_codec(name, plan.device, mimi_weight=plan.weights, num_codebooks=plan.num_codebooks)
        except MoshikitError as exc:  # e.g. a CPU-only backend with --device cuda: the others still run
            if loaded == 0 and i == len(plan.backends) - 1 and not plan.reference:
                raise
            plan.notes.append(f"moshikit {name}: skipped ({exc})")
            continue
        loaded += 1
        if codecs is not None:
            codecs[f"moshikit {name}"] = codec
        yield f"moshikit {name}", codec.backend


#: Idle time before each timed streaming frame. Live frames arrive every 80 ms, never right
#: behind another runtime's work; without a gap, the subject timed after a torch one shares
#: the CPU with OpenMP threads still busy-waiting (measured: onnx 20.4 ms a frame encode after
#: moshikit torch, 14.1 ms after moshi's reference, 13.7 ms with this gap; the references
#: gain too).
STREAM_GAP_S = 0.01


def bench_codec(plan: CodecPlan, *, clock: Clock = time.perf_counter) -> Iterator[Row]:
    """Batch encode/decode throughput over the sweep, then per-frame streaming latency.

    Subjects are timed round-robin, repeat by repeat, so that a noisy machine slows
    them alike and the ratios between rows hold.
    """
    from .testing.synthetic import speech_sample

    speech = speech_sample()
    codecs: dict = {}
    subjects = list(codec_subjects(plan, codecs))

    def device(subj) -> str:
        return getattr(getattr(subj, "info", None), "device", None) or getattr(subj, "device", "cpu")

    def sync_of(subj):
        return getattr(subj, "sync", None) or _torch_sync

    for seconds in plan.seconds:
        for batch in plan.batch_sizes:
            pcm = np.stack([np.resize(np.roll(speech, 24000 * i), int(seconds * 24000)) for i in range(batch)])
            pcm = pcm.astype(np.float32)
            codes = {name: np.asarray(subj.encode(pcm)).astype(np.int64) for name, subj in subjects}
            for task in ("encode", "decode"):
                walls: dict[str, list[float]] = {name: [] for name, _ in subjects}
                mems: dict[str, dict] = {}
                for rep in range(plan.repeats + 1):  # the first round is the warm-up
                    for name, subj in subjects:
                        fn = (lambda s=subj: s.encode(pcm)) if task == "encode" else \
                             (lambda s=subj, c=codes[name]: s.decode(c))
                        with PeakMemory() as mem:
                            w = measure(fn, repeats=1, warmup=0, clock=clock, sync=sync_of(subj))
                        if rep:
                            walls[name] += w
                            mems[name] = mem.result
                for name, subj in subjects:
                    row = throughput_row("codec", name, task, seconds * batch, walls[name], batch=batch,
                                         seconds=seconds, device=device(subj))
                    row.memory = mems[name]
                    yield row
    if plan.files:
        refs = {name: subj for name, subj in subjects if isinstance(subj, _MoshiReference)}
        yield from _bench_files(plan, codecs, refs, speech, clock)
    if not plan.stream_frames:
        return
    frames = np.resize(speech, 1920 * (plan.stream_frames + 5)).astype(np.float32)[None]
    enc: dict[str, list[float]] = {name: [] for name, _ in subjects}
    dec: dict[str, list[float]] = {name: [] for name, _ in subjects}
    for _, subj in subjects:
        prepare_live(subj)  # what chat and serve do before their first frame
        subj.reset_stream(1)
    for i in range(plan.stream_frames + 5):
        for name, subj in subjects:
            sync = sync_of(subj)
            time.sleep(STREAM_GAP_S)
            t = clock()
            c = np.asarray(subj.encode_step(frames[:, i * 1920 : (i + 1) * 1920])).astype(np.int64)
            sync()
            t1 = clock()
            subj.decode_step(c)
            sync()
            t2 = clock()
            if i >= 5:  # warm-up frames
                enc[name].append(t1 - t)
                dec[name].append(t2 - t1)
    for name, subj in subjects:
        dev = device(subj)
        yield latency_row("codec", name, "stream encode (80 ms frame)", enc[name], frames=plan.stream_frames, device=dev)
        yield latency_row("codec", name, "stream decode (80 ms frame)", dec[name], frames=plan.stream_frames, device=dev)
        both = [a + b for a, b in zip(enc[name], dec[name])]
        yield latency_row("codec", name, "stream encode+decode", both, frames=plan.stream_frames, device=dev)


def _bench_files(plan: CodecPlan, codecs: dict, refs: dict, speech: np.ndarray, clock: Clock) -> Iterator[Row]:
    """``moshikit encode`` on many short files against one file as long as all of them,
    through the library call behind the command (decoding, resampling, token files); the
    reference is the loop a moshi user writes: read each file, ``MimiModel.encode``, save."""
    import tempfile
    from pathlib import Path

    import soundfile as sf

    from .codec import EncodeOptions, Job, encode_files

    count, seconds = plan.files
    with tempfile.TemporaryDirectory(prefix="moshikit-bench-") as tmp:
        root = Path(tmp)
        n = int(seconds * 24000)
        short = []
        for i in range(count):
            src = root / f"short{i:04d}.wav"
            sf.write(src, np.resize(np.roll(speech, 7919 * i), n), 24000, subtype="FLOAT")
            short.append(Job(str(src), root / "out" / f"short{i:04d}.mimi"))
        sf.write(root / "long.wav", np.resize(speech, n * count), 24000, subtype="FLOAT")
        long = [Job(str(root / "long.wav"), root / "out" / "long.mimi")]
        opts = EncodeOptions(overwrite=True)

        def moshikit(jobs, codec):
            bad = [r for r in encode_files(jobs, codec, opts) if r.status != "done"]
            if bad:
                raise RuntimeError(f"bench files: {bad[0].error}")

        (root / "ref").mkdir()

        def reference(jobs, ref):
            for job in jobs:
                pcm, _ = sf.read(job.source, dtype="float32", always_2d=True)
                np.save(root / "ref" / f"{Path(job.source).stem}.npy", ref.encode(np.ascontiguousarray(pcm.T)))

        runs = {name: (reference, ref, ref.device) for name, ref in refs.items()}
        runs.update({name: (moshikit, codec, codec.info.device) for name, codec in codecs.items()})
        tasks = {f"encode {count} files of {seconds:g} s": short, f"encode 1 file of {count * seconds:g} s": long}
        walls: dict = {(name, task): [] for name in runs for task in tasks}
        for rep in range(plan.repeats + 1):  # the first round is the warm-up
            for name, (run, subject, _) in runs.items():
                for task, jobs in tasks.items():
                    t = clock()
                    run(jobs, subject)
                    if rep:
                        walls[name, task].append(clock() - t)
        for (name, task), w in walls.items():
            yield throughput_row("codec", name, task, count * seconds, w, batch=1, seconds=seconds,
                                 device=runs[name][2])


def _torch_sync() -> None:
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


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

    from .atomic import write_text

    write_text(Path(path), json.dumps(result.to_json(), indent=2) + "\n")


def load(path: str) -> BenchResult:
    from pathlib import Path

    return BenchResult.from_json(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- lm and chat stages


@dataclass
class LMPlan:
    backends: list[str]
    repo: str  # a Moshi checkpoint directory (synthetic or real)
    reference: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    steps: int = 50
    device: str | None = None
    dtype: str | None = None


def synthetic_moshi_repo(size: str, layout: str = "pytorch") -> str:
    """A synthetic Moshi checkpoint directory (``tiny``: seconds; ``full``: the 7B, ~15 GB, minutes)."""
    from .testing import synthetic_lm
    from .testing.synthetic import ensure_synthetic_mimi, synthetic_dir

    if size == "tiny":
        return str(synthetic_lm.ensure_synthetic_moshi(layout=layout, mimi_path=ensure_synthetic_mimi()))
    dest = synthetic_dir() / f"moshi-{size}-{layout}"
    if not (dest / "config.json").exists():
        synthetic_lm.write_moshi_repo(dest, size=size, layout=layout, mimi_path=ensure_synthetic_mimi())
    return str(dest)


class _LMGenReference:
    """moshi's LMModel + LMGen called directly, as moshi's README shows."""

    def __init__(self, repo: str, device: str | None, dtype: str | None) -> None:
        from .backends.torch_env import prepare as _prepare_torch

        _prepare_torch()
        import torch
        from moshi.models import LMGen

        from .backends.torch_codec import pick_device
        from .backends.torch_lm import checkpoint_info, resolve_repo

        self.torch = torch
        self.device = pick_device(device)
        from .platform import auto_dtype

        dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
            dtype if dtype in ("bf16", "fp16", "fp32") else auto_dtype(self.device)]  # what the commands pick
        lm = checkpoint_info(resolve_repo(repo)).get_moshi(device=self.device, dtype=dt)
        self.gen = LMGen(lm, temp=0.8, temp_text=0.7)
        self.input_codebooks = lm.n_q - lm.dep_q  # the user's codebooks the model listens to
        self._ctx = None

    def reset(self, batch_size: int = 1) -> None:
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = self.gen.streaming(batch_size)

    def step(self, codes: np.ndarray):
        with self.torch.no_grad():
            out = self.gen.step(self.torch.from_numpy(codes[:, :, None]).to(self.device))
        return None if out is None else out[:, :, 0].cpu().numpy()

    def sync(self) -> None:
        if is_cuda(self.device):
            self.torch.cuda.synchronize()


def lm_subjects(plan: LMPlan) -> list[tuple[str, Callable[[], object]]]:
    """(name, factory): subjects are built one at a time, so a 7B model is never loaded twice."""
    from .backends import registry

    subjects: list[tuple[str, Callable[[], object]]] = []
    if plan.reference and registry.probe("lm", "torch")[0]:
        subjects.append(("moshi LMGen (reference)", lambda: _LMGenReference(plan.repo, plan.device, plan.dtype)))
    for name in plan.backends:
        mod = registry.module("lm", name)
        subjects.append((f"moshikit {name}", lambda mod=mod: mod.load(plan.repo, device=plan.device, dtype=plan.dtype)))
    return subjects


def bench_lm(plan: LMPlan, *, clock: Clock = time.perf_counter) -> Iterator[Row]:
    """Per-step latency over a batch sweep, the largest batch that keeps real time, time to first output."""
    import gc

    for name, make in lm_subjects(plan):
        subj = make()
        k = subj.input_codebooks
        sync = getattr(subj, "sync", None) or _torch_sync
        kept: dict[int, bool] = {}  # batch -> kept real time (p99 under 80 ms)
        for batch in plan.batch_sizes:
            rng = np.random.default_rng(0)
            subj.reset(batch)
            first, walls, t0 = None, [], clock()
            with PeakMemory() as mem:
                for i in range(plan.steps + 3):
                    codes = rng.integers(0, 2048, size=(batch, k))
                    t = clock()
                    out = subj.step(codes)
                    sync()
                    now = clock()
                    if out is not None and first is None:
                        first = now - t0
                    if i >= 3:  # warm-up steps
                        walls.append(now - t)
            row = latency_row("lm", name, "step (temporal + depth)", walls, batch=batch, steps=plan.steps,
                              dtype=plan.dtype or "auto")
            row.memory = mem.result
            yield row
            if first is not None:
                yield latency_row("lm", name, "time to first output", [first], batch=batch)
            kept[batch] = row.stats.p99 < FRAME_SECONDS * 1000
        yield capacity_row(name, kept)
        del subj
        gc.collect()


def realtime_capacity(kept: dict[int, bool]) -> tuple[int, int | None]:
    """What a batch sweep proves about the largest batch that keeps real time.

    ``kept`` maps each measured batch size to whether it kept real time. Returns
    ``(low, missed)``: ``low`` the largest batch that kept it (0 if none did), ``missed``
    the smallest measured batch above ``low`` that did not (None when no larger batch was
    measured: then ``low`` is only a lower bound). The answer is exact when
    ``missed == low + 1``."""
    low = max([b for b, ok in kept.items() if ok] or [0])
    above = [b for b, ok in kept.items() if not ok and b > low]
    return low, (min(above) if above else None)


def capacity_row(name: str, kept: dict[int, bool]) -> Row:
    """The "largest real-time batch" row: ``params["exact"]`` says whether the sweep proved
    it (a batch one larger was measured and missed), ``params["missed"]`` the smallest
    larger batch measured that missed (None: none was, and the figure is a lower bound)."""
    low, missed = realtime_capacity(kept)
    return Row("lm", name, "largest real-time batch (p99 < 80 ms)", "streams", Stats.of([low]),
               {"batches": sorted(kept), "exact": missed == low + 1, "missed": missed}, samples=[low])


def capacity_text(row: Row) -> str:
    """The capacity row in words, claiming only what was measured."""
    low, missed = int(row.stats.p50), row.params.get("missed")
    if missed is None and "missed" in row.params:
        return f"at least {low} (largest measured)"
    if missed is not None and missed != low + 1:
        return f"{low} to {missed - 1} ({missed} missed; between not measured)"
    return f"{low} streams"


def chat_lm(lm_backend: str | None, device: str | None) -> tuple[str, str | None]:
    """The LM backend and device ``moshikit chat`` runs with these options ("auto" or None:
    the platform's choice, as ``serve.load_conversation`` makes it)."""
    from .platform import resolve

    choice = resolve("lm", lm_backend, device)
    return choice.backend, None if choice.device in (None, "auto") else choice.device


def bench_chat(codec_backend: str | None, lm_backend: str | None, weights: str, repo: str, *, frames: int = 50,
               device: str | None = None, paced: bool = False, clock: Clock = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[Row]:
    """The whole loop per 80 ms frame: encode, one LM step, decode Moshi's audio.

    Unpaced runs as fast as possible; paced feeds a frame every 80 ms as a microphone
    does (what Kyutai's Rust benchmark measures), so idle time between frames counts.
    A backend given as "auto" (or None) is the one ``moshikit chat`` runs here with the
    same ``device``.
    """
    from .backends import registry
    from .codec import load_codec
    from .platform import codec_beside_lm
    from .testing.synthetic import speech_sample

    lm_backend, lm_device = chat_lm(lm_backend, device)
    lm = registry.module("lm", lm_backend).load(repo, device=lm_device)
    codec_device = device
    if codec_backend in (None, "auto"):  # as the chat command: the codec beside the device the LM landed on
        codec_backend, codec_device = codec_beside_lm(lm_backend, lm.info.device), lm_device
    codec = load_codec(codec_backend, codec_device, mimi_weight=weights,
                       num_codebooks=max(lm.info.input_codebooks, lm.info.dep_q)).backend
    k = lm.input_codebooks
    pcm = np.resize(speech_sample(), 1920 * (frames + 5)).astype(np.float32)[None]
    prepare_live(codec)
    codec.reset_stream(1)
    lm.reset(1)
    walls: list[float] = []
    next_tick = clock()
    for i in range(frames + 5):
        if paced:
            delay = next_tick - clock()
            if delay > 0:
                sleep(delay)
            next_tick += FRAME_SECONDS
        t = clock()
        codes = codec.encode_step(pcm[:, i * 1920 : (i + 1) * 1920])
        out = lm.step(codes[:, :k, 0])
        if out is not None:
            codec.decode_step(out[:, 1:, None])
        _torch_sync()
        if i >= 5:
            walls.append(clock() - t)
    mode = "paced (80 ms input)" if paced else "unpaced"
    row = latency_row("chat", f"moshikit {codec_backend}+{lm_backend}", f"frame: encode+step+decode, {mode}", walls,
                      frames=frames)
    over = sum(w > FRAME_SECONDS for w in walls) / len(walls)
    row.params.update(over_budget=round(over, 4), headroom_ms=round(FRAME_SECONDS * 1000 - row.stats.p99, 2))
    yield row


# ---------------------------------------------------------------- stt: see bench_stt
