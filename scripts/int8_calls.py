"""What the int8 layers' small torch calls cost: the CPU engine with their arithmetic compiled once
(TorchScript, ``torch_int8.scripted``: the default) and run from Python call by call
(``torch_int8.EAGER``), in turns in one process, so a VM's drifting speed falls on both alike.

Kyutai TTS 1.6B's ``speak DIR --batch`` path (ms a step: the temporal step, 32 codebooks of the
depth transformer and the decode) and stt-1b's LM step, random weights in the published
architectures (``moshikit.synthetic``): speed only. Run it on an idle machine:

    .venv/bin/python scripts/int8_calls.py --tts-batches 1,4 --stt-batches 1 --rounds 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from moshikit.backends import torch_int8
from moshikit.stt import load_stt
from moshikit.synthetic.stt import ensure_full_stt
from moshikit.synthetic.tts import ensure_full_tts
from moshikit.tts import Settings, chunks, load_tts
from tts_profile import TEXT, machine_line  # this folder is on the path when a script of it runs


def in_turns(work, rounds: int) -> dict[str, list[float]]:
    """``work()`` -> ms, run compiled then eager, ``rounds`` times each."""
    out: dict[str, list[float]] = {"compiled": [], "eager": []}
    for _ in range(rounds):
        for mode in out:
            torch_int8.EAGER = mode == "eager"
            out[mode].append(work())
    torch_int8.EAGER = False
    return out


def report(what: str, times: dict[str, list[float]]) -> None:
    c, e = statistics.median(times["compiled"]), statistics.median(times["eager"])
    runs = "; ".join(f"{k} " + " ".join(f"{t:.0f}" for t in v) for k, v in times.items())
    print(f"{what:<34} compiled {c:7.1f} ms   eager {e:7.1f} ms   {e / c:.2f}x   ({runs})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tts-batches", default="1,4")
    ap.add_argument("--tts-steps", type=int, default=40)
    ap.add_argument("--stt-batches", default="1")
    ap.add_argument("--stt-steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    if args.tts_batches:
        model = load_tts(str(ensure_full_tts()), backend="cpu", dtype="int8")
        voice = model.resolve_voice(None)
        settings = Settings(seed=0, max_steps=args.tts_steps)
        for batch in (int(b) for b in args.tts_batches.split(",")):
            def speak(batch=batch) -> float:
                start = time.perf_counter()
                speech = model.generate_batch([chunks([TEXT]) for _ in range(batch)], [[voice]] * batch, settings)
                return (time.perf_counter() - start) / speech[0].steps * 1e3

            speak()  # warm-up (and the decoder graph's export on first use)
            report(f"Kyutai TTS, batch {batch}, a step", in_turns(speak, args.rounds))
        del model
    if args.stt_batches:
        lm = load_stt(str(ensure_full_stt("stt")), backend="cpu", dtype="int8").lm
        for batch in (int(b) for b in args.stt_batches.split(",")):
            codes = np.random.default_rng(0).integers(0, 2048, (batch, lm.info.input_codebooks))

            def steps(batch=batch, codes=codes) -> float:
                lm.reset(batch)
                for _ in range(3):
                    lm.step(codes)
                start = time.perf_counter()
                for _ in range(args.stt_steps):
                    lm.step(codes)
                return (time.perf_counter() - start) / args.stt_steps * 1e3

            report(f"stt-1b LM step, batch {batch}", in_turns(steps, args.rounds))


if __name__ == "__main__":
    main()
