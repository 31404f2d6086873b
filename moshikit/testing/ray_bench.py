"""Local command against the Ray path on the same inputs, in one run (speed ratios only).

    python -m moshikit.testing.ray_bench [--command encode|transcribe] [--files 32] [--seconds 5]
                                         [--rounds 2] [--nodes 2]

Starts a loopback cluster of ``--nodes`` nodes with one CPU each (so both paths use the
same cores), writes ``--files`` clips cut from the bundled speech sample, and times
``moshikit encode`` (or transcribe; local) and the same with ``--ray-address`` as separate processes,
end to end (start-up and model loading included), alternating rounds. Synthetic
weights: speed and mechanics only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _clips(root: Path, files: int, seconds: float) -> float:
    import numpy as np
    import soundfile as sf

    from ..synthetic.core import speech_sample

    speech = speech_sample()
    n = int(seconds * 24000)
    total = 0.0
    for i in range(files):
        start = (i * 9973) % max(1, len(speech) - n)
        clip = speech[start : start + n]
        if len(clip) < n:
            clip = np.pad(clip, (0, n - len(clip)))
        (root / f"d{i % 4}").mkdir(exist_ok=True)
        sf.write(root / f"d{i % 4}" / f"clip{i:04d}.flac", clip, 24000)
        total += n / 24000
    return total


def _run(argv: list[str], env: dict) -> tuple[float, dict]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "moshikit", *argv, "--json"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return wall, json.loads(p.stdout)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--command", choices=["encode", "transcribe"], default="encode")
    args = ap.parse_args(argv)

    from .ray_cluster import LocalCluster
    from ..synthetic.core import ensure_synthetic_mimi

    env = dict(os.environ, NO_TORCH_COMPILE="1", NO_CUDA_GRAPH="1", HF_HUB_OFFLINE="1")
    weights = str(ensure_synthetic_mimi())
    if args.command == "transcribe":
        from ..synthetic.stt import ensure_synthetic_stt

        ensure_synthetic_stt()
        model_args = ["--model", "synthetic", "--backend", "torch", "--device", "cpu"]
    else:
        model_args = ["--mimi-weight", weights]
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as d:
        root = Path(d)
        (root / "in").mkdir()
        audio = _clips(root / "in", args.files, args.seconds)
        common = [*model_args, "--batch-size", str(args.batch_size), "--overwrite"]
        t = time.perf_counter()
        with LocalCluster(workers=args.nodes - 1, cpus=1, env=env) as cluster:
            up = time.perf_counter() - t
            rows = []
            for r in range(args.rounds):
                lw, ls = _run([args.command, str(root / "in"), "-o", str(root / "local"), *common], env)
                l1w, l1s = _run([args.command, str(root / "in"), "-o", str(root / "local1"), *common],
                                dict(env, OMP_NUM_THREADS="1"))
                rw, rs = _run([args.command, str(root / "in"), "-o", str(root / "ray"), *common,
                               "--ray-address", cluster.address, "--ray-manifest", str(root / f"m{r}.parquet")], env)
                rows.append({"round": r, "local_wall": lw, "local_xrt_loop": ls["x_real_time"],
                             "local1_wall": l1w, "local1_xrt_loop": l1s["x_real_time"], "ray_wall": rw,
                             "ray_xrt_job": rs["x_real_time"], "nodes": rs["nodes"]})
        print(json.dumps({"command": args.command, "files": args.files, "audio_seconds": audio,
                          "cluster_start_seconds": round(up, 2), "rounds": rows}, indent=2))
        for row in rows:
            print(f"round {row['round']}: local {audio / row['local_wall']:.2f}x real time end to end "
                  f"({row['local_xrt_loop']}x in its file loop); local 1 thread {audio / row['local1_wall']:.2f}x "
                  f"({row['local1_xrt_loop']}x); ray {audio / row['ray_wall']:.2f}x end to end "
                  f"({row['ray_xrt_job']}x from connect to last file); ray/local end to end "
                  f"{row['local_wall'] / row['ray_wall']:.2f}, ray/local-1-thread {row['local1_wall'] / row['ray_wall']:.2f}")


if __name__ == "__main__":
    main()
