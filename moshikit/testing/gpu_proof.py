"""Prove a GPU machine in one call: the ``cuda`` tests, the benchmarks, and the commands GPU
users run, one JSON.

    python -m moshikit.testing.gpu_proof --device cuda [--out DIR] [--budget SECONDS]

runs, each as its own process with its own time limit (exactly what a user runs), on synthetic
models:

1. ``pytest -m cuda tests/test_cuda.py`` (long files with real CUDA graphs, the q8 step, bf16
   LM + fp32 Mimi, serve --batch, transcribe batching, bench rows);
2. ``moshikit bench codec --synthetic --device cuda`` (batch 1 and 8, streaming frames);
3. ``moshikit bench chat --synthetic --device cuda`` (the whole 80 ms loop, tiny LM);
4. ``moshikit bench stt --synthetic --device cuda`` (64 streams at batch 64);
5. ``moshikit encode``, ``decode`` and ``transcribe`` as commands on a folder of 16 files;
6. ``moshikit speak`` on a folder of texts at ``--batch 1`` and ``--batch 8`` (Kyutai TTS);
7. ``moshikit translate`` on a folder (Hibiki);
8. ``moshikit bench serve --synthetic``: a server's ``/api/asr-streaming`` (two streams at
   real-time pace) and ``/v1/audio/speech`` (two requests at once);
9. ``moshikit serve --chat synthetic --batch 2`` with two concurrent ``/api/chat`` sessions at
   real-time pace;
10. chat's threaded live engine fed one 80 ms frame at a time, paced like a microphone;
11. ``moshikit bench lm --synthetic --lm-size full --device cuda --batch-sizes 1,8`` (the
    Moshi 7B architecture; its synthetic checkpoint is written once, ~15 GB). Last: it needs
    the most time, and every step before it is capped so it keeps at least its floor.

Steps 5-7, 9 and 10 are ``moshikit.testing.proof_steps``. The whole run fits ``--budget``
(default 470 s on CUDA: under 8 minutes with the start, inside the 10 a lent machine gives one
command); a step that runs out is recorded as timed out and the rest still run. The output
folder holds three files: ``gpu-proof.json`` (the environment, every step's status, time,
output tail and rows), ``gpu-proof.md`` (the summary printed at the end) and ``tests.xml``;
everything else is written in a temporary folder and removed. The exit status is 0 only when
every step passed and, on CUDA, every threshold (``thresholds()``, each with its reason) was
met. Optional parts that are not installed (bitsandbytes' q8, livekit's echo cancellation)
are skipped with a note, never an import error; ``scripts/gpu-wheels.py`` fetches everything
else a lent machine lacks.

``--device cpu`` is the dry run: tiny sizes, a few frames, and the ``cuda`` tests only
collected (``--run-tests`` runs their code on the CPU, minutes on a small machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BUDGET_S = 470  # on CUDA; the CPU dry run's default is DRY_BUDGET_S
DRY_BUDGET_S = 2400  # tiny sizes, but a busy 2-core machine has taken 1,400 s
TEST_FILES = ("tests/test_cuda.py",)
#: Optional parts: the proof runs without them (scripts/gpu-wheels.py leaves them out to fit
#: what a lent machine carries) and says what it skipped.
OPTIONAL = (("bitsandbytes", "q8 LM steps (int8 through bitsandbytes, 61 MB)"),
            ("livekit", "chat's echo cancellation (livekit's WebRTC AEC)"))


@dataclass
class Threshold:
    """A bar a CUDA row must clear for the proof to pass (judged on CUDA only)."""
    step: str  # the step's name
    name: str  # the row's subject
    task: str  # the row's task (prefix)
    batch: int
    op: str  # "<" for latencies, ">" for speeds
    value: float
    reason: str
    key: str = "batch"  # the row's parameter that must equal ``batch`` (bench serve counts streams)
    stat: str = "p50"  # the statistic judged: p50, p99, min or max over the row's samples
    seen: float | None = None
    status: str = "not judged"  # passed | failed | missing | not judged


def thresholds() -> list[Threshold]:
    return [
        # An H100 reads the 7B architecture's ~15 GB of bf16 weights in ~5-6 ms (3.35 TB/s):
        # a batch-1 step is bound by that read; 30 ms leaves 5x for the depth transformer's
        # 8 sequential steps and the launches between them, and is well under one 80 ms frame.
        Threshold("bench lm", "moshikit torch", "step", 1, "<", 30.0,
                  "7B bf16 step at batch 1: weight reads ~6 ms on an H100, 5x margin"),
        # One frame is 80 ms: 8 live conversations need one step of all 8 within a frame.
        Threshold("bench lm", "moshikit torch", "step", 8, "<", 80.0,
                  "7B bf16 step at batch 8 within one 80 ms frame (8 streams in real time)"),
        # Mimi costs ~5.3 GFLOP per second of audio; an H100's fp32 rate (~60 TFLOP/s) would
        # allow ~10,000x real time: 1,000x asks 10% of it at batch 8 (convolutions run below peak).
        Threshold("bench codec", "moshikit torch", "encode", 8, ">", 1000.0,
                  "Mimi batch encode: 10% of an H100's fp32 rate"),
        # Faster than real time per stream: 64 streams of N s transcribed in under N s, i.e.
        # the batch's speed (audio seconds / wall seconds, all streams) above 64x.
        Threshold("bench stt", "moshikit torch", "transcribe", 64, ">", 64.0,
                  "STT at batch 64 faster than real time per stream"),
        # 160 s of audio per command, its model's load and graph capture counted: Mimi encodes and
        # decodes above 1,000x once loaded (the bar above), so 20x leaves ~7 s for loading.
        Threshold("files", "moshikit encode", "16 files", 8, ">", 20.0,
                  "encode, a folder of 16 x 10 s: 20x real time with the load"),
        Threshold("files", "moshikit decode", "16 files", 1, ">", 20.0,
                  "decode, the same folder: 20x real time with the load"),
        # 16 files as 16 streams of one batch: each faster than real time, the load counted.
        Threshold("files", "moshikit transcribe", "16 files", 16, ">", 16.0,
                  "transcribe, 16 files at batch 16: each stream faster than real time"),
        # A row of a batch plays as it is made only if it is made faster than real time: each
        # text's audio over the time of the batch it was spoken in, the slowest row judged.
        Threshold("speak", "moshikit speak", "2 texts", 1, ">", 1.0,
                  "speak at batch 1 faster than real time", stat="min"),
        Threshold("speak", "moshikit speak", "8 texts", 8, ">", 1.0,
                  "speak at batch 8 faster than real time per row", stat="min"),
        # Hibiki speaks while it listens: live translation needs it faster than real time.
        Threshold("translate", "moshikit translate", "2 files", 1, ">", 1.0,
                  "translate (Hibiki) faster than real time, the load counted"),
        # bench serve's LAG_HELD: a stream is held in real time when its marker comes back within
        # 1 s of the audio it waits for; both streams must be.
        Threshold("serve", "moshikit serve stt, real-time pace", "2 streams: marker lag", 2, "<", 1000.0,
                  "serve STT: two paced streams both real time (marker lag)", key="streams", stat="max"),
        Threshold("serve", "moshikit serve tts", "2 requests x", 2, ">", 1.0,
                  "serve TTS: two requests at once both faster than real time", key="streams", stat="min"),
        # The same 1 s for chat: each session's last frame answered within a second of it.
        Threshold("serve-chat", "moshikit serve chat", "2 sessions: catch-up", 2, "<", 1000.0,
                  "serve chat: two sessions both real time (caught up 1 s after the last frame)", stat="max"),
        # One frame is 80 ms: a step slower than that makes the live engine drop microphone frames.
        Threshold("live", "moshikit chat live engine", "step", 1, "<", 80.0,
                  "chat live engine, paced: step p99 under one 80 ms frame", stat="p99"),
        Threshold("live", "moshikit chat live engine", "dropped frames", 1, "<", 1.0,
                  "chat live engine, paced: no frame dropped", stat="max"),
    ]


def judge(limits: list[Threshold], steps: list["Step"]) -> None:
    rows = {s.name: s.rows for s in steps} | {s.key: s.rows for s in steps}
    for t in limits:
        if t.step not in rows:
            continue
        row = next((r for r in rows[t.step] if r["name"].startswith(t.name) and r["task"].startswith(t.task)
                    and r["params"].get(t.key) == t.batch), None)
        if row is None:
            t.status = "missing"
            continue
        t.seen = round(float(row["stats"][t.stat]), 2)
        t.status = "passed" if (t.seen < t.value if t.op == "<" else t.seen > t.value) else "failed"


def missing_optional() -> list[str]:
    import importlib.util

    return [f"{what}: skipped, {mod} is not installed (optional)" for mod, what in OPTIONAL
            if importlib.util.find_spec(mod) is None]


@dataclass
class Step:
    name: str
    argv: list[str]
    status: str = "not run"  # passed | failed | timed out | skipped
    seconds: float = 0.0
    rc: int | None = None
    tail: str = ""
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tests: dict | None = None
    key: str = ""  # what --only names it by (default: the name's last word)
    cap: float | None = None  # the most seconds it may take (on CUDA)
    floor: float = 0.0  # the seconds kept for it from the budget while the steps before it run

    def __post_init__(self) -> None:
        self.key = self.key or self.name.split()[-1].strip("()")


def source_root() -> Path | None:
    """The checkout holding tests/ (the proof runs from a source tree), or None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / TEST_FILES[0]).is_file() else None


def plan_steps(device: str, out: Path, run_tests: bool | None = None, work: Path | None = None) -> list[Step]:
    """The steps, in order; ``work``: where their JSONs and files go (not ``out``: it keeps three files)."""
    gpu = device.startswith("cuda")
    run_tests = gpu if run_tests is None else run_tests
    work = out / "work" if work is None else work
    py = [sys.executable]
    mk = py + ["-m", "moshikit"]
    root = source_root()
    steps: list[Step] = []
    if root is not None:
        argv = py + ["-m", "pytest", *[str(root / f) for f in TEST_FILES], "-m", "cuda", "-q",
                     "-p", "no:randomly", "-p", "no:cacheprovider", f"--junitxml={out / 'tests.xml'}"]
        if not run_tests:
            argv += ["--collect-only"]
        steps.append(Step("tests (cuda)" if run_tests else "tests (collected only)", argv, key="tests", cap=180))
    else:
        steps.append(Step("tests", [], status="skipped", notes=["no tests/ beside the package: run from a checkout"]))
    if gpu:
        codec = ["--seconds", "10", "--batch-sizes", "1,8", "--repeats", "3", "--stream-frames", "50"]
        chat = ["--frames", "50"]
        stt = ["--batch-sizes", "64", "--streams", "64", "--seconds", "10", "--repeats", "2"]
        serve = ["--streams", "2", "--seconds", "5", "--words", "12", "--stt-batch", "2", "--tts-batch", "2"]
        lm = ["--lm-size", "full", "--batch-sizes", "1,8", "--steps", "50"]
    else:  # the dry run: the same commands, small enough for a test
        codec = ["--backend", "torch", "--no-reference", "--seconds", "1", "--batch-sizes", "1", "--repeats", "1",
                 "--stream-frames", "3"]
        chat = ["--frames", "3", "--codec-backend", "torch"]
        stt = ["--no-reference", "--batch-sizes", "1", "--streams", "1", "--seconds", "1", "--repeats", "1"]
        serve = ["--streams", "2", "--seconds", "1", "--words", "3", "--stt-batch", "2", "--tts-batch", "2"]
        lm = ["--lm-size", "tiny", "--no-reference", "--batch-sizes", "1,2", "--steps", "3"]

    def bench(name: str, extra: list[str], cap: float, floor: float = 10.0) -> Step:
        return Step(f"bench {name}", mk + ["bench", name, "--synthetic", "--device", device, *extra,
                                           "--json", str(work / f"bench-{name}.json")], cap=cap, floor=floor)

    def proof(key: str, name: str, cap: float) -> Step:
        argv = py + ["-m", "moshikit.testing.proof_steps", key, "--device", device, "--work", str(work / key),
                     "--json", str(work / f"{key}.json")] + ([] if gpu else ["--small"])
        return Step(name, argv, key=key, cap=cap, floor=10.0)

    # Caps: the step's expected time on an H100 (unmeasured: no GPU has run it yet) with room for
    # the first use of a synthetic checkpoint, which is built then (seconds on 16 cores).
    steps += [bench("codec", codec, 60), bench("chat", chat, 45), bench("stt", stt, 60),
              proof("files", "encode, decode, transcribe (a folder)", 75),
              proof("speak", "speak (batch 1 and 8)", 75),
              proof("translate", "translate (Hibiki)", 60),
              bench("serve", serve + ["--no-reference"], 75),
              proof("serve-chat", "serve chat (2 sessions)", 60),
              proof("live", "chat live engine (paced)", 45),
              bench("lm", lm, 600, floor=150)]  # the 15 GB checkpoint's writing and the 7B steps
    if not gpu:
        for step in steps:  # a CPU's times say nothing: only the budget bounds the dry run
            step.cap, step.floor = None, 0.0
    return steps


def run_step(step: Step, timeout: float, env: dict) -> None:
    if step.status == "skipped":
        return
    if timeout < 5:
        step.status, step.notes = "timed out", step.notes + ["no time left in the budget"]
        return
    t = time.perf_counter()
    try:
        proc = subprocess.run(step.argv, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=source_root() or None)
        step.rc, step.status = proc.returncode, "passed" if proc.returncode == 0 else "failed"
        step.tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        step.status = "timed out"
        text = exc.stdout or b""
        step.tail = (text.decode(errors="replace") if isinstance(text, bytes) else text)[-3000:]
    step.seconds = round(time.perf_counter() - t, 1)


def read_results(step: Step, out: Path, work: Path) -> None:
    json_arg = next((a for a in step.argv if a.endswith(".json") and a.startswith(str(work))), None)
    if json_arg and Path(json_arg).is_file():
        data = json.loads(Path(json_arg).read_text())
        step.rows = data.get("rows", [])
        step.notes += data.get("notes", [])
    xml = out / "tests.xml"
    if step.name.startswith("tests") and xml.is_file():
        import xml.etree.ElementTree as ET

        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        if suite is not None:
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            collected = re.search(r"(\d+)(?:/\d+)? tests? collected", step.tail)
            if "collect" in step.name and collected:  # the XML of --collect-only counts no test
                counts["tests"] = int(collected.group(1))
            step.tests = counts
            if step.status == "passed" and "collect" not in step.name and counts["tests"] == counts["skipped"]:
                step.status, step.notes = "failed", step.notes + ["every cuda test was skipped: no GPU seen"]


def headline(row: dict) -> str:
    s = row["stats"]
    unit = row["unit"]
    if unit == "ms":
        return f"p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms"
    if unit == "streams":
        return f"{s['p50']:.0f} streams"
    if unit != "x real time":
        return f"p50 {s['p50']:g} {unit}, max {s['max']:g}"
    return f"{s['p50']:,.1f}x real time"


def summary(report: dict) -> str:
    lines = [f"# GPU proof: {report['device']} ({'passed' if report['ok'] else 'FAILED'})", "",
             f"{report['env'].get('cpu')}; GPUs: {', '.join(g['name'] for g in report['env'].get('gpus', [])) or 'none'}; "
             f"torch {report['env'].get('torch')}, moshi {report['env'].get('moshi')}; "
             f"{report['seconds']:.0f} s in all", "",
             "| step | status | seconds | result |", "| --- | --- | --- | --- |"]
    for s in report["steps"]:
        if s["tests"]:
            t = s["tests"]
            result = (f"{t['tests']} tests collected" if "collect" in s["name"] else
                      f"{t['tests']} tests, {t['failures'] + t['errors']} failed, {t['skipped']} skipped")
        else:
            result = f"{len(s['rows'])} rows"
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {result} |")
    lines += ["", "| threshold | bar | seen | status |", "| --- | --- | --- | --- |"]
    for t in report.get("thresholds", []):
        seen = "" if t["seen"] is None else f"{t['seen']:g}"
        lines.append(f"| {t['reason']} | {t.get('stat', 'p50')} {t['op']} {t['value']:g} | {seen} | {t['status']} |")
    lines += [f"- note: {n}" for n in report.get("notes", [])]
    for s in report["steps"]:
        if s["rows"]:
            lines += ["", f"## {s['name']}", ""]
            for r in s["rows"]:
                batch = r["params"].get("batch")
                lines.append(f"- {r['name']}: {r['task']}{f' (batch {batch})' if batch else ''}: {headline(r)}")
        for note in s["notes"]:
            lines.append(f"- note ({s['name']}): {note}")
        if s["status"] in ("failed", "timed out") and s["tail"]:
            lines += ["", f"{s['name']} ({s['status']}), last output:", "", "```", s["tail"][-1500:], "```"]
    return "\n".join(lines) + "\n"


STEP_NAMES = ("tests", "codec", "chat", "stt", "files", "speak", "translate", "serve", "serve-chat", "live", "lm")


def time_for(step: Step, later: list[Step], left: float) -> float:
    """Seconds ``step`` may take: its cap, less what the steps after it keep (their floors), yet
    at least its own floor while the budget has it."""
    keep = sum(s.floor for s in later if s.status != "skipped")
    return min(step.cap if step.cap is not None else left, max(left - keep, min(step.floor, left)))


def run(device: str, out: Path, *, budget: float | None = None, run_tests: bool | None = None,
        only: tuple[str, ...] = STEP_NAMES) -> dict:
    from .. import bench

    gpu = device.startswith("cuda")
    budget = (BUDGET_S if gpu else DRY_BUDGET_S) if budget is None else budget
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = dict(os.environ)
    if not gpu and run_tests:
        env["MOSHIKIT_TEST_CUDA_DEVICE"] = device  # the cuda tests' code, on this device
    with tempfile.TemporaryDirectory(prefix="gpu-proof-") as tmp:  # out keeps its three files
        work = Path(tmp)
        steps = [s for s in plan_steps(device, out, run_tests, work) if s.key in only]
        for i, step in enumerate(steps):
            run_step(step, time_for(step, steps[i + 1:], budget - (time.perf_counter() - started)), env)
            read_results(step, out, work)
    limits = thresholds()
    if gpu:  # the dry run's tiny models say nothing about a GPU's speed
        judge(limits, steps)
    ok = all(s.status in ("passed", "skipped") for s in steps) and not any(
        t.status in ("failed", "missing") for t in limits)
    report = {"schema": "moshikit-gpu-proof/1", "device": device, "env": bench.environment(),
              "seconds": round(time.perf_counter() - started, 1), "ok": ok, "notes": missing_optional(),
              "thresholds": [asdict(t) for t in limits], "steps": [asdict(s) for s in steps]}
    (out / "gpu-proof.json").write_text(json.dumps(report, indent=2))
    (out / "gpu-proof.md").write_text(summary(report))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moshikit.testing.gpu_proof", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (or cuda:N); cpu for the dry run")
    p.add_argument("--out", default="gpu-proof", help="folder for gpu-proof.json, gpu-proof.md and tests.xml")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for everything (default {BUDGET_S} on CUDA, {DRY_BUDGET_S} for the dry run)")
    p.add_argument("--run-tests", action="store_true", help="with --device cpu: run the cuda tests' code on the CPU")
    p.add_argument("--only", default=",".join(STEP_NAMES),
                   help="comma-separated steps to run, of: %(default)s")
    args = p.parse_args(argv)
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    unknown = [x for x in only if x not in STEP_NAMES]
    if unknown:
        p.error(f"unknown step {unknown[0]!r} (steps: {', '.join(STEP_NAMES)})")
    report = run(args.device, Path(args.out), budget=args.budget, run_tests=args.run_tests or None, only=only)
    sys.stdout.write((Path(args.out) / "gpu-proof.md").read_text())
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
