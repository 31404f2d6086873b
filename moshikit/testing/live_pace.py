"""Where the live chat's extra step time comes from: the same model's step, back to back (as
``moshikit bench chat`` times it) and paced at one frame per 80 ms (as the live loop runs it,
idle between frames), in one process, alternating so drift in the machine's load hits both.

    python -m moshikit.testing.live_pace --model synthetic --frames 150 --rounds 2

Prints p50/p99 per mode. A paced step slower than a back-to-back one is the cost of idling
between frames (thread pools asleep, caches cold), not of the audio path. Judge it on a
machine with nothing else running: on a shared 2-core machine other processes' load swamps it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def measure(conv, frames: int, paced: bool, *, frame_seconds: float = 0.08, skip: int = 10) -> np.ndarray:
    """Step times (seconds) of ``frames`` frames of quiet noise, the first ``skip`` left out."""
    from ..conversation import FRAME

    pcm = (np.random.default_rng(0).standard_normal((frames, FRAME)) * 0.05).astype(np.float32)
    conv.reset()
    times = []
    due = time.perf_counter()
    for i in range(frames):
        times.append(conv.step(pcm[i]).seconds)
        if paced:
            due += frame_seconds
            time.sleep(max(0.0, due - time.perf_counter()))
    return np.asarray(times[skip:])


def main(argv: list[str] | None = None) -> None:
    from ..chat import load_chat, warm_up

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="synthetic")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    conv = load_chat(args.model, backend=args.backend)
    warm_up(conv)
    for r in range(args.rounds):
        for paced in (False, True):
            t = measure(conv, args.frames, paced) * 1000
            print(f"round {r + 1} {'paced 80 ms' if paced else 'back to back':>12}: p50 {np.percentile(t, 50):6.1f} ms"
                  f"  p99 {np.percentile(t, 99):6.1f} ms", flush=True)


if __name__ == "__main__":
    main()
