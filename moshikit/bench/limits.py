"""How far a row is from what this machine can do: a roofline for one LM step.

A step must read its weights and the keys and values it attends over, and do its multiply-adds.
On this machine, measured in the same run: the memory read bandwidth (one pass over a tensor far
larger than the caches) and the matmul throughput of each precision (a square layer at a batch
large enough to be bound by arithmetic). The step cannot take less than the larger of
``bytes / bandwidth`` and ``operations / throughput``; its audio is ``batch x 80 ms``. The
"limit" row is that bound in x real time; a measured row's ``of_limit`` is its share of it.

Left out, so the bound is optimistic: the codec (Mimi encode), sampling, the small ops between
matmuls, and the text head's float32 matmul counted at the precision's throughput.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .core import FRAME_SECONDS

READ_BYTES = 1 << 30  # far beyond any cache
SIDE = 4096  # the square layer timed for matmul throughput
MATH_BATCH = 256  # rows: bound by arithmetic for every precision here


@dataclass
class Machine:
    read_gb_s: float  # memory read bandwidth
    gop_s: dict  # precision -> matmul throughput (giga multiply-add operations x 2 per second)
    threads: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class StepCost:
    weight_bytes: int  # the matmul weights read once per step (whatever the batch)
    kv_bytes: int  # keys and values read per step (every stream's window)
    ops: float  # multiply-adds x 2, matmuls and attention


def _best(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_machine(precisions=("int8", "bf16", "fp32")) -> Machine:
    """This machine's read bandwidth and matmul throughput, with the threads torch uses now (~5 s)."""
    import torch
    from torch import nn

    from ..backends.cpu_kernels import Linear

    with torch.inference_mode():
        big = torch.ones(READ_BYTES // 4, dtype=torch.float32)
        read = READ_BYTES / _best(big.sum) / 1e9
        del big
        gop = {}
        torch.manual_seed(0)
        dense = nn.Linear(SIDE, SIDE, bias=False)
        x = torch.randn(MATH_BATCH, SIDE)
        for p in precisions:
            layer = Linear(dense, p)
            layer.set_batch(MATH_BATCH)
            gop[p] = round(2 * MATH_BATCH * SIDE * SIDE / _best(lambda: layer(x)) / 1e9, 1)
    return Machine(round(read, 1), gop, torch.get_num_threads())


def engine_cost(engine, batch: int, window: float) -> StepCost:
    """One step of the CPU engine's temporal transformer (``cpu_step.Step``) for ``batch``
    streams attending over ``window`` positions each."""
    from ..backends.cpu_kernels import Linear

    weights = macs = 0
    for m in engine.modules():
        if isinstance(m, Linear):
            weights += m.weight_bytes()
            macs += m.in_features * m.out_features * batch
    layers = len(engine.layers)
    kv_elem = 2 if str(engine.kv_dtype).endswith("bfloat16") else 4
    kv = int(layers * 2 * batch * engine.dim * window * kv_elem)
    attention_macs = layers * 2 * batch * engine.dim * window  # q.k and p.v
    return StepCost(weights, kv, 2.0 * (macs + attention_macs))


def depth_cost(depth, batch: int) -> StepCost:
    """One frame of the CPU engine's depth transformer (``cpu_depth.Depth``) for ``batch`` streams:
    every codebook's products with the weights its schedule picks (weights shared by several
    codebooks read once), the input projection once, its keys and values ignored (a few KB)."""
    used: dict[int, object] = {}
    macs = depth.project.in_features * depth.project.out_features * batch
    used[id(depth.project)] = depth.project
    for k in range(depth.steps):
        lins = [depth.heads_out[k]]
        for layer in depth.layers:
            ff = layer.ff[layer.ff_pick[k]]
            lins += [layer.qkv[layer.pick[k]], layer.out[layer.pick[k]], ff.inner, ff.outer]
        for lin in lins:
            macs += lin.in_features * lin.out_features * batch
            used[id(lin)] = lin
    return StepCost(sum(m.weight_bytes() for m in used.values()), 0, 2.0 * macs)


def combined(*costs: StepCost) -> StepCost:
    return StepCost(sum(c.weight_bytes for c in costs), sum(c.kv_bytes for c in costs), sum(c.ops for c in costs))


def lm_limit(step, depth, batch: int, frames: int, machine: Machine, precision: str) -> dict:
    """The roofline of one frame of a Moshi-family LM on the CPU engine: its temporal step
    (``cpu_step.Step``, attending over the mean window of ``frames`` steps from an empty cache)
    and, where the model has one, its depth transformer (``cpu_depth.Depth``)."""
    cost = engine_cost(step, batch, mean_window(frames, step.context))
    if depth is not None:
        cost = combined(cost, depth_cost(depth, batch))
    return limit(cost, machine, precision, batch)


def limit_row(stage: str, task: str, bound: dict, machine: Machine, precision: str, **params):
    """The ``limit: LM step, <precision>`` row (x real time) beside the rows it bounds."""
    from .core import Row, Stats

    return Row(stage, f"limit: LM step, {precision}", task, "x real time", Stats.of([bound["x_real_time"]]),
               {**params, "precision": precision, **bound, "machine": machine.to_json()})


def limit(cost: StepCost, machine: Machine, precision: str, batch: int) -> dict:
    """The roofline for a step: its bound in x real time and which side bounds it."""
    read = (cost.weight_bytes + cost.kv_bytes) / (machine.read_gb_s * 1e9)
    math = cost.ops / (machine.gop_s.get(precision, machine.gop_s.get("fp32", 1.0)) * 1e9)
    seconds = max(read, math)
    return {"x_real_time": round(batch * FRAME_SECONDS / seconds, 3), "step_ms": round(seconds * 1000, 2),
            "bound": "memory" if read >= math else "arithmetic", "read_ms": round(read * 1000, 2),
            "math_ms": round(math * 1000, 2), "weights_mb": round(cost.weight_bytes / 2**20, 1),
            "kv_mb": round(cost.kv_bytes / 2**20, 1), "gop_per_step": round(cost.ops / 1e9, 2)}


def mean_window(frames: int, context: int, align: int = 64) -> float:
    """The mean attention window over ``frames`` steps from an empty cache, as the engine rounds it."""
    if frames <= 0:
        return 0.0
    total = sum(min(context, -(-min(i + 1, context) // align) * align) for i in range(frames))
    return total / frames
