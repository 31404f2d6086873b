"""The one-call GPU proof: what it runs on CUDA, and its CPU dry run."""

import json
import sys

import pytest

from moshikit.testing import gpu_proof


def test_the_cuda_plan_runs_the_cuda_tests_and_every_bench(tmp_path):
    steps = {s.name: s.argv for s in gpu_proof.plan_steps("cuda", tmp_path)}
    assert list(steps) == ["tests (cuda)", "bench codec", "bench chat", "bench stt", "bench lm"]
    tests = steps["tests (cuda)"]
    assert tests[:3] == [sys.executable, "-m", "pytest"] and tests[tests.index("-m", 3) + 1] == "cuda"
    assert "--collect-only" not in tests and tests[3].endswith("tests/test_cuda.py")
    lm = steps["bench lm"]
    assert lm[lm.index("--lm-size") + 1] == "full" and lm[lm.index("--batch-sizes") + 1] == "1,8"
    for name in ("codec", "chat", "stt", "lm"):
        argv = steps[f"bench {name}"]
        assert argv[1:5] == ["-m", "moshikit", "bench", name]
        assert "--synthetic" in argv and argv[argv.index("--device") + 1] == "cuda"
    assert "--collect-only" in gpu_proof.plan_steps("cpu", tmp_path)[0].argv  # the dry run only collects


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
    assert capsys.readouterr().out == md


def test_a_failing_step_fails_the_proof(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_proof, "plan_steps", lambda device, out, run_tests=None: [
        gpu_proof.Step("bench lm", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])])
    report = gpu_proof.run("cpu", tmp_path)
    assert not report["ok"] and report["steps"][0]["status"] == "failed" and report["steps"][0]["rc"] == 3
    assert "boom" in (tmp_path / "gpu-proof.md").read_text()
    with pytest.raises(SystemExit):
        gpu_proof.main(["--only", "nope"])


@pytest.mark.slow  # every step on a CPU: minutes on 2 cores
def test_full_cpu_dry_run(tmp_path, mimi_weights):
    assert gpu_proof.main(["--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-proof.json").read_text())
    assert [s["status"] for s in report["steps"]] == ["passed"] * 5
    assert all(s["rows"] for s in report["steps"][1:])


def _row(task, batch, p50, name="moshikit torch"):
    return {"name": name, "task": task, "params": {"batch": batch}, "stats": {"p50": p50}}


def test_thresholds_judge_the_cuda_rows():
    steps = [gpu_proof.Step("bench lm", [], rows=[_row("step (temporal + depth)", 1, 12.0),
                                                  _row("step (temporal + depth)", 8, 95.0)]),
             gpu_proof.Step("bench codec", [], rows=[_row("encode", 1, 300.0), _row("encode", 8, 2500.0)]),
             gpu_proof.Step("bench stt", [], rows=[_row("transcribe 64 x 10 s", 64, 40.0, "moshikit torch bf16")])]
    limits = gpu_proof.thresholds()
    gpu_proof.judge(limits, steps)
    assert {(t.step, t.batch): (t.status, t.seen) for t in limits} == {
        ("bench lm", 1): ("passed", 12.0), ("bench lm", 8): ("failed", 95.0),
        ("bench codec", 8): ("passed", 2500.0), ("bench stt", 64): ("failed", 40.0)}
    assert all(t.reason for t in limits)


def test_a_cuda_run_that_measured_nothing_fails_and_optional_parts_are_notes(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    monkeypatch.setattr(gpu_proof, "plan_steps", lambda device, out, run_tests=None: [
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
    assert "/gpu-wheels/" in (root / ".gitignore").read_text().split()


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("MOSHIKIT_LENT_PYTHON"),
                    reason="set MOSHIKIT_LENT_PYTHON to a clean interpreter with torch and the gpu-wheels set only")
def test_dry_run_with_only_the_carried_wheels(tmp_path):
    """The lent machine simulated: a clean environment holding torch, numpy, onnxruntime,
    huggingface_hub 1.x and the wheels of scripts/gpu-wheels.py, nothing else."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(root)}
    proc = subprocess.run([os.environ["MOSHIKIT_LENT_PYTHON"], "-m", "moshikit.testing.gpu_proof", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=root, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
