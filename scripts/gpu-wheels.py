#!/usr/bin/env python3
"""Download exactly the wheels the GPU proof needs on the machine lent to this project.

    python scripts/gpu-wheels.py [--dest gpu-wheels] [--print]

That machine has Python 3.12, torch 2.11 (CUDA 13), onnxruntime, numpy and huggingface_hub 1.x,
and no network; the checkout travels to it with at most 64 MiB in all. This fetches, for
cp312 manylinux x86_64 and without dependencies (``--no-deps``: moshi's metadata pins
torch<2.10, which the lent torch does not meet; what moshikit imports runs on it), the rest
of what the proof imports, into ``gpu-wheels/`` (ignored by git), and checks the total stays
under 50 MiB (26.9 MiB with these pins). Optional parts are left out and skipped by the proof
with a note: q8 through bitsandbytes (61 MB), chat's echo cancellation through livekit; so is
rustymimi (28.8 MB, a CPU-only codec the proof's CUDA rows skip anyway).

On the lent machine, in one call from the checkout (the wheels into a folder of their own, so
nothing of the machine's is changed and no write access to its site-packages is needed; the
proof's child processes inherit PYTHONPATH):

    python -m pip install -q --no-index --no-deps --target .lent gpu-wheels/*.whl && \\
        PYTHONPATH=$PWD/.lent python -m moshikit.testing.gpu_proof --device cuda --out "$OUT/proof"

``scripts/lent-env.sh`` builds that machine's stand-in here (a clean venv, these wheels installed
the same way) for the proof's CPU dry run, a test.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

#: What the proof imports beyond the lent machine's own packages, at the versions moshikit is
#: tested with here. Pure-Python wheels and cp312 manylinux ones.
WHEELS = (
    # the models
    "moshi==0.2.13", "einops==0.8.2", "safetensors==0.5.3", "sentencepiece==0.2.0", "sphn==0.2.1",
    # audio files
    "soundfile==0.14.0", "cffi==2.1.1", "pycparser==3.12", "soxr==1.1.0",
    # the CLI
    "typer==0.26.8", "annotated-doc==0.0.7", "shellingham==1.5.4", "rich==15.0.0", "markdown-it-py==4.3.0",
    "mdurl==0.1.2", "pygments==2.21.0",
    # chat --url's client and moshi's (aiohttp and what it imports)
    "aiohttp==3.11.18", "aiohappyeyeballs==2.7.1", "aiosignal==1.4.0", "attrs==26.1.0", "frozenlist==1.8.0",
    "multidict==6.9.1", "propcache==0.5.4", "yarl==1.25.1", "idna==3.21",
    # serve (Starlette on uvicorn; moshi-server's msgpack protocol; OpenAI's uploads) and bench serve's client
    "starlette==1.10.0", "anyio==4.16.0", "sniffio==1.3.1", "uvicorn==0.55.0", "h11==0.16.0", "click==8.5.1",
    "websockets==17.4", "python-multipart==0.0.34", "msgpack==1.2.4",
    # the cuda tests
    "pytest==9.2.0", "iniconfig==2.3.1", "pluggy==1.7.0",
)
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64")  # glibc 2.28 or newer on the lent machine (any current distribution)
LIMIT_MIB = 50


def pip_download(specs, dest: Path, python: str = "3.12") -> list[str]:
    abi = "cp" + python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version", python,
            "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", "--dest", str(dest)]
    for p in PLATFORMS:
        argv += ["--platform", p]
    return argv + list(specs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", default="gpu-wheels", help="folder for the wheels (default %(default)s, git-ignored)")
    p.add_argument("--print", action="store_true", help="print the pip command, download nothing")
    p.add_argument("--python-version", default="3.12", help="the lent machine's Python (default %(default)s; "
                   "another only to simulate that machine with the interpreter at hand)")
    args = p.parse_args(argv)
    dest = Path(args.dest)
    specs = WHEELS
    cmd = pip_download(specs, dest, args.python_version)
    if args.print:
        print(" ".join(cmd))
        return 0
    if dest.exists():
        shutil.rmtree(dest)  # exactly these wheels, nothing left from an earlier run
    dest.mkdir(parents=True)
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    names = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    missing = [s for s in specs if s.split("==")[0].lower().replace("_", "-") not in names]
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest}")
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    if total > LIMIT_MIB * 2**20:
        print(f"over {LIMIT_MIB} MiB: the checkout and the wheels must travel in 64 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
