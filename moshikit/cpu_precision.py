"""Which precision a Kyutai LM runs in on a CPU, chosen at run time from what the CPU has.

On a CPU a full-size model's step is bound by reading its weights (batch 1) or by its
matmuls (large batches). 8-bit weights quarter the bytes of fp32 and run on int8 dot-product
instructions (AVX2; AVX-512 VNNI and AMX where present, Intel and AMD alike), so for
checkpoints of real size ``--dtype auto`` means int8 on a CPU. Tiny checkpoints (tests,
``--model synthetic``) gain nothing from it and stay in fp32, as before.

Measured on a 2-core Xeon (AVX-512 BF16, AMX), full-size stt-1b architecture: see
docs/benchmarks.md (``moshikit bench stt --synthetic --lm-size full``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: LM weight files at least this large get int8 weights on a CPU by default (the published
#: STT models are 2 GB and 5 GB in bf16; the tiny test checkpoints a few MB).
INT8_MIN_BYTES = 200 * 2**20


#: ``ONEDNN_MAX_CPU_ISA`` caps (oneDNN's names) and the flags each takes away: the kernel choices
#: made from the flags then follow the cap oneDNN's own kernels follow.
_CAPS = {
    "avx2": ("avx512", "amx", "avx_vnni"),
    "avx2_vnni": ("avx512", "amx"),
    "avx2_vnni_2": ("avx512", "amx"),
    "avx512_core": ("avx512_vnni", "avx512_bf16", "avx512_fp16", "amx"),
    "avx512_core_vnni": ("avx512_bf16", "avx512_fp16", "amx"),
    "avx512_core_bf16": ("avx512_fp16", "amx"),
    "avx512_core_fp16": ("amx",),
}


def capped(flags: frozenset[str], cap: str | None) -> frozenset[str]:
    """``flags`` as a CPU capped at oneDNN's ``cap`` (``ONEDNN_MAX_CPU_ISA``) has them."""
    gone = _CAPS.get((cap or "").strip().lower(), ())
    return frozenset(f for f in flags if not f.startswith(gone)) if gone else flags


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read), less those
    above ``ONEDNN_MAX_CPU_ISA`` where it is set (the test command's passes on other kernel sets)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return capped(frozenset(line.split(":", 1)[1].split()), os.environ.get("ONEDNN_MAX_CPU_ISA"))
    except OSError:
        pass
    return frozenset()


def cpu_kernels(flags: frozenset[str] | None = None) -> list[str]:
    """The matmul instruction sets this CPU offers, best first (for messages and bench notes)."""
    flags = cpu_flags() if flags is None else flags
    names = [("amx_int8", "AMX int8"), ("amx_bf16", "AMX bf16"), ("avx512_vnni", "AVX-512 VNNI"),
             ("avx512_bf16", "AVX-512 BF16"), ("avx_vnni", "AVX-VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2")]
    return [label for flag, label in names if flag in flags]


def int8_supported() -> bool:
    """Whether this PyTorch build has an int8 CPU engine (fbgemm on x86, qnnpack on Arm)."""
    import torch

    engines = getattr(torch.backends.quantized, "supported_engines", [])
    return any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack"))


def int8_available() -> bool:
    try:
        return int8_supported()
    except ImportError:
        return False


@dataclass(frozen=True)
class Precision:
    dtype: str | None  # what to pass to the LM backend (None: the backend's own auto)
    reason: str


def choose(dtype: str | None, device: str | None, weights: str | os.PathLike | None,
           backend: str = "torch") -> Precision:
    """The precision for an LM of ``weights`` on ``device``: what was asked, else int8 on a CPU
    for a checkpoint of real size (where the CPU and PyTorch have int8 kernels), else the
    backend's default."""
    if dtype not in (None, "auto"):
        return Precision(dtype, "chosen with --dtype")
    where = str(device or "cpu").split(":")[0]
    if backend == "cpu":  # moshikit's CPU engine runs on the CPU whatever device was (not) asked
        where = "cpu"
    if backend not in ("torch", "cpu") or where != "cpu":
        return Precision(None, "the backend's default for this device")
    try:
        size = Path(weights).stat().st_size if weights is not None else 0
    except OSError:
        size = 0
    if size < INT8_MIN_BYTES:
        return Precision(None, "fp32: a small checkpoint (int8 pays off from a few hundred MB of weights)")
    if not int8_available():
        return Precision(None, "fp32: this PyTorch has no int8 CPU kernels")
    kernels = ", ".join(cpu_kernels()[:3]) or "no vector int8 instructions found"
    return Precision("int8", f"int8 weights on the CPU ({kernels}): a step reads a quarter of fp32's bytes")
