"""Prove a GPU machine in one call: the ``cuda`` tests, then the benchmarks, one JSON.

    python -m moshikit.testing.gpu_proof --device cuda [--out DIR] [--budget SECONDS]

runs, each as its own process (exactly what a user runs):

1. ``pytest -m cuda tests/test_cuda.py`` (long files
   with real CUDA graphs, the q8 step, bf16 LM + fp32 Mimi, serve --batch, transcribe
   batching, bench rows);
2. ``moshikit bench codec --synthetic --device cuda`` (batch 1 and 8, streaming frames);
3. ``moshikit bench chat --synthetic --device cuda`` (the whole 80 ms loop, tiny LM);
4. ``moshikit bench stt --synthetic --device cuda`` (batch 1 and 8);
5. ``moshikit bench lm --synthetic --lm-size full --device cuda --batch-sizes 1,8`` (the
   Moshi 7B architecture; its synthetic checkpoint is written once, ~15 GB).

Each step gets what is left of ``--budget`` (default 570 s, under the 10 minutes a lent
machine gives one command); a step that runs out is recorded as timed out and the rest
still run. ``gpu-proof.json`` holds the environment, every step's status, time, output
tail and benchmark rows; ``gpu-proof.md`` is the summary printed at the end. The exit
status is 0 only when every step passed.

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
        stt = ["--batch-sizes", "1,8", "--streams", "8", "--seconds", "10", "--repeats", "2"]
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
    report = {"schema": "moshikit-gpu-proof/1", "device": device, "env": bench.environment(),
              "seconds": round(time.perf_counter() - started, 1),
              "ok": all(s.status in ("passed", "skipped") for s in steps), "steps": [asdict(s) for s in steps]}
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
