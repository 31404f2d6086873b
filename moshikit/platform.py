"""What machine this is, and which backend each command uses by default here.

Cheap facts (OS, CPU, RAM) come from the standard library and /proc; GPU facts
need torch and are gathered only when asked (``moshikit info``) or when a
default must be chosen between CUDA and CPU.
"""

from __future__ import annotations

import os
import platform as _platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from .backends import registry


@dataclass
class GPU:
    index: int
    name: str
    total_gb: float
    free_gb: float | None = None


@dataclass
class Choice:
    backend: str
    device: str
    reason: str


@dataclass
class PlatformInfo:
    system: str
    machine: str
    python: str
    cpu: str
    cores: int
    ram_gb: float | None
    apple_silicon: bool
    cuda: list[GPU] = field(default_factory=list)
    mps: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()


def _ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def is_apple_silicon() -> bool:
    return _platform.system() == "Darwin" and _platform.machine() == "arm64"


@lru_cache(maxsize=None)
def detect(gpus: bool = True) -> PlatformInfo:
    info = PlatformInfo(
        system=_platform.system(), machine=_platform.machine(), python=_platform.python_version(),
        cpu=_cpu_model(), cores=os.cpu_count() or 1, ram_gb=_ram_gb(), apple_silicon=is_apple_silicon(),
    )
    if gpus and registry.probe("codec", "torch")[0]:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                try:
                    free, _ = torch.cuda.mem_get_info(i)
                    free_gb = free / 1e9
                except RuntimeError:
                    free_gb = None
                info.cuda.append(GPU(i, props.name, props.total_memory / 1e9, free_gb))
        mps = getattr(torch.backends, "mps", None)
        info.mps = bool(mps and mps.is_available())
    return info


#: CPUs where ONNX Runtime's Mimi was measured faster than PyTorch's (docs/benchmarks.md).
ONNX_FASTER_ON = ("x86_64", "amd64")


def default_codec(plat: PlatformInfo | None = None) -> Choice:
    """Apple silicon: mlx (Metal), else rustymimi. CUDA: torch on cuda. An x86 CPU: onnx
    (ONNX Runtime, measured ~1.8x PyTorch whole-file and ~3.1x per streaming frame on a
    2-core x86 box). Otherwise torch on the CPU (~2.6x faster than rustymimi there)."""
    apple = is_apple_silicon() if plat is None else plat.apple_silicon
    if apple:
        for name in ("mlx", "rustymimi"):
            if registry.probe("codec", name)[0]:
                return Choice(name, "gpu" if name == "mlx" else "cpu", "Apple silicon: Metal through MLX")
    plat = plat or detect()
    if plat.cuda:
        return Choice("torch", "cuda", f"CUDA GPU found ({plat.cuda[0].name})")
    if plat.machine.lower() in ONNX_FASTER_ON and registry.probe("codec", "onnx")[0]:
        return Choice("onnx", "cpu", "no GPU, x86 CPU: ONNX Runtime is the fastest CPU codec measured")
    if registry.probe("codec", "torch")[0]:
        return Choice("torch", "cpu", "no GPU: PyTorch is the fastest CPU codec measured here (vs rustymimi)")
    for name in ("rustymimi", "mlx"):
        if registry.probe("codec", name)[0]:
            return Choice(name, "cpu", "no GPU and no PyTorch: next fastest installed codec")
    return Choice("torch", "cpu", "nothing installed: torch is the reference")


def codec_beside_lm(lm_backend: str, lm_device: str) -> str:
    """The codec to run next to an LM: torch on the LM's GPU, else the platform's CPU choice."""
    if lm_backend == "torch" and lm_device not in ("cpu", None):
        return "torch"
    return default_codec().backend


def default_lm(plat: PlatformInfo | None = None) -> Choice:
    apple = is_apple_silicon() if plat is None else plat.apple_silicon
    if apple and registry.probe("lm", "mlx")[0]:
        return Choice("mlx", "gpu", "Apple silicon: Metal through MLX")
    plat = plat or detect()
    if plat.cuda:
        return Choice("torch", "cuda", f"CUDA GPU found ({plat.cuda[0].name})")
    return Choice("torch", "cpu", "no GPU: PyTorch on the CPU (only tiny or local checkpoints run usefully)")


DEFAULTS = {"encode": default_codec, "decode": default_codec, "chat": default_lm, "transcribe": default_lm}


def resolve(kind: str, backend: str | None, device: str | None) -> Choice:
    """``--backend``/``--device`` if given, else the platform default."""
    if backend in (None, "auto"):
        choice = default_codec() if kind == "codec" else default_lm()
        if device not in (None, "auto"):
            choice = Choice(choice.backend, device, f"{choice.reason}; device from --device")
        return choice
    registry.get_spec(kind, backend)  # unknown names fail here
    return Choice(backend, device or "auto", "chosen with --backend")
