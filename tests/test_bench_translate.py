"""`bench translate`: moshikit's row next to moshi.run_inference's, measured in the same run."""

import pytest

from moshikit.bench.translate import TranslatePlan, bench_translate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow  # ~50 s on 2 loaded cores (two models loaded, 3 runs each)
def test_rows_side_by_side(mimi_weights, capsys):
    rows = list(bench_translate(TranslatePlan("synthetic", backend="torch", device="cpu", seconds=1.0, repeats=1)))
    assert [r.name.split(" (")[0] for r in rows] == ["moshi run_inference InferenceState", "moshikit torch"]
    assert all(r.stage == "translate" and r.unit == "x real time" and r.stats.p50 > 0 for r in rows)
    for r in rows:
        assert r.params.pop("load") >= 0  # the load average, recorded in every row
    assert rows[0].params == rows[1].params == {"batch": 1, "device": "cpu", "cfg": 1.0}
    out, err = capsys.readouterr()
    assert out == "" and "EOS" not in err  # run_inference's own printing is kept out of the report
