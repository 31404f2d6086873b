"""Where a step of Kyutai TTS on moshikit's CPU engine goes: the temporal step, the depth
transformer and the decode, timed by function over one generation (``speak DIR --batch``'s path).

Random weights in the published tts-1.6b-en_fr architecture (``moshikit.synthetic.tts``, built on
first use, ~3.7 GB): speed only. Run it on an idle machine:

    .venv/bin/python scripts/tts_profile.py --batch 4 --steps 60
    .venv/bin/python scripts/tts_profile.py --batch 4 --steps 60 --mimi   # moshi's Mimi decodes
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from moshikit.platform import detect
from moshikit.synthetic.tts import ensure_full_tts
from moshikit.tts import Settings, chunks, load_tts

TEXT = "The quick brown fox jumps over the lazy dog. It is a small model that only exists for tests."


def machine_line(threads: int) -> str:
    """The CPU, torch, the threads and the load average: the first line of every profile here."""
    return f"{detect(gpus=False).cpu}, torch {torch.__version__}, {threads} threads, load {os.getloadavg()[0]:.2f}"


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
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mimi", action="store_true", help="decode with moshi's Mimi (the engine's onnx graph otherwise)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_tts(str(ensure_full_tts()), backend="cpu", dtype=args.dtype)
    if args.mimi:
        model.open_decoder = None
    voice = model.resolve_voice(None)
    settings = Settings(seed=0, max_steps=args.steps)

    def speak():
        return model.generate_batch([chunks([TEXT]) for _ in range(args.batch)], [[voice]] * args.batch, settings)

    speak()  # warm-up (and the decoder graph's export on first use)
    spent: dict = {}
    timed(model.engine.step, "forward", "temporal", spent)
    if model.engine.depth is not None:
        timed(model.engine.depth, "forward", "depth", spent)
    timed(model.tts.mimi, "decode", "decode (moshi's Mimi)", spent)
    opened = model.open_decoder
    if opened is not None:
        def open_timed(batch):
            decoder = opened(batch)
            timed(decoder, "decode", "decode (onnx graph)", spent)
            return decoder
        model.open_decoder = open_timed
    start = time.perf_counter()
    speech = speak()
    wall = time.perf_counter() - start
    steps = speech[0].steps
    print(machine_line(args.threads))
    print(f"batch {args.batch}, {args.dtype}, {steps} steps: {wall / steps * 1e3:.1f} ms a step")
    for key, seconds in spent.items():
        print(f"  {key:<22} {seconds / steps * 1e3:7.1f} ms a step")
    rest = wall - sum(spent.values())
    print(f"  {'the rest':<22} {rest / steps * 1e3:7.1f} ms a step")


if __name__ == "__main__":
    main()
