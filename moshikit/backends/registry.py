"""The one table of backends. Adding a backend means adding a row here and a module.

Each row names the module that implements it; the module is imported only when
the backend is used, so ``moshikit --help`` never pays for torch or mlx.
A backend module exposes ``load(weights, *, device, **options)`` returning an
object that satisfies the Protocol of its kind (see ``base.py``), and
``probe() -> str`` which imports what it needs and returns a version string
(raising ``ImportError``/``OSError`` where it cannot run here).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from ..errors import BackendError, BackendUnavailable

Kind = Literal["codec", "lm", "tts"]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    kind: Kind
    module: str
    install: str  # the command that makes it importable
    summary: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("torch", "codec", "moshikit.backends.torch_codec", "pip install moshikit",
                "moshi's MimiModel in PyTorch (CUDA, MPS or CPU)"),
    BackendSpec("rustymimi", "codec", "moshikit.backends.rustymimi_codec", "pip install rustymimi",
                "Kyutai's Rust Mimi (candle) through its Python binding"),
    BackendSpec("onnx", "codec", "moshikit.backends.onnx_codec", "pip install 'moshikit[onnx]'",
                "moshi's MimiModel with its SEANet convolutions in ONNX Runtime (CPU)"),
    BackendSpec("mlx", "codec", "moshikit.backends.mlx_codec", "pip install 'moshikit[mlx]'",
                "moshi_mlx's Mimi on MLX (Apple silicon; CPU elsewhere)"),
    BackendSpec("torch", "lm", "moshikit.backends.torch_lm", "pip install moshikit",
                "moshi's LMModel and LMGen in PyTorch"),
    BackendSpec("cpu", "lm", "moshikit.backends.cpu_engine", "pip install moshikit",
                "moshikit's CPU engine for Kyutai LMs (speech-to-text, Moshi, Hibiki): compact KV cache, "
                "int8 kernels picked for the CPU"),
    BackendSpec("mlx", "lm", "moshikit.backends.mlx_lm", "pip install 'moshikit[mlx]'",
                "moshi_mlx's Lm on MLX"),
    BackendSpec("torch", "tts", "moshikit.backends.torch_tts", "pip install moshikit",
                "Kyutai TTS through moshi's TTSModel in PyTorch (CUDA, MPS or CPU)"),
    BackendSpec("cpu", "tts", "moshikit.backends.cpu_tts", "pip install moshikit",
                "Kyutai TTS on moshikit's CPU engine: moshi's TTSModel around it, its LM rebuilt with a compact "
                "KV cache and int8 kernels picked for the CPU"),
    BackendSpec("mlx", "tts", "moshikit.backends.mlx_tts", "pip install 'moshikit[mlx]'",
                "Kyutai TTS through moshi_mlx's Lm and TTS state machine on MLX (Apple silicon; CPU elsewhere)"),
    BackendSpec("pocket", "tts", "moshikit.backends.pocket_tts", "pip install 'moshikit[pocket]'",
                "Kyutai's Pocket TTS (~100M, CPU, voice cloning) through the pocket-tts package"),
)


def names(kind: Kind) -> list[str]:
    return [b.name for b in BACKENDS if b.kind == kind]


def get_spec(kind: Kind, name: str) -> BackendSpec:
    for spec in BACKENDS:
        if spec.kind == kind and spec.name == name:
            return spec
    raise BackendError(
        f"unknown {kind} backend {name!r}",
        hint=f"choose one of: {', '.join(names(kind))} (or auto)",
    )


def module(kind: Kind, name: str):
    """Import a backend's module, turning a missing dependency into a clear error."""
    spec = get_spec(kind, name)
    try:
        mod = importlib.import_module(spec.module)
        mod.probe()
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(
            f"the {name} {kind} backend is not available here: {_first_line(exc)}",
            hint=f"install it with: {spec.install}",
        ) from exc
    return mod


@lru_cache(maxsize=None)
def probe(kind: Kind, name: str) -> tuple[bool, str]:
    """(True, version) when the backend loads here, else (False, reason)."""
    spec = get_spec(kind, name)
    try:
        return True, importlib.import_module(spec.module).probe()
    except (ImportError, OSError) as exc:
        return False, _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
