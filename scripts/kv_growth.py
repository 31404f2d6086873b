"""How long the CPU engine's KV cache stops a batch while it grows, and what reserving it up front
(``serve``, at start) costs instead: stt-1b's LM stepped frame by frame over ``--batch``
streams, each variant in a fresh process right after the model loads (as a server starts).

Random weights in the published stt-1b-en_fr architecture (``~/.cache/moshikit/synthetic/
stt-full-pytorch``, written by ``moshikit bench stt --synthetic --lm-size full``): speed only.
Run it on an idle machine:

    .venv/bin/python scripts/kv_growth.py --batch 32 --frames 260   # past 256 positions: three doublings
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tts_profile import machine_line  # this folder is on the path when a script of it runs


def one(args) -> dict:
    import torch

    from moshikit.stt import load_stt

    torch.set_num_threads(args.threads)
    lm = load_stt(args.model, backend="cpu", dtype=args.dtype).lm
    lm.reset(args.batch)
    reserved = None
    if args.one == "reserve":
        start = time.perf_counter()
        lm.reserve(lm.info.context)
        reserved = time.perf_counter() - start
    rng = np.random.default_rng(0)
    k = lm.info.input_codebooks
    times, grew = [], []
    for i in range(args.frames):
        cap = lm.engine.kv[0].shape[3]
        codes = rng.integers(0, lm.info.card, size=(args.batch, k))
        start = time.perf_counter()
        lm.step(codes)
        times.append(time.perf_counter() - start)
        if lm.engine.kv[0].shape[3] != cap:
            grew.append((i, cap, lm.engine.kv[0].shape[3], times[-1]))
    return {"variant": args.one, "reserve_s": reserved, "median_ms": 1e3 * float(np.median(times)),
            "max_ms": 1e3 * max(times), "grew": grew, "total_s": sum(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path.home() / ".cache/moshikit/synthetic/stt-full-pytorch"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=520, help="frames stepped (stt-1b's cache doubles at 64, 128, 256, 512)")
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", choices=["grow", "reserve"], help=argparse.SUPPRESS)  # a child's variant
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    print(machine_line(args.threads), f"batch {args.batch}, {args.frames} frames, {args.dtype}")
    for variant in ("grow", "reserve"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", variant],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        grew = ", ".join(f"{a}->{b} slots at frame {i}: {t:.2f} s" for i, a, b, t in r["grew"]) or "never"
        held = f"reserved in {r['reserve_s']:.2f} s before the first step; " if r["reserve_s"] is not None else ""
        print(f"{variant:8s} {held}step median {r['median_ms']:.0f} ms, slowest {r['max_ms'] / 1e3:.2f} s, "
              f"all steps {r['total_s']:.1f} s; grew: {grew}")


if __name__ == "__main__":
    main()
