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
