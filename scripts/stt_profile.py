"""Where ``transcribe``'s time goes on moshikit's CPU engine: the codec's encode and the LM step,
timed by function over one batch of files (``transcribe DIR``'s path, ``run_streams``).

Random weights in the published stt-1b-en_fr architecture (``~/.cache/moshikit/synthetic/
stt-full-pytorch``, written by ``moshikit bench stt --synthetic --lm-size full``): speed only.
Run it on an idle machine:

    .venv/bin/python scripts/stt_profile.py --batch 32 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from moshikit.stt import Stream, TranscribeOptions, load_stt, run_streams


def timed(obj, name: str, key: str, spent: dict) -> None:
    """Wrap ``obj.name`` so that its wall time adds to ``spent[key]``."""
    inner = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - start

    setattr(obj, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path.home() / ".cache/moshikit/synthetic/stt-full-pytorch"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_stt(args.model, backend="cpu", dtype=args.dtype)
    rng = np.random.default_rng(0)
    audio = [0.1 * rng.standard_normal(int(24000 * args.seconds)).astype(np.float32) for _ in range(args.batch)]
    chunk = TranscribeOptions().chunk  # transcribe's chunks for files (~2 s)

    def run():
        streams = [Stream(model, f"noise{i}", [a], refine=False) for i, a in enumerate(audio)]
        for s in run_streams(model, streams, args.batch, chunk=chunk):
            s.finish()

    run()  # warm-up
    spent: dict = {}
    timed(model.lm, "step", "LM step", spent)
    timed(model.lm, "step_heads", "LM step", spent)  # models with extra heads (stt-1b's pause prediction)
    timed(model.codec, "encode_step", "codec encode (batched)", spent)
    if hasattr(model.codec, "open_encoder"):
        opened = model.codec.open_encoder

        def open_timed():
            encoder = opened()
            timed(encoder, "encode", "codec encode (per stream)", spent)
            return encoder
        model.codec.open_encoder = open_timed
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "?")
    print(f"{cpu}, torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    print(f"batch {args.batch} x {args.seconds:g} s, {args.dtype}: {wall:.1f} s, "
          f"{args.batch * args.seconds / wall:.2f}x real time")
    for key, seconds in spent.items():
        print(f"  {key:<28} {seconds:7.2f} s ({seconds / wall:4.0%})")
    print(f"  {'the rest':<28} {wall - sum(spent.values()):7.2f} s")


if __name__ == "__main__":
    main()
