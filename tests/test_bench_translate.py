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


@pytest.mark.slow  # ~40 s on 2 loaded cores
def test_engine_rows_beside_run_inference(mimi_weights):
    """With the CPU engine, the reference is still moshi's run_inference (bf16 on the CPU), same run;
    a limit row gives the LM's roofline on this machine and moshikit's row its share of it."""
    from moshikit.bench.limits import lm_limit, measure_machine
    from moshikit.translate import load_translator

    rows = list(bench_translate(TranslatePlan("synthetic", backend="cpu", seconds=1.0, repeats=1)))
    assert [r.name.split(" (")[0] for r in rows] == ["moshi run_inference InferenceState", "moshikit cpu",
                                                     "limit: LM step, fp32"]
    assert all(r.stats.p50 > 0 for r in rows)
    ours, bound = rows[1], rows[2]
    assert "of_limit" not in rows[0].params
    assert ours.params["of_limit"] == pytest.approx(ours.stats.p50 / bound.stats.p50, abs=1e-4)  # 4 decimals
    # The bound counts the temporal step and the depth transformer (Hibiki has one): their weights
    # read once a frame, at the bandwidth measured in the same run.
    tr = load_translator("synthetic", backend="cpu")
    machine = measure_machine(("fp32",))
    temporal_only = lm_limit(tr.lm.engine, None, 1, 13, machine, "fp32")
    assert bound.params["weights_mb"] > temporal_only["weights_mb"] > 0
    assert bound.params["machine"]["read_gb_s"] > 0 and bound.params["batch"] == 1


def test_full_hibiki_keeps_the_end_of_input_wiring():
    """The full-size synthetic streams its tensors from the pool with the two rows of ``hibiki_state``'s
    wiring replaced, whatever window of the tensor is read."""
    import torch

    from moshikit.synthetic.hibiki import EOS_ID, _EOS_FEATURE, FULL_OVERRIDES, _WiredPool, hibiki_config_json

    config = hibiki_config_json(size="full")
    assert {k: config[k] for k in FULL_OVERRIDES} == FULL_OVERRIDES and config["dep_q"] == 8
    pool = _WiredPool(config, 0)
    dim, card = config["dim"], config["card"]
    for name, row, value in ((f"emb.{config['dep_q']}.weight", card, 60.0), ("text_linear.weight", EOS_ID, 4.0)):
        whole = pool.read(name, row * dim - 7, dim + 14, torch.float32)  # the row and a few neighbours
        wired = whole[7:-7]
        assert wired[_EOS_FEATURE] == value and wired.count_nonzero() == 1
        assert whole[:7].count_nonzero() == 7 and whole[-7:].count_nonzero() == 7  # neighbours left random
        part = pool.read(name, row * dim + _EOS_FEATURE, 3, torch.float32)  # a window inside the row
        assert part.tolist() == [value, 0.0, 0.0]
    other = pool.read("emb.0.weight", card * dim, dim, torch.float32)
    assert other.count_nonzero() == dim  # other tables untouched
