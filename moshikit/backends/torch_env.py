"""Process-wide settings for moshi's PyTorch code, applied before moshi is imported.

moshi wraps helpers in ``torch.compile`` unless ``NO_TORCH_COMPILE`` is set when its
modules are imported; on a CPU that costs tens of seconds of compilation for no gain
(and on CUDA a triton build and a C compiler on first use). moshikit therefore turns
compilation off unless asked (``MOSHIKIT_TORCH_COMPILE=1``, or ``moshikit bench ...
--compile``). CUDA graphs stay moshi's default (on, on CUDA) unless ``NO_CUDA_GRAPH=1``
(``--no-cuda-graphs``).

``prepare()`` runs when the ``moshikit`` package is imported (``moshikit/__init__.py``),
so every entry path (the CLI, the library, Ray workers unpickling moshikit functions)
sets the switches before any of its modules can import moshi. A program that imported
moshi before moshikit gets compilation switched off through moshi's own ``no_compile``
(its wrappers check that flag on every call).
"""

from __future__ import annotations

import os
import sys

_held: list = []  # moshi's no_compile() context, entered for good when moshi came first


def compile_wanted() -> bool:
    return bool(os.environ.get("MOSHIKIT_TORCH_COMPILE"))


def prepare() -> None:
    if compile_wanted():
        os.environ.pop("NO_TORCH_COMPILE", None)
        while _held:
            _held.pop().__exit__(None, None, None)
        return
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    compile_mod = sys.modules.get("moshi.utils.compile")
    if compile_mod is not None and not _held:
        ctx = compile_mod.no_compile()
        ctx.__enter__()
        _held.append(ctx)


def configure(compile: bool | None = None, cuda_graphs: bool | None = None) -> None:
    """Set the knobs from command-line flags (None leaves the environment as it is)."""
    if compile is not None:
        os.environ["MOSHIKIT_TORCH_COMPILE"] = "1" if compile else ""
    if cuda_graphs is not None:
        os.environ["NO_CUDA_GRAPH"] = "" if cuda_graphs else "1"
    prepare()


def quiet_library_logs(debug: bool = False) -> None:
    """For the CLI: torch's own log lines (e.g. cpp_extension's "No CUDA runtime is found")
    are not moshikit's to show; only errors pass, unless ``--debug``/``MOSHIKIT_DEBUG``."""
    if debug or os.environ.get("MOSHIKIT_DEBUG"):
        return
    os.environ.setdefault("TORCH_LOGS", "-all")  # read by torch when it is imported
    if "torch" in sys.modules:
        import logging

        logging.getLogger("torch").setLevel(logging.ERROR)
