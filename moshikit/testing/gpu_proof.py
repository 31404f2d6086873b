"""Prove a GPU machine in one call: the ``cuda`` tests, then the benchmarks, one JSON.

    python -m moshikit.testing.gpu_proof --device cuda [--out DIR] [--budget SECONDS]

runs, each as its own process (exactly what a user runs):

1. ``pytest -m cuda tests/test_cuda.py`` (long files
   with real CUDA graphs, the q8 step, bf16 LM + fp32 Mimi, serve --batch, transcribe
   batching, bench rows);
2. ``moshikit bench codec --synthetic --device cuda`` (batch 1 and 8, streaming frames);
3. ``moshikit bench chat --synthetic --device cuda`` (the whole 80 ms loop, tiny LM);
4. ``moshikit bench stt --synthetic --device cuda`` (64 streams at batch 64);
5. ``moshikit bench lm --synthetic --lm-size full --device cuda --batch-sizes 1,8`` (the
   Moshi 7B architecture; its synthetic checkpoint is written once, ~15 GB).

Each step gets what is left of ``--budget`` (default 570 s, under the 10 minutes a lent
machine gives one command); a step that runs out is recorded as timed out and the rest
still run. ``gpu-proof.json`` holds the environment, every step's status, time, output
tail and benchmark rows; ``gpu-proof.md`` is the summary printed at the end. The exit
status is 0 only when every step passed and, on CUDA, every threshold (``thresholds()``:
the 7B step's p50 at batch 1 and 8, Mimi batch encode, STT at batch 64, each with its
reason) was met. Optional parts that are not installed (bitsandbytes' q8, livekit's echo
cancellation) are skipped with a note, never an import error; ``scripts/gpu-wheels.py``
fetches everything else a lent machine lacks.

``--device cpu`` is the dry run: tiny models, a few frames, and the ``cuda`` tests only
collected (``--run-tests`` runs their code on the CPU, minutes on a small machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BUDGET_S = 570
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
    op: str  # "<" for latencies (p50), ">" for speeds (p50)
    value: float
    reason: str
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
    ]


def judge(limits: list[Threshold], steps: list["Step"]) -> None:
    rows = {s.name: s.rows for s in steps}
    for t in limits:
        if t.step not in rows:
            continue
        row = next((r for r in rows[t.step] if r["name"].startswith(t.name) and r["task"].startswith(t.task)
                    and r["params"].get("batch") == t.batch), None)
        if row is None:
            t.status = "missing"
            continue
        t.seen = round(float(row["stats"]["p50"]), 2)
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


def source_root() -> Path | None:
    """The checkout holding tests/ (the proof runs from a source tree), or None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / TEST_FILES[0]).is_file() else None


def plan_steps(device: str, out: Path, run_tests: bool | None = None) -> list[Step]:
    gpu = device.startswith("cuda")
    run_tests = gpu if run_tests is None else run_tests
    py = [sys.executable]
    mk = py + ["-m", "moshikit"]
    root = source_root()
    steps: list[Step] = []
    if root is not None:
        argv = py + ["-m", "pytest", *[str(root / f) for f in TEST_FILES], "-m", "cuda", "-q",
                     "-p", "no:randomly", "-p", "no:cacheprovider", f"--junitxml={out / 'tests.xml'}"]
        if not run_tests:
            argv += ["--collect-only"]
        steps.append(Step("tests (cuda)" if run_tests else "tests (collected only)", argv))
    else:
        steps.append(Step("tests", [], status="skipped", notes=["no tests/ beside the package: run from a checkout"]))
    if gpu:
        codec = ["--seconds", "10", "--batch-sizes", "1,8", "--repeats", "3", "--stream-frames", "50"]
        chat = ["--frames", "50"]
        stt = ["--batch-sizes", "64", "--streams", "64", "--seconds", "10", "--repeats", "2"]
        lm = ["--lm-size", "full", "--batch-sizes", "1,8", "--steps", "50"]
    else:  # the dry run: the same commands, small enough for a test
        codec = ["--backend", "torch", "--no-reference", "--seconds", "1", "--batch-sizes", "1", "--repeats", "1",
                 "--stream-frames", "3"]
        chat = ["--frames", "3", "--codec-backend", "torch"]
        stt = ["--no-reference", "--batch-sizes", "1", "--streams", "1", "--seconds", "1", "--repeats", "1"]
        lm = ["--lm-size", "tiny", "--no-reference", "--batch-sizes", "1,2", "--steps", "3"]
    for name, extra in (("codec", codec), ("chat", chat), ("stt", stt), ("lm", lm)):
        steps.append(Step(f"bench {name}", mk + ["bench", name, "--synthetic", "--device", device, *extra,
                                                 "--json", str(out / f"bench-{name}.json")]))
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


def read_results(step: Step, out: Path) -> None:
    json_arg = next((a for a in step.argv if a.endswith(".json") and a.startswith(str(out))), None)
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
            result = f"{t['tests']} tests, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"
        else:
            result = f"{len(s['rows'])} rows"
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {result} |")
    lines += ["", "| threshold (p50) | bar | seen | status |", "| --- | --- | --- | --- |"]
    for t in report.get("thresholds", []):
        seen = "" if t["seen"] is None else f"{t['seen']:g}"
        lines.append(f"| {t['reason']} | {t['op']} {t['value']:g} | {seen} | {t['status']} |")
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


STEP_NAMES = ("tests", "codec", "chat", "stt", "lm")


def run(device: str, out: Path, *, budget: float = BUDGET_S, run_tests: bool | None = None,
        only: tuple[str, ...] = STEP_NAMES) -> dict:
    from .. import bench

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = dict(os.environ)
    if not device.startswith("cuda") and run_tests:
        env["MOSHIKIT_TEST_CUDA_DEVICE"] = device  # the cuda tests' code, on this device
    steps = [s for s in plan_steps(device, out, run_tests) if s.name.split()[-1].strip("()") in only
             or s.name.split()[0] in only]
    for step in steps:
        run_step(step, budget - (time.perf_counter() - started), env)
        read_results(step, out)
    limits = thresholds()
    if device.startswith("cuda"):  # the dry run's tiny models say nothing about a GPU's speed
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
    p.add_argument("--out", default="gpu-proof", help="folder for gpu-proof.json, gpu-proof.md and the bench JSONs")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything (default %(default)s)")
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
