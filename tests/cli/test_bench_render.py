"""`moshikit bench` tables on the terminal: readable at 80 columns, one table when it fits.

The rows are those a `bench --synthetic` run makes (every stage, the reference subjects, the
longest task names), built here without measuring anything."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from moshikit import bench
from moshikit.bench.agent import AGENT, LLM_REFERENCE, PARTS, TTS_REFERENCE
from moshikit.bench.core import Row, Stats
from moshikit.cli import bench_render
from moshikit.cli.bench_render import report

SUBJECTS = {
    "codec": ["moshikit onnx", "moshikit torch", "moshikit rustymimi", "moshi MimiModel (reference)",
              "rustymimi Tokenizer (reference)"],
    "lm": ["moshikit torch", "moshi LMGen (reference)"],
    "chat": ["moshikit onnx codec + torch LM"],
    "stt": ["moshikit transcribe, int8", "moshi MimiModel + LMGen (reference)"],
    "translate": ["moshikit translate", "moshi run_inference InferenceState (reference)"],
    "tts": ["moshikit speak", "moshi TTSModel.generate (reference)", "moshikit speak -b pocket",
            "pocket-tts generate_audio_stream (reference)"],
    "agent": [AGENT, LLM_REFERENCE, TTS_REFERENCE],
}
TASKS = {"codec": ["encode", "decode", "stream encode+decode"], "lm": ["step"],
         "chat": ["frame encode+step+decode", "paced frame encode+step+decode"], "stt": ["transcribe", "live step"],
         "translate": ["translate"], "tts": ["speak", "time to first audio"],
         "agent": [*PARTS.values(), "request -> first token"]}


def _result() -> bench.BenchResult:
    result = bench.BenchResult(env={"cpu": "AMD EPYC 7B13", "cores": 2, "torch": "2.9.1", "torch_threads": 2,
                                    "gpus": []}, synthetic=True)
    for stage, names in SUBJECTS.items():
        for name in names:
            for task in TASKS[stage]:
                ms = "step" in task or "frame" in task or "first" in task or stage == "agent"
                result.rows.append(Row(stage, name, task, "ms" if ms else "x real time",
                                       Stats(20, 1234.5, 1200.25, 1400.5, 1500.75, 1100.0, 1600.0) if ms else
                                       Stats(20, 21.37, 23.4, 24.1, 24.9, 20.0, 25.0),
                                       {"batch": 8}, {"peak_rss_mb": 12345.0}, samples=[1.0] * 20))
    result.rows.append(Row("lm", "moshikit torch", "largest real-time batch (p99 < 80 ms)", "streams",
                           Stats.of([4]), {"missed": 8}))
    return result


def _draw(width: int) -> str:
    buf = io.StringIO()
    report(Console(file=buf, width=width, highlight=False, no_color=True), _result())
    return buf.getvalue()


@pytest.mark.parametrize("width", [60, 80, 100])
def test_narrow_terminals_get_whole_names_and_tasks(width):
    text = _draw(width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, [line for line in lines if len(line) > width]
    assert "…" not in text
    stripped = [line.strip() for line in lines]
    for stage, names in SUBJECTS.items():
        assert stage in stripped
        for name in names:  # each subject named once per stage, whole, on a line of its own
            assert stripped.count(name) == sum(name in n for n in SUBJECTS.values())
    if width >= 80:  # a task is not wrapped (at 60 columns the longest may be)
        for task in {t for ts in TASKS.values() for t in ts} | {"largest real-time batch (p99 < 80 ms)"}:
            assert any(line.startswith(task) for line in stripped), task
    assert "1200.2 ms" in text or "1,200.2 ms" in text  # p50 is always shown


def test_the_reference_comes_first_in_each_stage():
    lines = [line.strip() for line in _draw(80).splitlines()]
    assert lines.index("moshi MimiModel (reference)") < lines.index("moshikit onnx")
    assert lines.index("rustymimi Tokenizer (reference)") < lines.index("moshikit onnx")
    assert lines.index("moshi TTSModel.generate (reference)") < lines.index("moshikit speak")
    assert lines.index(LLM_REFERENCE) < lines.index(AGENT) and lines.index(TTS_REFERENCE) < lines.index(AGENT)


def test_a_wide_terminal_gets_one_table():
    text = _draw(220)
    assert max(len(line) for line in text.splitlines()) <= 220
    assert "…" not in text
    header = next(line for line in text.splitlines() if "stage" in line and "what" in line)
    for col in ("task", "batch", "p50", "p90", "p99", "mean", "peak MB"):
        assert col in header
    rows = [line for line in text.splitlines() if "moshi MimiModel (reference)" in line]
    assert len(rows) == 3 and all("stream encode+decode" in r or "code" in r for r in rows)


def test_json_keeps_the_full_names(tmp_path):
    path = tmp_path / "run.json"
    bench.save(_result(), str(path))
    names = {r["name"] for r in json.loads(path.read_text())["rows"]}
    assert names == {n for ns in SUBJECTS.values() for n in ns}


@pytest.mark.parametrize("width", [80, 220])
def test_the_comparison_with_an_earlier_run_fits_too(width, tmp_path):
    """`--compare run.json`: the speed-up table, whole names at 80 columns as at 220."""
    now, before = _result(), _result()
    path = tmp_path / "before.json"
    bench.save(before, str(path))
    buf = io.StringIO()
    con = Console(file=buf, width=width, highlight=False, no_color=True)
    bench_render.compare_table(con, bench.compare(now, bench.load(str(path))))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
    for name in {n for ns in SUBJECTS.values() for n in ns}:
        assert name in text
    assert "1.00x" in text
