"""What machine this is, and which backend each command uses by default here.

Cheap facts (OS, CPU, RAM) come from the standard library and /proc; GPU facts
need torch and are gathered only when asked (``moshikit info``) or when a
default must be chosen between CUDA and CPU.
"""

from __future__ import annotations

import os
import platform as _platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from .backends import registry


@dataclass
class GPU:
    index: int
    name: str
    total_gb: float
    free_gb: float | None = None  # from NVML when nvidia-ml-py is installed (no CUDA context)
    capability: str | None = None  # compute capability, e.g. "8.0" (bf16 from 8.0 on)


@dataclass
class Choice:
    backend: str
    device: str
    reason: str


@dataclass
class PairChoice(Choice):
    """A command that runs two models (``agent``: its STT and its TTS): one row of ``info`` with
    both backends, each choice also whole (``stt``, ``tts``: a Choice's fields, its own reason)
    for ``info --json``."""

    stt: dict = field(default_factory=dict)
    tts: dict = field(default_factory=dict)

    @classmethod
    def of(cls, stt: Choice, tts: Choice) -> "PairChoice":
        device = stt.device if stt.device == tts.device else f"{stt.device} + {tts.device}"
        return cls(f"{stt.backend} + {tts.backend}", device, "STT as `transcribe` runs it, TTS as `speak` does "
                   "(their rows say why)",
                   {"backend": stt.backend, "device": stt.device, "reason": stt.reason},
                   {"backend": tts.backend, "device": tts.device, "reason": tts.reason})


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
            # Properties come from the driver without a CUDA context; torch.cuda.mem_get_info
            # would open one on every GPU (~0.3-0.5 GB each) just to pick a default.
            free = _nvml_free_bytes()
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                free_gb = free[i] / 1e9 if i < len(free) and free[i] is not None else None
                info.cuda.append(GPU(i, props.name, props.total_memory / 1e9, free_gb,
                                     f"{props.major}.{props.minor}"))
        mps = getattr(torch.backends, "mps", None)
        info.mps = bool(mps and mps.is_available())
    return info


def _nvml_free_bytes() -> list[int | None]:
    """Free memory per GPU from NVML (``pip install nvidia-ml-py``), which opens no CUDA
    context; [] when NVML is not there. NVML numbers GPUs as the driver does: with
    ``CUDA_VISIBLE_DEVICES`` set the indices may differ, so then nothing is reported."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return []
    try:
        import pynvml  # type: ignore
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        try:
            return [int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free)
                    for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no permission: the number is optional
        return []


def auto_dtype(device: str | None, plat: PlatformInfo | None = None) -> str:
    """The LM dtype ``--dtype auto`` means on ``device``: bf16 on CUDA GPUs that have it
    (compute capability 8.0 and later: Ampere, Ada, Hopper...), fp16 on older ones, fp32
    elsewhere (CPUs run fp32 much faster; MPS as moshi does)."""
    if not device or str(device).split(":")[0] != "cuda":
        return "fp32"
    index = int(str(device).split(":")[1]) if ":" in str(device) else 0
    plat = plat or detect()
    gpu = next((g for g in plat.cuda if g.index == index), None)
    if gpu is None or gpu.capability is None:
        return "bf16"
    return "bf16" if int(gpu.capability.split(".")[0]) >= 8 else "fp16"


#: The share of a GPU's free memory a batch may fill (the allocator's fragmentation, Mimi's
#: activations and the CUDA graphs' pools take the rest).
BATCH_MEMORY_SHARE = 0.8


def fit_batch(device: str | None, wanted: int, per_item_bytes: int, what: str = "streams") -> tuple[int, str]:
    """(batch, why): ``wanted`` items at once, or as many as the *free* memory of the CUDA
    ``device`` holds at ``per_item_bytes`` each (at least 1). Asked after the model is loaded,
    so its weights are already counted out; off CUDA, or with no estimate, ``wanted``."""
    if not device or str(device).split(":")[0] != "cuda" or per_item_bytes <= 0:
        return wanted, f"{wanted} {what} at once (the default on {device or 'this device'})"
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    room = f"{free / 1e9:.1f} GB free of {total / 1e9:.1f} GB on {device}, ~{per_item_bytes / 1e6:.0f} MB each"
    return _fitted(wanted, int(free * BATCH_MEMORY_SHARE // per_item_bytes), room, what)


def _fitted(wanted: int, fits: int, room: str, what: str) -> tuple[int, str]:
    """(batch, why) of ``fit_batch``/``fit_cpu_batch``: ``wanted``, or the ``fits`` that ``room`` holds (at least 1)."""
    n = max(1, min(wanted, fits))
    if n < wanted:
        return n, f"{n} {what} at once, not {wanted}: {room} (set the batch size to choose)"
    return n, f"{n} {what} at once ({room})"


def available_ram() -> int | None:
    """Bytes of memory the OS could give now without swapping (Linux: ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


#: The share of the available RAM a CPU batch's streams may fill (the codec, the OS and the
#: files read take the rest).
CPU_BATCH_MEMORY_SHARE = 0.5


def fit_cpu_batch(wanted: int, per_item_bytes: int, what: str = "streams") -> tuple[int, str]:
    """(batch, why): ``wanted`` items at once on the CPU, or as many as half the available RAM
    holds at ``per_item_bytes`` each (at least 1); asked after the model is loaded."""
    free = available_ram()
    if not free or per_item_bytes <= 0:
        return wanted, f"{wanted} {what} at once (the default on the CPU)"
    room = f"{free / 1e9:.1f} GB of RAM available, up to ~{per_item_bytes / 1e6:.0f} MB each"
    return _fitted(wanted, int(free * CPU_BATCH_MEMORY_SHARE // per_item_bytes), room, what)


def real_device(backend: str, device: str | None, plat: PlatformInfo | None = None) -> str | None:
    """``--device gpu`` names MLX's GPU; for the PyTorch backends it means the GPU this
    machine has (CUDA, else MPS), and is refused where there is none."""
    if device != "gpu" or backend == "mlx":
        return device
    plat = plat or detect()
    if plat.cuda:
        return "cuda"
    if plat.mps:
        return "mps"
    from .errors import UsageError

    raise UsageError("--device gpu: no GPU that PyTorch can use here (no CUDA device, no Apple MPS)",
                     hint="use --device cpu, or --device auto")


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
    return Choice("torch", "cpu", "no GPU: PyTorch on the CPU (live Moshi 7B needs a GPU; small or local "
                  "checkpoints run)")


def default_stt(plat: PlatformInfo | None = None) -> Choice:
    """``transcribe``: the LM's choice; on a CPU full-size checkpoints run with int8 weights
    (``cpu_precision``), which brings stt-1b close to real time on 2 cores (docs/benchmarks.md)."""
    choice = default_lm(plat)
    if choice.device != "cpu":
        return choice
    engine = stt_lm(Choice("torch", "cpu", ""))
    if engine.backend == "cpu":
        return Choice("cpu", "cpu", "no GPU: moshikit's CPU engine (compact KV cache, kernels picked for this CPU), "
                                    "int8 weights for stt and stt-en (--dtype auto)")
    return Choice("torch", "cpu", "no GPU: PyTorch on the CPU, int8 weights for stt and stt-en (--dtype auto)")


def stt_lm(choice: Choice) -> Choice:
    """``choice`` (the LM default) for a speech-to-text model: the CPU engine where torch would
    run on the CPU and the engine loads here."""
    if choice.backend == "torch" and str(choice.device).split(":")[0] == "cpu" and registry.probe("lm", "cpu")[0]:
        return Choice("cpu", "cpu", "no GPU: moshikit's CPU engine (compact KV cache, int8 kernels picked for "
                                    "this CPU)")
    return choice


def default_translate(plat: PlatformInfo | None = None) -> Choice:
    """``translate``: Hibiki on the torch LM backend (its conditioning, guidance and end-of-input
    step) on the GPU PyTorch finds (CUDA, else Apple's MPS); with no GPU, moshikit's CPU engine
    where it loads (Hibiki 1B's architecture: 2.8x moshi's ``run_inference`` in int8 on a 2-core
    Xeon, docs/benchmarks.md), else torch on the CPU."""
    plat = plat or detect()
    device = "cuda" if plat.cuda else "mps" if plat.mps else "cpu"
    if device == "cpu" and registry.probe("lm", "cpu")[0]:
        return Choice("cpu", "cpu", "no GPU: Hibiki on moshikit's CPU engine (int8 kernels picked for this CPU)")
    where = {"cuda": f"CUDA GPU found ({plat.cuda[0].name})" if plat.cuda else "", "mps": "Apple MPS",
             "cpu": "no GPU: on the CPU"}[device]
    return Choice("torch", device, f"Hibiki on the torch backend (-b cpu: moshikit's CPU engine); {where}")


def default_tts(plat: PlatformInfo | None = None, model: str | None = None) -> Choice:
    """``speak``: Apple silicon: MLX (Metal). CUDA: torch on cuda. Otherwise, with no ``--model``,
    Pocket TTS when it is installed (made for CPUs: Kyutai TTS 1.6B runs below real time on 2
    cores, docs/benchmarks.md); Kyutai TTS on moshikit's CPU engine (``-b cpu``: int8 for the
    1.6B checkpoint, 2.1x moshi's ``TTSModel.generate`` at batch 1 and 3.0x at batch 4, measured),
    else on torch on the CPU."""
    apple = is_apple_silicon() if plat is None else plat.apple_silicon
    if apple and "mlx" in registry.names("tts") and registry.probe("tts", "mlx")[0]:
        return Choice("mlx", "gpu", "Apple silicon: Metal through MLX")
    plat = plat or detect()
    if plat.cuda:
        return Choice("torch", "cuda", f"CUDA GPU found ({plat.cuda[0].name})")
    if model is None and "pocket" in registry.names("tts") and registry.probe("tts", "pocket")[0]:
        return Choice("pocket", "cpu", "no GPU: Pocket TTS, made for CPUs (a --model of Kyutai TTS runs on "
                      "moshikit's CPU engine)")
    if "cpu" in registry.names("tts") and registry.probe("tts", "cpu")[0]:
        return Choice("cpu", "cpu", "no GPU: moshikit's CPU engine (compact KV cache, int8 kernels picked for "
                      "this CPU for the 1.6B checkpoint)")
    return Choice("torch", "cpu", "no GPU: PyTorch on the CPU")


def default_agent_stt(plat: PlatformInfo | None = None) -> Choice:
    """``agent``'s speech-to-text with no ``--stt``: ``transcribe``'s choice (stt-1b, whose pause
    heads end the user's turns; int8 on moshikit's CPU engine without a GPU)."""
    return default_stt(plat)


def default_agent_tts(plat: PlatformInfo | None = None, model: str | None = None) -> Choice:
    """``agent``'s text-to-speech: ``speak``'s choice for ``model`` (with none and no GPU, Pocket
    TTS when it is installed: ~150 ms to first audio on 2 cores, docs/benchmarks.md)."""
    return default_tts(plat, model)


def default_agent(plat: PlatformInfo | None = None) -> PairChoice:
    """``agent`` with no ``--stt``/``--tts``: its STT and TTS, as ``agent.models.choices`` resolves them."""
    return PairChoice.of(default_agent_stt(plat), default_agent_tts(plat))


#: What each command runs on when no --backend/--device is given: the very functions the commands
#: resolve with (``resolve(..., default=...)``), and the rows of ``moshikit info``.
DEFAULTS = {"encode": default_codec, "decode": default_codec, "transcribe": default_stt,
            "translate": default_translate, "speak": default_tts, "chat": default_lm, "serve": default_lm,
            "agent": default_agent}


def resolve(kind: str, backend: str | None, device: str | None,
            default: Callable[[], Choice] | None = None) -> Choice:
    """``--backend``/``--device`` if given, else ``default()`` (the kind's platform default:
    a command passes its own entry of ``DEFAULTS``)."""
    if backend in (None, "auto"):
        choice = (default or {"codec": default_codec, "tts": default_tts}.get(kind, default_lm))()
        if device not in (None, "auto"):
            choice = Choice(choice.backend, real_device(choice.backend, device), f"{choice.reason}; device from --device")
        return choice
    registry.get_spec(kind, backend)  # unknown names fail here
    return Choice(backend, real_device(backend, device) or "auto", "chosen with --backend")
