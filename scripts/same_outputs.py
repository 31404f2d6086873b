"""Run encode, transcribe and speak on synthetic models with this checkout and with an older commit,
and compare what they write, file by file (and the synthetic checkpoints each built).

    python scripts/same_outputs.py                 # against aa8b888
    python scripts/same_outputs.py --old REV --keep /tmp/same

Each side runs with its own HOME, moshikit cache, Hugging Face cache and working directory, built
afresh at the same path (then moved aside), so paths recorded in outputs agree; nothing of the real
ones is read or written and the hub is offline. Same inputs: a seeded 4 s test signal and one sentence, with fixed seeds. The older commit is unpacked
with ``git archive`` and put first on ``PYTHONPATH``; both sides use this interpreter and its
packages, on this machine, with the same thread count, so the same kernels run in the same order
and a byte that differs is the code's doing. Exit status 1 when an output differs (the checkpoints'
differences are listed and named, not judged). Where two files differ, a line says how: tensors or
codes equal but for a header, the JSON keys that differ, the largest sample difference.

Known run-to-run differences (the same commit twice): safetensors' writer orders its metadata at
random (Mimi's file; the sha256 that encode records of it follows), and the Hugging Face tokenizers
Unigram trainer of the synthetic Pocket TTS tokenizer orders tied pieces at random (and the audio
spoken with it by a sample here and there)."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Hello there, this is a short test of the speech synthesis."

#: (name, arguments): each writes under out/ in the working directory.
COMMANDS = (
    ("encode mimi", ["encode", "-m", "synthetic", "in.wav", "-o", "out/encode/in.mimi"]),
    ("encode npy", ["encode", "-m", "synthetic", "-f", "npy", "in.wav", "-o", "out/encode/in.npy"]),
    ("transcribe", ["transcribe", "-m", "synthetic", "-f", "all", "in.wav", "-o", "out/transcribe"]),
    ("speak torch", ["speak", "-b", "torch", "-m", "synthetic", "--seed", "0", TEXT, "-o", "out/speak/torch.wav",
                     "--words", "out/speak/torch.words.json"]),
    ("speak pocket", ["speak", "-b", "pocket", "-m", "synthetic", "--seed", "0", TEXT, "-o", "out/speak/pocket.wav"]),
)


def write_input(path: Path, seconds: float = 4.0, rate: int = 24000) -> None:
    """A seeded test signal: a gliding tone with a little noise, 16-bit mono."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (180 + 60 * t) * t) + 0.02 * rng.standard_normal(t.size)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def unpack(rev: str, dest: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                             capture_output=True).stdout
    tmp = dest.with_suffix(".tar")
    tmp.write_bytes(archive)
    with tarfile.open(tmp) as tar:
        tar.extractall(dest, filter="data")
    tmp.unlink()


def run_side(name: str, tree: Path, base: Path, timeout: float) -> dict[str, tuple[int, float, str]]:
    """Run every command from ``tree`` in a fresh home at ``base/run``, then move it to ``base/name``;
    {command: (status, seconds, stderr tail)}."""
    side = base / "run"
    work = side / "work"
    work.mkdir(parents=True)
    write_input(work / "in.wav")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSHIKIT_", "HF_", "XDG_"))}
    env.update(HOME=str(side / "home"), MOSHIKIT_CACHE=str(side / "cache" / "moshikit"),
               XDG_CACHE_HOME=str(side / "cache"), HF_HOME=str(side / "hf"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(tree), NO_COLOR="1", COLUMNS="100", PYTHONHASHSEED="0")
    results = {}
    for label, args in COMMANDS:
        started = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "moshikit", *args], cwd=work, env=env, capture_output=True,
                               text=True, timeout=timeout)
            status, tail = p.returncode, p.stderr.strip().splitlines()[-1:] or [""]
        except subprocess.TimeoutExpired:
            status, tail = -1, [f"timed out after {timeout:g} s"]
        results[label] = (status, time.perf_counter() - started, tail[0])
        print(f"  {name}: {label}: exit {status} in {results[label][1]:.0f} s", flush=True)
    side.rename(base / name)
    return results


def files(top: Path) -> dict[str, Path]:
    return {p.relative_to(top).as_posix(): p for p in sorted(top.rglob("*")) if p.is_file()} if top.exists() else {}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def json_paths(x, y, path: str = "") -> list[str]:
    """Where two JSON values differ (key paths)."""
    if isinstance(x, dict) and isinstance(y, dict):
        return [p for k in sorted(x.keys() | y.keys())
                for p in (json_paths(x[k], y[k], f"{path}.{k}") if k in x and k in y else [f"{path}.{k}"])]
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [p for i, (u, v) in enumerate(zip(x, y)) for p in json_paths(u, v, f"{path}[{i}]")]
    return [] if x == y else [path or "."]


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    import json
    import struct

    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def how_far(a: Path, b: Path) -> str:
    """A word on how two differing files differ, where the format allows."""
    try:
        if a.suffix in (".json", ".safetensors", ".mimi"):
            if a.suffix == ".json":
                import json

                paths = json_paths(json.loads(a.read_text()), json.loads(b.read_text()))
                return f"{len(paths)} value(s) differ: {', '.join(paths[:6])}{' ...' if len(paths) > 6 else ''}"
            if a.suffix == ".safetensors":
                (ha, da), (hb, db) = safetensors_parts(a), safetensors_parts(b)
                if ha == hb and da == db:
                    return "same header (read as JSON) and tensors: only the header's key order differs"
                return "tensors differ" if da != db else "header differs"
            from moshikit.tokens import read_tokens

            same = np.array_equal(read_tokens(a).codes, read_tokens(b).codes)
            return "same codes, header differs" if same else "codes differ"
        if a.suffix == ".npy":
            x, y = np.load(a), np.load(b)
        elif a.suffix == ".wav":
            import soundfile

            x, y = soundfile.read(a)[0], soundfile.read(b)[0]
        else:
            return f"{a.stat().st_size} vs {b.stat().st_size} bytes"
    except Exception as exc:  # a file one side could not read: say so, do not stop the report
        return f"unreadable ({exc})"
    if x.shape != y.shape:
        return f"shape {x.shape} vs {y.shape}"
    return f"max |difference| {np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))):.3g}"


def compare(what: str, old_top: Path, new_top: Path) -> list[str]:
    old, new = files(old_top), files(new_top)
    differing = []
    print(f"\n{what}:")
    for rel in sorted(old.keys() | new.keys()):
        if rel not in new or rel not in old:
            print(f"  only in {'old' if rel in old else 'new'}: {rel}")
            differing.append(rel)
        elif digest(old[rel]) == digest(new[rel]):
            print(f"  same     {rel} ({digest(new[rel])})")
        else:
            print(f"  DIFFERS  {rel}: {how_far(old[rel], new[rel])}")
            differing.append(rel)
    return differing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default="aa8b888", help="the commit to compare with (default: aa8b888)")
    ap.add_argument("--keep", help="work in this (new) directory and keep it, instead of a temporary one")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per command (default 900)")
    ap.add_argument("--compare-only", metavar="DIR", help="compare the sides an earlier --keep DIR left, run nothing")
    args = ap.parse_args()
    if args.compare_only:
        done = Path(args.compare_only)
        outputs = compare("outputs", done / "old" / "work" / "out", done / "new" / "work" / "out")
        compare("synthetic checkpoints (moshikit cache)", done / "old" / "cache" / "moshikit",
                done / "new" / "cache" / "moshikit")
        return 1 if outputs else 0
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="moshikit-same-"))
    if args.keep and base.exists() and any(base.iterdir()):
        ap.error(f"--keep {base}: give a new or empty directory")
    base.mkdir(parents=True, exist_ok=True)
    try:
        old_tree = base / "old-tree"
        unpack(args.old, old_tree)
        print(f"old: {args.old} in {old_tree}; new: {ROOT}")
        ran = {"old": run_side("old", old_tree, base, args.timeout), "new": run_side("new", ROOT, base, args.timeout)}
        for side, results in ran.items():
            for label, (status, _, tail) in results.items():
                if status != 0:
                    print(f"  {side}: {label} failed: {tail}")
        outputs = compare("outputs", base / "old" / "work" / "out", base / "new" / "work" / "out")
        compare("synthetic checkpoints (moshikit cache)", base / "old" / "cache" / "moshikit",
                base / "new" / "cache" / "moshikit")
        failed = any(s != 0 for r in ran.values() for s, _, _ in r.values())
        return 1 if outputs or failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
