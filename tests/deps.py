"""Which optional parts a test may skip without. Core dependencies never skip: a broken install
must fail the suite, not thin it. onnxruntime is core on x86 (pyproject installs it there)."""

from __future__ import annotations

import platform

import pytest

ONNX_IS_CORE = platform.machine().lower() in ("x86_64", "amd64")


def onnx_available() -> bool:
    from moshikit.backends import registry

    return registry.probe("codec", "onnx")[0]


# x86: run (and fail if onnxruntime is broken); elsewhere skip when it is not installed
needs_onnx = pytest.mark.skipif(not ONNX_IS_CORE and not onnx_available(),
                                reason="onnxruntime is not installed (optional on this CPU)")
