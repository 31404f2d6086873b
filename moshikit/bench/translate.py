"""``moshikit bench translate``: Hibiki translation throughput next to Kyutai's own ``run_inference``.

Both rows translate the same audio at batch size 1 in the same run, round-robin (a noisy
machine slows both alike): moshikit's ``translate_stream`` and ``moshi.run_inference``'s
``InferenceState.run`` on its own copy of the checkpoint (moshi's loaders, the LM in the
dtype moshikit picked), each including the end-of-input tail until EOS. On the CPU engine a
``limit: LM step, <precision>`` row gives the LM's roofline on this machine (``bench.limits``:
Mimi's encode and decode are outside it) and moshikit's row its share, ``of_limit``.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .core import Row, throughput_row


@dataclass
class TranslatePlan:
    model: str | None  # a Hibiki checkpoint (catalog name, path, or "synthetic": tiny, or see synthetic_hibiki)
    backend: str | None = None
    device: str | None = None
    seconds: float = 10.0
    repeats: int = 2
    reference: bool = True
    cfg: float = 1.0
    seed: int = 0


class RunInferenceReference:
    """moshi.run_inference's ``InferenceState`` at batch 1 on the translator's checkpoint: on the
    translator's device and dtype, or (moshikit's CPU engine) in bf16 on the CPU, moshi's CPU choice."""

    def __init__(self, tr, cfg: float, seed: int) -> None:
        import torch
        from moshi import run_inference
        from moshi.client_utils import RawPrinter

        self.torch, self.seed = torch, seed
        info = tr.lm.checkpoint
        if tr.lm.info.backend == "torch":
            device, dtype = str(tr.lm.model.device), tr.lm.dtype
        else:
            device, dtype = "cpu", torch.bfloat16
        mimi = info.get_mimi(device=device)
        lm = info.get_moshi(device=device, dtype=dtype)
        self.state = run_inference.InferenceState(info, mimi, info.get_text_tokenizer(), lm, 1, cfg, device,
                                                  **info.lm_gen_config)
        self.state.printer = RawPrinter(io.StringIO(), io.StringIO())  # it prints every token and logs
        self.device = device

    def __call__(self, pcm: np.ndarray) -> None:
        torch = self.torch
        self.state.mimi.reset_streaming()
        self.state.lm_gen.reset_streaming()
        torch.manual_seed(self.seed)
        x = torch.from_numpy(pcm[: pcm.size // 1920 * 1920])[None, None].to(self.device)
        with torch.no_grad():
            self.state.run(x)


def synthetic_hibiki(size: str) -> str:
    """``--synthetic``: the tiny test Hibiki, or (``full``) Hibiki 1B's architecture (~3.7 GB, built once)."""
    if size == "tiny":
        return "synthetic"
    from ..synthetic.hibiki import ensure_full_hibiki

    return str(ensure_full_hibiki())


def bench_translate(plan: TranslatePlan, *, clock=time.perf_counter) -> Iterator[Row]:
    """Rows: moshikit's translation and run_inference's, x real time, same audio and run."""
    from .. import translate
    from ..synthetic.core import speech_sample

    tr = translate.load_translator(plan.model, backend=plan.backend, device=plan.device, cfg=plan.cfg,
                                   seed=plan.seed)
    pcm = np.resize(speech_sample(), int(plan.seconds * 24000)).astype(np.float32)
    subjects: list[tuple[str, Callable[[], object]]] = []
    if plan.reference and tr.lm.info.backend in ("torch", "cpu"):
        ref = RunInferenceReference(tr, plan.cfg, plan.seed)
        subjects.append(("moshi run_inference InferenceState (reference)", lambda: ref(pcm)))
    subjects.append((f"moshikit {tr.lm.info.backend} (codec {tr.codec.info.backend})",
                     lambda: translate.translate_stream(tr, [pcm])))
    walls: dict[int, list[float]] = {i: [] for i in range(len(subjects))}
    for _, fn in subjects:  # warm-up
        fn()
    for _ in range(plan.repeats):
        for i, (_, fn) in enumerate(subjects):
            t = clock()
            fn()
            walls[i].append(clock() - t)
    task = f"translate {plan.seconds:g} s"
    bound = machine = None
    if tr.lm.info.backend == "cpu":
        from .core import FRAME_SECONDS
        from .limits import limit_row, lm_limit, measure_machine

        machine = measure_machine((tr.lm.info.precision,))
        frames = int(np.ceil(plan.seconds / FRAME_SECONDS))
        bound = lm_limit(tr.lm.engine, tr.lm.depth, 1, frames, machine, tr.lm.info.precision)
    for i, (name, _) in enumerate(subjects):
        row = throughput_row("translate", name, task, plan.seconds, walls[i], batch=1, device=tr.lm.info.device,
                             cfg=plan.cfg)
        if bound is not None and name.startswith("moshikit"):
            row.params["of_limit"] = round(row.stats.p50 / bound["x_real_time"], 4)
        yield row
    if bound is not None:
        yield limit_row("translate", task, bound, machine, tr.lm.info.precision, batch=1, device=tr.lm.info.device)
