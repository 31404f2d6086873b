"""The LM and chat stages: Moshi's LM steps per batch size next to moshi's LMGen, real-time
capacity, and a chat frame (encode + step + decode) as ``chat`` runs it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import prepare_live
from .core import Clock, FRAME_SECONDS, PeakMemory, Row, Stats, latency_row
from .codec import is_cuda, torch_sync


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
    from ..synthetic import lm as synthetic_lm
    from ..synthetic.core import ensure_synthetic_mimi, synthetic_dir

    if size == "tiny":
        return str(synthetic_lm.ensure_synthetic_moshi(layout=layout, mimi_path=ensure_synthetic_mimi()))
    dest = synthetic_dir() / f"moshi-{size}-{layout}"
    if not (dest / "config.json").exists():
        synthetic_lm.write_moshi_repo(dest, size=size, layout=layout, mimi_path=ensure_synthetic_mimi())
    return str(dest)


class _LMGenReference:
    """moshi's LMModel + LMGen called directly, as moshi's README shows."""

    def __init__(self, repo: str, device: str | None, dtype: str | None) -> None:
        from ..backends.torch_env import prepare as _prepare_torch

        _prepare_torch()
        import torch
        from moshi.models import LMGen

        from ..backends.torch_codec import pick_device
        from ..backends.torch_lm import checkpoint_info, resolve_repo

        self.torch = torch
        self.device = pick_device(device)
        from ..platform import auto_dtype

        # What the commands pick; moshi has no int8 on a CPU: beside moshikit's int8, its lighter bf16.
        name = dtype if dtype in ("bf16", "fp16", "fp32") else "bf16" if dtype == "int8" else auto_dtype(self.device)
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
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
    from ..backends import registry

    subjects: list[tuple[str, Callable[[], object]]] = []
    if plan.reference and registry.probe("lm", "torch")[0]:
        subjects.append(("moshi LMGen (reference)", lambda: _LMGenReference(plan.repo, plan.device, plan.dtype)))
    for name in plan.backends:
        mod = registry.module("lm", name)
        subjects.append((f"moshikit {name}", lambda mod=mod: mod.load(plan.repo, device=plan.device, dtype=plan.dtype)))
    return subjects


def bench_lm(plan: LMPlan, *, clock: Clock = time.perf_counter) -> Iterator[Row]:
    """Per-step latency over a batch sweep, the largest batch that keeps real time, time to first output;
    for the CPU engine, a ``limit`` row per batch: the step's roofline on this machine, in ms."""
    import gc

    from .limits import lm_limit, measure_machine

    machine = None
    for name, make in lm_subjects(plan):
        subj = make()
        engine = getattr(subj, "info", None) is not None and subj.info.backend == "cpu"
        if engine and machine is None:
            machine = measure_machine((subj.info.precision,))
        k = subj.input_codebooks
        sync = getattr(subj, "sync", None) or torch_sync
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
            bound = lm_limit(subj.engine, subj.depth, batch, plan.steps + 3, machine, subj.info.precision) \
                if engine else None
            if bound is not None:
                row.params["of_limit"] = round(bound["step_ms"] / row.stats.p50, 4)  # latency: bound / measured
            yield row
            if bound is not None:
                yield Row("lm", f"limit: step, {subj.info.precision}", "step (temporal + depth)", "ms",
                          Stats.of([bound["step_ms"]]), {"batch": batch, **bound, "machine": machine.to_json()})
            if first is not None:
                yield latency_row("lm", name, "time to first output", [first], batch=batch)
            kept[batch] = row.stats.p99 < FRAME_SECONDS * 1000
        yield capacity_row(name, kept)
        # ``sync`` may be a method of ``subj``: kept, it would hold the subject (a model in reference
        # cycles) past this collection, and its memory would count in the next subject's peak.
        del subj, sync
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
    from ..platform import resolve

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
    from ..backends import registry
    from ..codec import load_codec
    from ..platform import codec_beside_lm
    from ..synthetic.core import speech_sample

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
        torch_sync()
        if i >= 5:
            walls.append(clock() - t)
    mode = "paced (80 ms input)" if paced else "unpaced"
    row = latency_row("chat", f"moshikit {codec_backend}+{lm_backend}", f"frame: encode+step+decode, {mode}", walls,
                      frames=frames)
    over = sum(w > FRAME_SECONDS for w in walls) / len(walls)
    row.params.update(over_budget=round(over, 4), headroom_ms=round(FRAME_SECONDS * 1000 - row.stats.p99, 2))
    yield row
