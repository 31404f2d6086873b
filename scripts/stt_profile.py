"""Where ``transcribe``'s time goes on moshikit's CPU engine: the codec's encode and the LM step,
timed by function over one batch of files (``transcribe DIR``'s path, ``run_streams``).

Random weights in the published stt-1b-en_fr architecture (``~/.cache/moshikit/synthetic/
stt-full-pytorch``, written by ``moshikit bench stt --synthetic --lm-size full``): speed only.
Run it on an idle machine:

    .venv/bin/python scripts/stt_profile.py --batch 32 --seconds 10
    .venv/bin/python scripts/stt_profile.py --batch 8 --steps 30   # the LM step alone
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from moshikit.stt import Stream, TranscribeOptions, load_stt, run_streams
from tts_profile import machine_line, timed  # this folder is on the path when a script of it runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path.home() / ".cache/moshikit/synthetic/stt-full-pytorch"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0,
                    help="time the LM step alone: this many steps after as many to warm up (random codes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_stt(args.model, backend="cpu", dtype=args.dtype)
    if args.steps:
        return steps_alone(model, args)
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
    print(machine_line(args.threads))
    print(f"batch {args.batch} x {args.seconds:g} s, {args.dtype}: {wall:.1f} s, "
          f"{args.batch * args.seconds / wall:.2f}x real time")
    for key, seconds in spent.items():
        print(f"  {key:<28} {seconds:7.2f} s ({seconds / wall:4.0%})")
    print(f"  {'the rest':<28} {wall - sum(spent.values()):7.2f} s")


def steps_alone(model, args) -> None:
    """The LM step at ``--batch`` streams, after the first reset (timed: kernels laid out for the
    batch) and ``--steps`` warm-up steps."""
    lm = model.lm
    step = lm.step_heads if lm.info.extra_heads > 2 else lm.step
    start = time.perf_counter()
    lm.reset(args.batch)
    reset = time.perf_counter() - start
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 2048, (args.batch, lm.info.input_codebooks)) for _ in range(2 * args.steps)]
    for c in codes[:args.steps]:
        step(c)
    start = time.perf_counter()
    for c in codes[args.steps:]:
        step(c)
    per_step = (time.perf_counter() - start) / args.steps
    print(machine_line(args.threads))
    print(f"batch {args.batch}, {args.dtype}: first reset {reset * 1e3:.0f} ms, "
          f"{per_step * 1e3:.1f} ms a step (steps {args.steps + 1}-{2 * args.steps})")


if __name__ == "__main__":
    main()
