"""This machine as the catalog sees it, cheaply (no torch where nvidia-smi answers), or a machine
described in a few words (``MOSHIKIT_PLATFORM=cuda:24``, tests) to choose models for."""

from __future__ import annotations

import os
import platform as _platform
import re
import shutil
import subprocess

from .errors import UsageError
from .platform import GPU, PlatformInfo


def platform_from_spec(spec: str) -> PlatformInfo:
    """``apple:16``, ``cuda:80``, ``cpu:32`` (GB) as a PlatformInfo, for tests and MOSHIKIT_PLATFORM."""
    m = re.fullmatch(r"(apple|cuda|cpu):(\d+(?:\.\d+)?)", spec.strip().lower())
    if not m:
        raise UsageError(f"platform {spec!r}: expected apple:GB, cuda:GB or cpu:GB (e.g. cuda:24)")
    cls, gb = m.group(1), float(m.group(2))
    if cls == "apple":
        return PlatformInfo("Darwin", "arm64", "3", "Apple M", 8, gb, True, mps=True)
    cuda = [GPU(0, "", gb)] if cls == "cuda" else []
    return PlatformInfo("Linux", "x86_64", "3", "x86_64", 8, 64.0 if cls == "cuda" else gb, False, cuda)


_MIB_GB = 1048576 / 1e9  # nvidia-smi reports MiB; platform.detect uses decimal GB


def _nvidia_smi() -> list[GPU] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            gpus.append(GPU(int(parts[0]), parts[1], float(parts[2]) * _MIB_GB, float(parts[3]) * _MIB_GB))
        except (ValueError, IndexError):
            continue
    return gpus


def current_platform() -> PlatformInfo:
    """This machine, cheaply: ``MOSHIKIT_PLATFORM`` if set, nvidia-smi for CUDA memory, torch only as a fallback."""
    spec = os.environ.get("MOSHIKIT_PLATFORM")
    if spec:
        return platform_from_spec(spec)
    from .platform import detect

    plat = detect(gpus=False)
    if plat.apple_silicon or _platform.system() == "Darwin":
        return plat
    gpus = _nvidia_smi()
    if gpus is not None:
        return PlatformInfo(**{**plat.__dict__, "cuda": gpus})
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd"):
        return detect(gpus=True)
    return plat
