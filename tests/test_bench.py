"""Benchmark statistics, schema and comparisons, with a fake clock where timings matter."""

import json

import numpy as np
import pytest

from moshikit import bench


class FakeClock:
    """Each call to the measured function advances time by the next scripted duration."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)

    def __call__(self):
        return self.now

    def work(self):
        self.now += self.durations.pop(0)


def test_measure_excludes_warmup_and_times_each_call():
    clock = FakeClock([5.0, 0.1, 0.2, 0.3])  # the 5 s warm-up must not count
    walls = bench.measure(clock.work, repeats=3, warmup=1, clock=clock)
    assert walls == pytest.approx([0.1, 0.2, 0.3])


def test_stats_and_rows():
    s = bench.Stats.of([10, 20, 30, 40, 50])
    assert (s.n, s.mean, s.p50, s.min, s.max) == (5, 30, 30, 10, 50)
    assert s.p90 == pytest.approx(46) and s.p99 == pytest.approx(49.6)
    row = bench.throughput_row("codec", "x", "encode", 10.0, [0.5, 1.0, 2.0], batch=1, seconds=10)
    assert row.samples == [20.0, 10.0, 5.0] and row.stats.p50 == 10.0 and row.unit == "x real time"
    lat = bench.latency_row("lm", "x", "step", [0.01, 0.02])
    assert lat.samples == pytest.approx([10.0, 20.0]) and lat.unit == "ms"


def test_json_roundtrip_and_schema(tmp_path):
    r = bench.BenchResult(env={"cpu": "x"}, synthetic=True,
                          rows=[bench.latency_row("codec", "a", "stream", [0.01, 0.03], frames=2)])
    bench.save(r, str(tmp_path / "r.json"))
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema"] == "moshikit.bench/1" and data["synthetic"] is True
    assert set(data["rows"][0]) >= {"stage", "name", "task", "unit", "stats", "params", "memory", "samples"}
    assert set(data["rows"][0]["stats"]) == {"n", "mean", "p50", "p90", "p99", "min", "max"}
    back = bench.load(str(tmp_path / "r.json"))
    assert back.rows[0].stats == r.rows[0].stats
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError):
        bench.load(str(tmp_path / "bad.json"))


def test_compare_ratios():
    old = bench.BenchResult(env={}, synthetic=True, rows=[
        bench.throughput_row("codec", "t", "encode", 10, [1.0], batch=1, seconds=10),  # 10x
        bench.latency_row("codec", "t", "stream", [0.040], frames=50),  # 40 ms
        bench.latency_row("codec", "gone", "stream", [0.040], frames=50),
    ])
    new = bench.BenchResult(env={}, synthetic=True, rows=[
        bench.throughput_row("codec", "t", "encode", 10, [0.5], batch=1, seconds=10),  # 20x: 2x faster
        bench.latency_row("codec", "t", "stream", [0.020], frames=50),  # 20 ms: 2x faster
        bench.latency_row("codec", "t", "stream", [0.020], frames=10),  # no counterpart
    ])
    ratios = [round(x, 6) for _, _, x in bench.compare(new, old)]
    assert ratios == [2.0, 2.0]


def test_histogram_counts_every_sample():
    rows = bench.histogram(np.linspace(0, 1, 101), bins=10)
    assert sum(c for _, _, c, _ in rows) == 101 and len(rows) == 10


def test_codec_stage_rows(mimi_weights):
    plan = bench.CodecPlan(["torch"], str(mimi_weights), reference=True, seconds=[1.0], repeats=1, stream_frames=3)
    rows = list(bench.bench_codec(plan))
    names = {(r.name, r.task) for r in rows}
    assert ("moshi MimiModel (reference)", "encode") in names and ("moshikit torch", "decode") in names
    assert ("rustymimi Tokenizer (reference)", "stream encode+decode") in names
    for r in rows:
        assert r.stats.n == (3 if r.unit == "ms" else 1) and r.stats.p50 > 0


@pytest.fixture(scope="module")
def tiny_repo(mimi_weights):
    return bench.synthetic_moshi_repo("tiny")


def test_lm_stage_rows(tiny_repo):
    rows = list(bench.bench_lm(bench.LMPlan(["torch"], tiny_repo, reference=True, batch_sizes=[1, 2], steps=4)))
    tasks = [(r.name, r.task, r.params.get("batch")) for r in rows]
    assert ("moshi LMGen (reference)", "step (temporal + depth)", 2) in tasks
    assert ("moshikit torch", "time to first output", 1) in tasks
    cap = [r for r in rows if r.unit == "streams" and r.name == "moshikit torch"][0]
    steps = {r.params["batch"]: r for r in rows if r.name == "moshikit torch" and r.task.startswith("step")}
    want = max([b for b, r in steps.items() if r.stats.p99 < 80] or [0])
    assert cap.stats.p50 == want and steps[1].stats.n == 4


def test_lm_stage_int8_engine_beside_moshi_bf16(tiny_repo):
    """``--dtype int8``: the CPU engine in int8, moshi's reference in bf16 (it has no CPU int8)."""
    rows = list(bench.bench_lm(bench.LMPlan(["cpu"], tiny_repo, reference=True, batch_sizes=[1], steps=3,
                                            dtype="int8")))
    names = {r.name for r in rows if r.task.startswith("step")}
    assert names == {"moshi LMGen (reference)", "moshikit cpu", "limit: step, int8"}
    (bound,) = [r for r in rows if r.name == "limit: step, int8"]
    (step,) = [r for r in rows if r.name == "moshikit cpu" and r.task.startswith("step")]
    # The roofline counts every matmul weight of the temporal and depth transformers once a step.
    from moshikit.backends import cpu_engine
    from moshikit.backends.cpu_kernels import Linear

    lm = cpu_engine.load(tiny_repo, dtype="int8")
    linears = [m for part in (lm.engine, lm.depth) for m in part.modules() if isinstance(m, Linear)]
    assert bound.params["weights_mb"] == round(sum(m.weight_bytes() for m in linears) / 2**20, 1)
    assert bound.params["gop_per_step"] > 0 and bound.stats.p50 == bound.params["step_ms"] > 0
    assert step.params["of_limit"] == round(bound.params["step_ms"] / step.stats.p50, 4)
    import torch

    from moshikit.bench.lm import lm_subjects

    ((_, make),) = lm_subjects(bench.LMPlan([], tiny_repo, reference=True, batch_sizes=[1], steps=1, dtype="int8"))
    assert {p.dtype for p in make().gen.lm_model.parameters()} == {torch.bfloat16}


def test_chat_paced_feeds_every_80_ms(tiny_repo, mimi_weights):
    now = {"t": 0.0}
    slept = []

    def sleep(d):
        slept.append(d)
        now["t"] += d

    (row,) = bench.bench_chat("torch", "torch", str(mimi_weights), tiny_repo, frames=3, paced=True,
                              clock=lambda: now["t"], sleep=sleep)
    assert slept == pytest.approx([0.08] * 7)  # 3 timed + 5 warm-up frames, the first without waiting
    assert row.stats.n == 3 and row.params["over_budget"] == 0.0 and row.params["headroom_ms"] == 80.0


class _LinearLM:
    """An LM whose step costs ``ms`` per stream on a fake clock: batch 1 and 2 keep the
    80 ms budget at 30 ms a stream, batch 3 and above miss it."""

    input_codebooks = 8

    def __init__(self, clock: FakeClock, ms: float = 30.0) -> None:
        self.clock, self.ms, self.batch = clock, ms, 1

    def reset(self, batch: int = 1) -> None:
        self.batch = batch

    def step(self, codes):
        self.clock.now += self.ms * self.batch / 1000
        return codes

    def sync(self) -> None:
        pass


@pytest.mark.parametrize("sizes, low, exact, missed, text", [
    ([1], 1, False, None, "at least 1 (largest measured)"),  # nothing larger measured: a lower bound only
    ([1, 2], 2, False, None, "at least 2 (largest measured)"),
    ([1, 2, 3], 2, True, 3, "2 streams"),  # 3 measured and missed: 2 is proven
    ([1, 4], 1, False, 4, "1 to 3 (4 missed; between not measured)"),
    ([3], 0, False, 3, "0 to 2 (3 missed; between not measured)"),
])
def test_lm_capacity_claims_only_what_was_measured(monkeypatch, sizes, low, exact, missed, text):
    clock = FakeClock([])
    monkeypatch.setattr(bench.lm, "lm_subjects", lambda plan: [("fake", lambda: _LinearLM(clock))])
    rows = list(bench.bench_lm(bench.LMPlan([], "unused", reference=False, batch_sizes=sizes, steps=3), clock=clock))
    steps = {r.params["batch"]: r.stats.p99 for r in rows if r.task.startswith("step")}
    assert steps == pytest.approx({b: 30.0 * b for b in sizes})
    (cap,) = [r for r in rows if r.unit == "streams"]
    assert cap.stats.p50 == low and cap.params["exact"] is exact and cap.params["missed"] == missed
    assert bench.capacity_text(cap) == text


class _CyclicLM(_LinearLM):
    """An LM in a reference cycle, as a model's modules and streaming states are: only the cycle
    collector frees it once nothing else holds it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock, 0)
        self.me = self


def test_bench_lm_frees_each_subject_before_making_the_next(monkeypatch):
    """Two models would not fit together (the 7B reference and the engine): the first subject is
    collected before the second is made, so its memory counts in neither the load nor the next peak."""
    import weakref

    clock, made = FakeClock([]), []

    def make():
        assert all(ref() is None for ref in made), "the previous subject is still alive"
        lm = _CyclicLM(clock)
        made.append(weakref.ref(lm))
        return lm

    monkeypatch.setattr(bench.lm, "lm_subjects", lambda plan: [("first", make), ("second", make)])
    rows = list(bench.bench_lm(bench.LMPlan([], "unused", reference=False, batch_sizes=[1], steps=2), clock=clock))
    assert len(made) == 2 and {r.name for r in rows} == {"first", "second"}


def test_bench_lm_prints_a_lower_bound_when_only_batch_1_ran(monkeypatch, capsys, tiny_repo):
    """The issue's case: only batch 1 measured, and it kept real time."""
    from moshikit.cli.app import main

    # A step that costs nothing on the real clock: batch 1 keeps real time whatever the machine's load.
    monkeypatch.setattr(bench.lm, "lm_subjects", lambda plan: [("moshikit fake", lambda: _LinearLM(FakeClock([]), 0))])
    assert main(["bench", "lm", "--synthetic", "-b", "torch", "--no-reference", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "moshikit fake: largest real-time batch (p99 < 80 ms): at least 1 (largest measured)" in out
    assert "≥1 streams" in out and " 1 streams" not in out


def test_chat_stage_runs_what_chat_runs(tiny_repo, mimi_weights):
    """bench chat's defaults are the codec and LM that `moshikit chat` loads on this machine."""
    from moshikit.serve import load_conversation

    conv = load_conversation(tiny_repo)
    (row,) = bench.bench_chat("auto", "auto", str(mimi_weights), tiny_repo, frames=1)
    assert row.name == f"moshikit {conv.codec.info.backend}+{conv.lm.info.backend}"
    # Chosen at will, as before (test_chat_paced_feeds_every_80_ms runs "torch", "torch").
