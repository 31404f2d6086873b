"""The one-call GPU proof: what it runs on CUDA, and its CPU dry run."""

import json
import sys
from pathlib import Path

import pytest

from moshikit.testing import gpu_proof


def test_the_cuda_plan_runs_the_cuda_tests_every_bench_and_the_commands_users_run(tmp_path):
    from moshikit.testing import proof_steps

    plan = gpu_proof.plan_steps("cuda", tmp_path / "out", work=tmp_path / "work")
    steps = {s.key: s.argv for s in plan}
    assert list(steps) == list(gpu_proof.STEP_NAMES)  # --only names every step, in the order they run
    assert list(steps)[-1] == "lm"  # the 7B step, the longest, last: every step before it is capped
    tests = steps["tests"]
    assert tests[:3] == [sys.executable, "-m", "pytest"] and tests[tests.index("-m", 3) + 1] == "cuda"
    assert "--collect-only" not in tests and tests[3].endswith("tests/test_cuda.py")
    lm = steps["lm"]
    assert lm[lm.index("--lm-size") + 1] == "full" and lm[lm.index("--batch-sizes") + 1] == "1,8"
    for name in ("codec", "chat", "stt", "serve", "lm"):
        argv = steps[name]
        assert argv[1:5] == ["-m", "moshikit", "bench", name]
        assert "--synthetic" in argv and argv[argv.index("--device") + 1] == "cuda"
    serve = steps["serve"]
    assert serve[serve.index("--streams") + 1] == "2"  # two concurrent STT streams and TTS requests
    for name in proof_steps.STEPS:  # encode/decode/transcribe, speak, translate, serve chat, live engine
        argv = steps[name]
        assert argv[1:4] == ["-m", "moshikit.testing.proof_steps", name] and "--small" not in argv
        assert argv[argv.index("--device") + 1] == "cuda"
    # Everything but the summary, its JSON and the tests' XML goes to the work folder.
    written = [a for argv in steps.values() for a in argv if str(tmp_path) in a]
    assert all(a.startswith(str(tmp_path / "work")) or a.endswith("tests.xml") for a in written)
    dry = gpu_proof.plan_steps("cpu", tmp_path)
    assert "--collect-only" in dry[0].argv  # the dry run only collects
    assert all("--small" in s.argv for s in dry if s.key in proof_steps.STEPS)
    assert all(s.cap is None for s in dry)  # a CPU's times say nothing: only the budget bounds it


def test_each_step_gets_its_cap_and_leaves_the_later_steps_their_floors():
    later = [gpu_proof.Step("bench lm", [], floor=150.0), gpu_proof.Step("x", [], floor=20.0)]
    step = gpu_proof.Step("bench codec", [], cap=45.0, floor=20.0)
    assert gpu_proof.time_for(step, later, 470.0) == 45.0  # the cap, with time to spare
    assert gpu_proof.time_for(step, later, 200.0) == 30.0  # what the later floors leave
    assert gpu_proof.time_for(step, later, 100.0) == 20.0  # its own floor still, while the budget has it
    assert gpu_proof.time_for(step, later, 10.0) == 10.0
    assert gpu_proof.time_for(gpu_proof.Step("lm", [], floor=150.0), [], 300.0) == 300.0  # uncapped: what is left
    # On CUDA the floors of all steps fit the budget, and the 7B step keeps the most.
    plan = gpu_proof.plan_steps("cuda", Path("out"))
    assert sum(s.floor for s in plan) < gpu_proof.BUDGET_S < 8 * 60
    assert max(plan, key=lambda s: s.floor).key == "lm"


def _files_under(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    return files, max((len(p.relative_to(folder).parts) for p in files), default=0)


def test_cpu_dry_run_writes_one_json_and_a_summary(tmp_path, mimi_weights, capsys):
    # The tests step (collection) and one benchmark: the whole dry run is in the slow test below.
    code = gpu_proof.main(["--device", "cpu", "--out", str(tmp_path), "--only", "tests,lm"])
    report = json.loads((tmp_path / "gpu-proof.json").read_text())
    assert code == 0, (tmp_path / "gpu-proof.md").read_text()
    assert report["ok"] and report["device"] == "cpu" and report["schema"] == "moshikit-gpu-proof/1"
    assert [s["name"] for s in report["steps"]] == ["tests (collected only)", "bench lm"]
    lm = report["steps"][1]
    assert lm["status"] == "passed" and {r["params"].get("batch") for r in lm["rows"]} >= {1, 2}
    md = (tmp_path / "gpu-proof.md").read_text()
    assert md.startswith("# GPU proof: cpu (passed)") and "| bench lm | passed |" in md
    collected = report["steps"][0]["tests"]["tests"]  # test_cuda.py's tests, though the XML counts none
    assert collected >= 6 and f"| tests (collected only) | passed | {report['steps'][0]['seconds']} | " \
        f"{collected} tests collected |" in md
    assert capsys.readouterr().out == md
    files, _ = _files_under(tmp_path)  # the bench JSON stays in the proof's work folder, removed
    assert sorted(p.name for p in files) == ["gpu-proof.json", "gpu-proof.md", "tests.xml"]


def test_a_failing_step_fails_the_proof(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_proof, "plan_steps", lambda device, out, run_tests=None, work=None: [
        gpu_proof.Step("bench lm", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])])
    report = gpu_proof.run("cpu", tmp_path)
    assert not report["ok"] and report["steps"][0]["status"] == "failed" and report["steps"][0]["rc"] == 3
    assert "boom" in (tmp_path / "gpu-proof.md").read_text()
    with pytest.raises(SystemExit):
        gpu_proof.main(["--only", "nope"])


@pytest.mark.slow  # every step on a CPU: 10-25 minutes on 2 busy cores
def test_full_cpu_dry_run(tmp_path, mimi_weights):
    assert gpu_proof.main(["--device", "cpu", "--out", str(tmp_path)]) == 0, (tmp_path / "gpu-proof.md").read_text()
    report = json.loads((tmp_path / "gpu-proof.json").read_text())
    assert [s["key"] for s in report["steps"]] == list(gpu_proof.STEP_NAMES)  # every step, new ones included
    assert [s["status"] for s in report["steps"]] == ["passed"] * len(gpu_proof.STEP_NAMES)
    assert all(s["rows"] for s in report["steps"][1:])
    # The new steps' threshold rows are there (on a CPU they are not judged): the CUDA run finds
    # them. The dry run's sizes differ (2 files, batch 2): match the row's name alone. (The bench
    # rows' names carry the backend, another one on a CPU: "moshikit cpu fp32" for STT.)
    rows = {s["key"]: s["rows"] for s in report["steps"]}
    for t in gpu_proof.thresholds():
        if not t.step.startswith("bench "):
            assert any(r["name"].startswith(t.name) for r in rows[t.step]), t.reason
    # What a lent machine hands back: one summary and at most 7 others, at most 2 folders deep.
    files, depth = _files_under(tmp_path)
    assert len(files) <= 8 and depth == 1, files  # all in --out itself: $OUT/proof/FILE is 2 deep
    assert {"gpu-proof.md", "gpu-proof.json"} <= {p.name for p in files}


def _row(task, batch, p50, name="moshikit torch"):
    return {"name": name, "task": task, "params": {"batch": batch}, "stats": {"p50": p50}}


def test_thresholds_judge_the_cuda_rows():
    steps = [gpu_proof.Step("bench lm", [], rows=[_row("step (temporal + depth)", 1, 12.0),
                                                  _row("step (temporal + depth)", 8, 95.0)]),
             gpu_proof.Step("bench codec", [], rows=[_row("encode", 1, 300.0), _row("encode", 8, 2500.0)]),
             gpu_proof.Step("bench stt", [], rows=[_row("transcribe 64 x 10 s", 64, 40.0, "moshikit torch bf16")])]
    limits = gpu_proof.thresholds()
    gpu_proof.judge(limits, steps)
    assert {(t.step, t.batch): (t.status, t.seen) for t in limits if t.step.startswith("bench")} == {
        ("bench lm", 1): ("passed", 12.0), ("bench lm", 8): ("failed", 95.0),
        ("bench codec", 8): ("passed", 2500.0), ("bench stt", 64): ("failed", 40.0)}
    assert {t.status for t in limits if not t.step.startswith("bench")} == {"not judged"}  # those steps did not run
    assert all(t.reason for t in limits)


def _stats_row(name, task, samples, **params):
    import numpy as np

    a = np.asarray(samples, float)
    return {"name": name, "task": task, "params": params,
            "stats": {"p50": float(np.median(a)), "p99": float(np.percentile(a, 99)), "min": float(a.min()),
                      "max": float(a.max())}}


def test_thresholds_judge_the_serve_and_live_rows_by_their_key_and_statistic():
    """Two sessions must both be real time: the worse one is judged (max lag, min speed), and
    bench serve's rows are matched on their stream count."""
    steps = [
        gpu_proof.Step("bench serve", [], rows=[
            _stats_row("moshikit serve stt, unpaced", "2 streams x 5 s", [30.0, 30.0], streams=2),
            _stats_row("moshikit serve stt, real-time pace", "2 streams: marker lag", [200.0, 1400.0], streams=2),
            _stats_row("moshikit serve tts (/v1/audio/speech)", "2 requests x 12 words", [3.0, 2.5], streams=2),
            _stats_row("moshikit serve tts (/v1/audio/speech)", "2 requests: first audio", [90.0, 95.0], streams=2)]),
        gpu_proof.Step("serve chat (2 sessions)", [], key="serve-chat", rows=[
            _stats_row("moshikit serve chat (/api/chat)", "2 sessions: catch-up after the last frame", [120.0, 300.0],
                       batch=2)]),
        gpu_proof.Step("chat live engine (paced)", [], key="live", rows=[
            _stats_row("moshikit chat live engine (paced)", "step", [20.0] * 99 + [200.0] * 2, batch=1),
            _stats_row("moshikit chat live engine (paced)", "dropped frames", [0.0], batch=1)]),
        gpu_proof.Step("speak (batch 1 and 8)", [], key="speak", rows=[
            _stats_row("moshikit speak (a folder)", "2 texts, per row", [4.0, 5.0], batch=1),
            _stats_row("moshikit speak (a folder)", "8 texts, per row", [2.0] * 7 + [0.9], batch=8)])]
    limits = gpu_proof.thresholds()
    gpu_proof.judge(limits, steps)
    seen = {(t.step, t.task): (t.status, t.seen) for t in limits if t.status != "not judged"}
    assert seen == {
        ("serve", "2 streams: marker lag"): ("failed", 1400.0),  # one stream fell 1.4 s behind
        ("serve", "2 requests x"): ("passed", 2.5),
        ("serve-chat", "2 sessions: catch-up"): ("passed", 300.0),
        ("live", "step"): ("failed", 200.0),  # p99: 2 steps in 101 over a frame
        ("live", "dropped frames"): ("passed", 0.0),
        ("speak", "2 texts"): ("passed", 4.0),
        ("speak", "8 texts"): ("failed", 0.9)}  # one row of 8 slower than real time


def test_a_cuda_run_that_measured_nothing_fails_and_optional_parts_are_notes(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    monkeypatch.setattr(gpu_proof, "plan_steps", lambda device, out, run_tests=None, work=None: [
        gpu_proof.Step("bench lm", [sys.executable, "-c", "print('ok')"])])
    report = gpu_proof.run("cuda", tmp_path)
    assert report["steps"][0]["status"] == "passed" and not report["ok"]  # the 7B step rows are missing
    assert [t["status"] for t in report["thresholds"] if t["step"] == "bench lm"] == ["missing", "missing"]
    assert any(n.startswith("q8 LM steps") and "bitsandbytes is not installed" in n for n in report["notes"])
    md = (tmp_path / "gpu-proof.md").read_text()
    assert "| missing |" in md and "- note: q8 LM steps" in md
    dry = gpu_proof.run("cpu", tmp_path / "dry")  # the dry run's tiny models are not judged
    assert dry["ok"] and {t["status"] for t in dry["thresholds"]} == {"not judged"}


def _wheels_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "gpu-wheels.py"
    spec = importlib.util.spec_from_file_location("gpu_wheels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path.parents[1]


def test_the_wheel_script_asks_for_the_lent_machine_exactly():
    """cp312 manylinux x86_64 binaries, no dependencies resolved (moshi pins torch<2.10; the lent
    torch is 2.11), nothing the lent machine has (torch, numpy, onnxruntime, huggingface_hub),
    no optional part, into a folder git ignores."""
    mod, root = _wheels_script()
    cmd = mod.pip_download(mod.WHEELS, root / "gpu-wheels")
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "cp312" in cmd and "--no-deps" in cmd
    assert "--only-binary=:all:" in cmd and all(p.endswith("x86_64") for p in mod.PLATFORMS)
    names = {w.split("==")[0] for w in mod.WHEELS}
    assert all("==" in w for w in mod.WHEELS)  # pinned: exactly these
    assert not names & {"torch", "numpy", "onnxruntime", "huggingface_hub", "bitsandbytes", "livekit"}
    assert {"moshi", "sphn", "typer", "pytest", "aiohttp", "soundfile"} <= names
    # serve and bench serve's clients (the proof's serve steps)
    assert {"starlette", "uvicorn", "websockets", "msgpack", "python-multipart", "anyio", "h11", "click"} <= names
    assert "/gpu-wheels/" in (root / ".gitignore").read_text().split()


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("MOSHIKIT_LENT_PYTHON"),
                    reason="set MOSHIKIT_LENT_PYTHON (and MOSHIKIT_LENT_PATH) as scripts/lent-env.sh prints")
def test_dry_run_with_only_the_carried_wheels(tmp_path):
    """The lent machine simulated (scripts/lent-env.sh builds it): a clean interpreter holding torch,
    numpy, onnxruntime and huggingface_hub 1.x, MOSHIKIT_LENT_PATH the folder the wheels of
    scripts/gpu-wheels.py went to with pip's --target, run as scripts/gpu-wheels.py's docstring
    says: from the checkout (``-m`` finds moshikit there), that folder alone on PYTHONPATH."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("MOSHIKIT_LENT_PATH"):
        env["PYTHONPATH"] = os.environ["MOSHIKIT_LENT_PATH"]
    proc = subprocess.run([os.environ["MOSHIKIT_LENT_PYTHON"], "-m", "moshikit.testing.gpu_proof", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=root,
                          timeout=gpu_proof.DRY_BUDGET_S + 300)  # past the proof's own budget: it reports
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-proof.json").read_text())
    assert [s["key"] for s in report["steps"]] == list(gpu_proof.STEP_NAMES)
    assert [s["status"] for s in report["steps"]] == ["passed"] * len(gpu_proof.STEP_NAMES)
    assert all(s["rows"] for s in report["steps"][1:])  # every step measured something
    # What the carried set leaves out is skipped with a note, never an import error.
    assert [n.split(":")[0] for n in report["notes"]] == [what for _, what in gpu_proof.OPTIONAL], report["notes"]
