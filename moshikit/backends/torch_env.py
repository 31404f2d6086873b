"""Process-wide settings for moshi's PyTorch code, applied before moshi is imported.

moshi wraps helpers in ``torch.compile`` unless ``NO_TORCH_COMPILE`` is set when its
modules are imported; on a CPU that costs tens of seconds of compilation for no gain.
moshikit therefore turns compilation off unless asked (``MOSHIKIT_TORCH_COMPILE=1``,
or ``moshikit bench ... --compile``). CUDA graphs stay moshi's default (on, on CUDA)
unless ``NO_CUDA_GRAPH=1`` (``--no-cuda-graphs``).
"""

from __future__ import annotations

import os


def prepare() -> None:
    if os.environ.get("MOSHIKIT_TORCH_COMPILE"):
        os.environ.pop("NO_TORCH_COMPILE", None)
    else:
        os.environ.setdefault("NO_TORCH_COMPILE", "1")


def configure(compile: bool | None = None, cuda_graphs: bool | None = None) -> None:
    """Set the knobs from command-line flags (None leaves the environment as it is)."""
    if compile is not None:
        os.environ["MOSHIKIT_TORCH_COMPILE"] = "1" if compile else ""
    if cuda_graphs is not None:
        os.environ["NO_CUDA_GRAPH"] = "" if cuda_graphs else "1"
    prepare()
