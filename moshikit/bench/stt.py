"""The ``bench stt`` stage: transcription throughput and live latency, next to moshi's own loop.

Rows, all from one run so their ratios hold on a loaded machine:

* ``moshi MimiModel + LMGen (reference)``: Kyutai's way to transcribe with the ``moshi``
  package (their ``stt_from_file`` script, batched as their evaluation script does): the
  checkpoint's Mimi (``CheckpointInfo.get_mimi``) and LM in bf16 (``get_moshi(dtype=bf16)``),
  ``LMGen(temp=0)``, one 80 ms frame at a time for a batch of streams.
* ``moshikit <backend> <precision>``: ``stt.run_streams`` as ``transcribe`` runs it (codec in
  2 s chunks, slot refill), per batch size, per backend (``-b cpu,torch``: moshikit's CPU
  engine beside moshi's ``LMGen`` under moshikit's loop) and per precision asked for.
* ``limit: LM step, <precision>``: for the CPU engine's rows, the roofline of one LM step on
  this machine (``bench.limits``: the weights and keys/values read at the measured memory
  bandwidth, the multiply-adds at the measured matmul throughput); each such row's
  ``of_limit`` is its share of that bound (the codec and sampling are outside the bound).
* the live row of each: one stream paced at 12.5 frames a second, encode + step per frame
  against the 80 ms budget (what ``transcribe --mic`` needs to keep up).

Subjects are loaded together and timed round-robin, repeat by repeat, so that a machine
loaded by others slows them alike. Peak memory is the process's (all subjects loaded);
``weights_mb`` is each subject's own LM weights.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .core import FRAME_SECONDS, Clock, PeakMemory, Row, latency_row, throughput_row

FRAME = 1920


@dataclass
class SttPlan:
    model: str | None  # an STT checkpoint: directory, catalog name or "synthetic"
    backend: str | None = None  # an LM backend, or several comma-separated (each a row per precision)
    reference: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    streams: int = 4  # files per measurement (at least the batch size)
    seconds: float = 10.0  # audio per file
    device: str | None = None
    repeats: int = 2
    dtypes: list[str | None] = field(default_factory=lambda: [None])  # moshikit precisions (None: auto)
    live_frames: int = 0  # paced frames of the live row (0: no live row)
    limits: bool = True  # the roofline row of the CPU engine's precisions (bench.limits)
    notes: list[str] = field(default_factory=list)


def synthetic_stt_repo(size: str, name: str | None) -> str:
    """``--synthetic``: the tiny test STT, or (``full``) the published architecture of ``name``."""
    from ..synthetic import stt as synthetic_stt

    if size == "tiny":
        return "synthetic"
    return str(synthetic_stt.ensure_full_stt(name or "stt"))


class MoshiLoop:
    """moshi's MimiModel + LMGen driven frame by frame, as Kyutai's scripts do."""

    def __init__(self, repo_path: str, device: str | None, delay_frames: int, prefix_frames: int) -> None:
        from ..backends.torch_env import prepare as _prepare_torch

        _prepare_torch()
        import torch
        from moshi.models import LMGen

        from ..backends.torch_codec import pick_device
        from ..backends.torch_lm import checkpoint_info, resolve_repo

        self.torch = torch
        self.device = pick_device(device)
        info = checkpoint_info(resolve_repo(repo_path))
        self.mimi = info.get_mimi(device=self.device)
        self.lm = info.get_moshi(device=self.device, dtype=torch.bfloat16)
        self.gen = LMGen(self.lm, temp=0, temp_text=0)
        self.delay_frames, self.prefix_frames = delay_frames, prefix_frames
        self.weights_mb = round(sum(p.numel() * p.element_size() for p in self.lm.parameters()) / 2**20)

    def transcribe(self, audio: list[np.ndarray], batch: int) -> None:
        """Every stream of ``audio`` through the loop, ``batch`` streams at a time."""
        torch = self.torch
        for g in range(0, len(audio), batch):
            group = audio[g : g + batch]
            n = max(a.size for a in group)
            n = (self.prefix_frames + self.delay_frames) * FRAME + n + (-n) % FRAME
            x = np.zeros((len(group), n), np.float32)
            for i, a in enumerate(group):
                x[i, self.prefix_frames * FRAME : self.prefix_frames * FRAME + a.size] = a
            with torch.no_grad(), self.mimi.streaming(len(group)), self.gen.streaming(len(group)):
                for i in range(0, n, FRAME):
                    codes = self.mimi.encode(torch.from_numpy(x[:, None, i : i + FRAME]).to(self.device))
                    self.gen.step(codes)

    def live(self, pcm: np.ndarray, frames: int, clock: Clock, sleep) -> list[float]:
        torch = self.torch
        with torch.no_grad(), self.mimi.streaming(1), self.gen.streaming(1):
            return _paced(lambda f: self.gen.step(self.mimi.encode(torch.from_numpy(f[None, None]).to(self.device))),
                          pcm, frames, clock, sleep)


def _paced(work: Callable[[np.ndarray], object], pcm: np.ndarray, frames: int, clock: Clock, sleep,
           warmup: int = 5) -> list[float]:
    """Feed a frame every 80 ms (as a microphone does) and time ``work`` on each."""
    walls: list[float] = []
    next_tick = clock()
    for i in range(frames + warmup):
        delay = next_tick - clock()
        if delay > 0:
            sleep(delay)
        next_tick = max(next_tick + FRAME_SECONDS, clock() - FRAME_SECONDS)  # a late frame does not queue up
        t = clock()
        work(pcm[(i * FRAME) % (pcm.size - FRAME):][:FRAME])
        if i >= warmup:
            walls.append(clock() - t)
    return walls


def _moshikit_live(model, pcm: np.ndarray, frames: int, clock: Clock, sleep) -> list[float]:
    from ..backends.base import prepare_live

    codec, lm = model.codec, model.lm
    k = lm.info.input_codebooks
    prepare_live(codec)
    codec.reset_stream(1)
    lm.reset(1)
    return _paced(lambda f: lm.step(codec.encode_step(f[None])[:, :k, 0]), pcm, frames, clock, sleep)


def lm_weights_mb(lm) -> int:
    """Bytes of the LM's weights (packed int8 layers counted at a byte a weight)."""
    if hasattr(lm, "weight_bytes"):  # the CPU engine counts its own
        return round(lm.weight_bytes() / 2**20)
    model = getattr(lm, "model", None)
    if model is None:
        return 0
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for m in model.modules():
        if type(m).__name__ == "Int8Linear":
            total += m.in_features * m.out_features + 4 * m.out_features
    return round(total / 2**20)


def bench_stt(plan: SttPlan, *, clock: Clock = time.perf_counter, sleep=time.sleep) -> Iterator[Row]:
    """Throughput per batch size for every subject, then the live row of each."""
    from .. import stt
    from ..backends import registry
    from ..synthetic.core import speech_sample

    speech = speech_sample()
    models = []
    for backend in (plan.backend or "auto").split(","):
        for dtype in plan.dtypes:
            models.append(stt.load_stt(plan.model, backend=backend.strip() or None, device=plan.device, dtype=dtype))
    first = models[0]
    total_streams = max([plan.streams, *plan.batch_sizes])
    audio = [np.resize(np.roll(speech, 24000 * i), int(plan.seconds * 24000)).astype(np.float32)
             for i in range(total_streams)]
    subjects: list[tuple[str, dict, Callable[[int, list], object], Callable[[], list[float]]]] = []
    ref = None
    if plan.reference and first.lm.info.backend in ("torch", "cpu") and registry.probe("lm", "torch")[0]:
        repo_dir = os.path.dirname(str(first.lm.repo.moshi_weights))
        ref = MoshiLoop(repo_dir, plan.device, first.delay_frames, first.prefix_frames)
        subjects.append(("moshi MimiModel + LMGen (reference)", {"precision": "bf16", "weights_mb": ref.weights_mb},
                         lambda b, clips: ref.transcribe(clips[: max(b, plan.streams)], b),
                         lambda: ref.live(speech, plan.live_frames, clock, sleep)))
    elif plan.reference:
        plan.notes.append("no reference row: moshi's loop runs with the torch and cpu backends only")
    for m in models:
        def run(batch: int, clips: list[np.ndarray], m=m) -> None:
            streams = [stt.Stream(m, f"s{i}", [a], refine=True) for i, a in enumerate(clips[: max(batch, plan.streams)])]
            for s in stt.run_streams(m, streams, batch, chunk=stt.TranscribeOptions().chunk):
                s.finish()

        subjects.append((f"moshikit {m.lm.info.backend} {m.precision}".strip(),
                         {"precision": m.precision, "weights_mb": lm_weights_mb(m.lm), "why": m.precision_reason},
                         run, lambda m=m: _moshikit_live(m, speech, plan.live_frames, clock, sleep)))
    device = first.lm.info.device
    warm = [a[: 2 * 24000] for a in audio[:1]]
    for _, _, fn, _ in subjects:  # warm-up (graphs, caches) on 2 s of audio
        fn(1, warm)
    engines = {m.precision: m for m in models if m.lm.info.backend == "cpu"} if plan.limits else {}
    machine = None
    if engines:
        from .limits import measure_machine

        machine = measure_machine(tuple(engines))
        plan.notes.append(f"this machine, measured in this run ({machine.threads} threads): memory read "
                          f"{machine.read_gb_s:g} GB/s; matmul " + ", ".join(
                              f"{p} {g:g} GOP/s" for p, g in machine.gop_s.items()) + " (bench.limits)")
    for batch in plan.batch_sizes:
        n = max(batch, plan.streams)
        walls: dict[int, list[float]] = {i: [] for i in range(len(subjects))}
        mems: dict[int, dict] = {}
        for _ in range(plan.repeats):  # round-robin: a noisy machine slows every row alike
            for i, (_, _, fn, _) in enumerate(subjects):
                with PeakMemory() as mem:
                    t = clock()
                    fn(batch, audio)
                    walls[i].append(clock() - t)
                mems[i] = mem.result
        bounds = {}
        for precision, m in engines.items():
            from .limits import lm_limit

            frames = int(np.ceil(plan.seconds / FRAME_SECONDS)) + m.prefix_frames + m.delay_frames
            bounds[precision] = lm_limit(m.lm.engine, m.lm.depth, batch, frames, machine, precision)
        for i, (name, params, _, _) in enumerate(subjects):
            row = throughput_row("stt", name, f"transcribe {n} x {plan.seconds:g} s", n * plan.seconds, walls[i],
                                 batch=batch, device=device, **params)
            row.memory = mems[i]
            bound = bounds.get(params["precision"]) if name.startswith("moshikit cpu") else None
            if bound:
                row.params["of_limit"] = round(row.stats.p50 / bound["x_real_time"], 4)
            yield row
        for precision, bound in bounds.items():
            from .limits import limit_row

            yield limit_row("stt", f"transcribe {n} x {plan.seconds:g} s", bound, machine, precision, batch=batch,
                            device=device)
    if plan.live_frames:
        for name, params, _, live in subjects:
            walls = live()
            row = latency_row("stt", name, "live: encode+step per 80 ms frame, paced", walls, batch=1,
                              frames=plan.live_frames, device=device, **params)
            over = sum(w > FRAME_SECONDS for w in walls) / len(walls)
            row.params.update(over_budget=round(over, 4), headroom_ms=round(FRAME_SECONDS * 1000 - row.stats.p99, 2),
                              x_real_time=round(FRAME_SECONDS / float(np.mean(walls)), 3))
            yield row

