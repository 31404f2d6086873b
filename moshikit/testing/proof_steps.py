"""The GPU proof's user-level steps: the commands GPU users run, on synthetic models, timed.

    python -m moshikit.testing.proof_steps STEP --device cuda --work DIR --json FILE [--small]

STEP is one of:

* ``files``: ``moshikit encode``, ``decode`` and ``transcribe`` as commands on a folder of
  audio files (each its own process, as a user runs them), every output checked;
* ``speak``: ``moshikit speak`` on a folder of texts at ``--batch 1`` and ``--batch 8``;
* ``translate``: ``moshikit translate`` (Hibiki) on a folder;
* ``serve-chat``: ``moshikit serve --batch 2`` and two concurrent sessions on ``/api/chat``
  at real-time pace (the STT and TTS routes are ``bench serve``'s);
* ``live``: chat's threaded live engine (``LocalEngine``) fed one 80 ms frame at a time,
  paced as a microphone delivers them.

Each writes ``{"rows": [...], "notes": [...]}`` (rows as ``moshikit bench --json`` writes them)
to FILE, and exits non-zero when a command failed or left an output missing. ``--small`` is the
CPU dry run's size: a few short files, a few frames. Every file it writes stays under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

RATE = 24000
FRAME = 1920
TEXTS = ("The quick brown fox jumps over the lazy dog near the river bank.",
         "Please tell me a story about the sea, the wind and a small boat.",
         "It is a small model that only exists for tests, and it speaks noise.",
         "Every morning the baker opens his shop before the sun rises.")


class StepFailed(Exception):
    pass


def _row(name: str, task: str, unit: str, samples: list[float], **params) -> dict:
    from ..bench.core import Row, Stats

    return asdict(Row("proof", name, task, unit, Stats.of(samples), params, samples=[round(s, 4) for s in samples]))


def moshikit(args: list[str], timeout: float = 600.0) -> dict:
    """One ``moshikit`` command with ``--json``; its summary, checked: every file done."""
    proc = subprocess.run([sys.executable, "-m", "moshikit", *args, "--json"], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise StepFailed(f"moshikit {args[0]} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    summary = json.loads(proc.stdout)
    if summary.get("failed") or not summary.get("done"):
        raise StepFailed(f"moshikit {args[0]}: {summary.get('done')} done, {summary.get('failed')} failed: "
                         f"{[f.get('error') for f in summary.get('files', []) if f.get('error')][:3]}")
    return summary


def write_audio(folder: Path, count: int, seconds: float) -> float:
    """``count`` files of ``seconds`` of speech-like audio (moshikit's synthetic sample, shifted per file)."""
    import soundfile as sf

    from ..synthetic.core import speech_sample

    folder.mkdir(parents=True, exist_ok=True)
    speech = speech_sample()
    for i in range(count):
        clip = np.resize(np.roll(speech, RATE * i), int(seconds * RATE)).astype(np.float32)
        sf.write(folder / f"clip{i:02d}.wav", clip, RATE)
    return count * seconds


def _count(folder: Path, suffix: str) -> int:
    return sum(1 for _ in folder.rglob(f"*{suffix}"))


def step_files(device: str, work: Path, small: bool) -> tuple[list[dict], list[str]]:
    count, seconds, batch = (2, 1.0, 2) if small else (16, 10.0, 16)
    dev = ["--device", device] + (["--backend", "torch"] if small else [])  # the dry run skips onnx's export
    audio = write_audio(work / "audio", count, seconds)
    rows = []
    task = f"{count} files x {seconds:g} s"
    for cmd, src, dst, suffix, extra in (
            ("encode", "audio", "tokens", ".mimi", ["--batch-size", str(min(batch, 8)), *dev]),
            ("decode", "tokens", "decoded", ".wav", dev),
            ("transcribe", "audio", "text", ".txt", ["--batch-size", str(batch), "--device", device])):
        summary = moshikit([cmd, str(work / src), "-o", str(work / dst), "--model", "synthetic", *extra])
        if _count(work / dst, suffix) != count:
            raise StepFailed(f"moshikit {cmd} wrote {_count(work / dst, suffix)} of {count} {suffix} files")
        rows.append(_row(f"moshikit {cmd} (a folder)", task, "x real time", [audio / summary["wall_seconds"]],
                         batch={"encode": min(batch, 8), "decode": 1}.get(cmd, batch), files=count))
    return rows, []


def step_speak(device: str, work: Path, small: bool) -> tuple[list[dict], list[str]]:
    texts = work / "texts"
    texts.mkdir(parents=True, exist_ok=True)
    big = 2 if small else 8
    for i in range(big):
        (texts / f"text{i}.txt").write_text("Hello there." if small else TEXTS[i % len(TEXTS)])
    rows = []
    for batch, n in ((1, 1 if small else 2), (big, big)):
        src = texts if n == big else work / "texts1"
        if n != big:
            src.mkdir(exist_ok=True)
            for i in range(n):
                (src / f"text{i}.txt").write_text((texts / f"text{i}.txt").read_text())
        dst = work / f"speech-b{batch}"
        summary = moshikit(["speak", str(src), "-o", str(dst), "--model", "synthetic", "--batch", str(batch),
                            "--device", device, "--seed", "1"])
        if _count(dst, ".wav") != n:
            raise StepFailed(f"moshikit speak --batch {batch} wrote {_count(dst, '.wav')} of {n} files")
        # Per row: its audio over the wall time of the batch it was spoken in (model load excluded).
        per_row = [f["audio_seconds"] / f["seconds"] for f in summary["files"] if f.get("seconds")]
        rows.append(_row("moshikit speak (a folder)", f"{n} texts, per row", "x real time", per_row, batch=batch))
    return rows, []


def step_translate(device: str, work: Path, small: bool) -> tuple[list[dict], list[str]]:
    count, seconds = (1, 1.0) if small else (2, 10.0)
    audio = write_audio(work / "french", count, seconds)
    summary = moshikit(["translate", str(work / "french"), "-o", str(work / "english"), "--model", "synthetic",
                        "--device", device, "--seed", "1"])
    if _count(work / "english", ".wav") != count:
        raise StepFailed(f"moshikit translate wrote {_count(work / 'english', '.wav')} of {count} files")
    return [_row("moshikit translate (a folder)", f"{count} files x {seconds:g} s", "x real time",
                 [audio / summary["wall_seconds"]], batch=1, files=count)], []


def start_server(args: list[str], timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    """``moshikit serve`` on a free loopback port; (process, the address it prints) once it listens
    (``http://...`` for a server of several routes, ``ws://.../api/chat`` for chat alone)."""
    proc = subprocess.Popen([sys.executable, "-m", "moshikit", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # the address, once the models are loaded
    if not line.startswith(("http", "ws")):
        err = proc.stderr.read() if proc.poll() is not None else ""
        stop(proc)
        raise StepFailed(f"the server did not start: {(err.strip().splitlines() or ['no output'])[-1]}")
    return proc, line.rstrip("/")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def chat_session(url: str, frames: int, out: dict) -> None:
    """One /api/chat session: ``frames`` frames sent at real-time pace; how long after the last
    frame the server's answer to it arrived (its catch-up), and the reply delays the client saw."""
    from ..remote import connect
    from ..synthetic.core import speech_sample

    pcm = np.resize(speech_sample(), frames * FRAME).astype(np.float32) * 0.3
    eng = connect(url, timeout=60.0)
    try:
        received = 0
        t0 = time.perf_counter()
        for i in range(frames):
            time.sleep(max(0.0, t0 + i * FRAME / RATE - time.perf_counter()))
            eng.send(pcm[i * FRAME:(i + 1) * FRAME])
            received += sum(a.size for a, _ in eng.receive())
        last = time.perf_counter()
        # Moshi answers every frame with one frame; a few of the last ones wait on its delay and the
        # Opus round trip (1-3 frames): the session keeps up when all but 4 are answered soon after.
        want = (frames - 4) * FRAME
        while received < want and time.perf_counter() - last < 30.0:
            eng.send(np.zeros(FRAME, np.float32))  # silence after the clip, as a microphone keeps sending
            time.sleep(FRAME / RATE)
            received += sum(a.size for a, _ in eng.receive())
        out["catch_up"] = time.perf_counter() - last if received >= want else None
        out["received"] = received
        out["delay"] = eng.reply_delay.percentiles()
    finally:
        eng.close()


def step_serve_chat(device: str, work: Path, small: bool) -> tuple[list[dict], list[str]]:
    import threading

    frames = 12 if small else 125  # 10 s on a GPU
    args = ["--chat", "synthetic", "--batch", "2", "--device", device, "--backend", "torch"]
    proc, url = start_server(args)
    try:
        if not url.endswith("/api/chat"):
            url = url.replace("http://", "ws://") + "/api/chat"
        chat_session(url, 6, {})  # warm-up: the first session's first steps pay allocations
        results: list[dict] = [{}, {}]
        threads = [threading.Thread(target=chat_session, args=(url, frames, r)) for r in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=frames * 0.08 + 120)
    finally:
        stop(proc)
    if any("received" not in r for r in results):
        raise StepFailed("a chat session did not finish")
    late = [r for r in results if r["catch_up"] is None]
    if late:
        raise StepFailed(f"{len(late)} of 2 chat sessions never caught up: received {[r['received'] for r in results]}"
                         f" samples of {frames * FRAME} sent")
    rows = [_row("moshikit serve chat (/api/chat)", "2 sessions: catch-up after the last frame", "ms",
                 [1000 * r["catch_up"] for r in results], batch=2, frames=frames)]
    delays = [r["delay"][0] * 1000 for r in results if r["delay"]]
    if delays:
        rows.append(_row("moshikit serve chat (/api/chat)", "2 sessions: reply delay p50", "ms", delays, batch=2))
    return rows, []


def step_live(device: str, work: Path, small: bool) -> tuple[list[dict], list[str]]:
    from ..chat import load_chat, warm_up
    from ..live.engine import LocalEngine

    frames = 8 if small else 150  # 12 s on a GPU
    conv = load_chat("synthetic", device=device)
    warm_up(conv)
    pcm = (np.random.default_rng(0).standard_normal(frames * FRAME) * 0.05).astype(np.float32)
    times: list[float] = []
    step = conv.step

    def timed(frame):  # every step's time (the engine's own window keeps the last 10 s)
        out = step(frame)
        times.append(out.seconds)
        return out

    conv.step = timed
    steps = []
    with LocalEngine(conv) as eng:
        t0 = time.perf_counter()
        for i in range(frames):  # one frame per 80 ms, as a microphone's callback delivers them
            time.sleep(max(0.0, t0 + i * FRAME / RATE - time.perf_counter()))
            eng.send(pcm[i * FRAME:(i + 1) * FRAME])
            steps += eng.receive()
        end = time.perf_counter() + 10.0
        while eng.steps + eng.dropped_frames < frames and time.perf_counter() < end:
            time.sleep(0.01)
        steps += eng.receive()
        dropped, taken = eng.dropped_frames, eng.steps
    if taken + dropped < frames:
        raise StepFailed(f"the live engine stepped {taken} of {frames} frames ({dropped} dropped)")
    rows = [_row("moshikit chat live engine (paced)", "step", "ms", [t * 1000 for t in times], batch=1,
                 frames=frames),
            _row("moshikit chat live engine (paced)", "dropped frames", "frames", [float(dropped)], batch=1,
                 frames=frames)]
    return rows, []


STEPS = {"files": step_files, "speak": step_speak, "translate": step_translate, "serve-chat": step_serve_chat,
         "live": step_live}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moshikit.testing.proof_steps", description=__doc__.split("\n")[0])
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", required=True, help="folder for the inputs and outputs")
    p.add_argument("--json", required=True, help="where the rows go")
    p.add_argument("--small", action="store_true", help="the CPU dry run's sizes")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows, notes = STEPS[args.step](args.device, work, args.small)
    except StepFailed as exc:
        print(f"proof step {args.step}: {exc}", file=sys.stderr)
        return 1
    Path(args.json).write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))
    for r in rows:
        print(f"{r['name']}: {r['task']} (batch {r['params'].get('batch')}): p50 {r['stats']['p50']:.2f} {r['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
