"""Side-by-side codec speed in one process: every backend against moshi's MimiModel.

    python -m moshikit.testing.codec_speed [--seconds 10] [--repeats 3] [--weights FILE]

The reference row is moshi's ``MimiModel.encode``/``decode`` called directly on
the same clip, as moshi's README shows. Rows run interleaved, repeat by repeat,
so machine noise hits them alike; the ratio column is what to quote. With the
synthetic weights (the default) the numbers are valid for speed only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> None:
    from ..backends.torch_env import prepare as _prepare_torch

    _prepare_torch()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", default=None, help="Mimi file (default: the synthetic one)")
    ap.add_argument("--backends", default="torch,rustymimi,mlx")
    args = ap.parse_args(argv)

    import torch
    from moshi.models import loaders

    from ..backends import registry
    from ..codec import load_codec
    from ..synthetic.core import ensure_synthetic_mimi, speech_sample

    weights = args.weights or str(ensure_synthetic_mimi())
    n = int(args.seconds * 24000)
    speech = speech_sample()
    clip = np.resize(speech, n)[None].astype(np.float32)
    ref = loaders.get_mimi(weights, device="cpu", num_codebooks=8)
    x = torch.from_numpy(clip)[None]
    with torch.inference_mode():
        codes_t = ref.encode(x)
    rows = {"moshi MimiModel (reference)": (lambda: _ref(ref, x, torch), lambda: _ref_dec(ref, codes_t, torch))}
    for name in args.backends.split(","):
        if not registry.probe("codec", name)[0]:
            print(f"{name}: not available ({registry.probe('codec', name)[1]})")
            continue
        b = load_codec(name, mimi_weight=weights).backend
        codes = b.encode(clip)
        rows[f"moshikit {name}"] = (lambda b=b: b.encode(clip), lambda b=b, c=codes: b.decode(c))
    enc = {k: [] for k in rows}
    dec = {k: [] for k in rows}
    for fn in rows.values():  # warm-up
        fn[0](), fn[1]()
    for _ in range(args.repeats):
        for k, (e, d) in rows.items():
            enc[k] += _time(e, 1)
            dec[k] += _time(d, 1)
    ref_key = next(iter(rows))
    print(f"{args.seconds:.0f} s clip, {args.repeats} repeats, median; x real time = audio s / wall s; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'row':34} {'encode xRT':>10} {'vs ref':>7} {'decode xRT':>10} {'vs ref':>7}")
    re_, rd_ = statistics.median(enc[ref_key]), statistics.median(dec[ref_key])
    for k in rows:
        e, d = statistics.median(enc[k]), statistics.median(dec[k])
        print(f"{k:34} {args.seconds / e:10.2f} {re_ / e:7.2f} {args.seconds / d:10.2f} {rd_ / d:7.2f}")


def _ref(mimi, x, torch):
    with torch.inference_mode():
        return mimi.encode(x)


def _ref_dec(mimi, codes, torch):
    with torch.inference_mode():
        return mimi.decode(codes)


if __name__ == "__main__":
    main()
