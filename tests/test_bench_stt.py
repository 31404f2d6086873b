"""bench stt: full-size synthetic STT architectures, the paced live loop, the CLI's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moshikit.bench import stt as bench_stt
from moshikit.synthetic.stt import FULL_STT, full_stt_config_json


@pytest.mark.parametrize("name, billions, layers, text_card, delay", [
    ("stt", 0.99, 16, 8000, 0.5), ("stt-en", 2.62, 48, 4000, 2.5)])
def test_full_size_stt_configs_are_the_published_architectures(name, billions, layers, text_card, delay):
    from moshikit.stt import check_stt_config
    from moshikit.synthetic.lm import published_shapes

    cfg = full_stt_config_json(name)
    assert check_stt_config(cfg, name)["audio_delay_seconds"] == delay
    assert (cfg["dim"], cfg["num_layers"], cfg["text_card"], cfg["n_q"], cfg["dep_q"]) == (2048, layers, text_card, 32, 0)
    shapes = published_shapes(config=cfg)
    assert sum(int(np.prod(s)) for s in shapes.values()) / 1e9 == pytest.approx(billions, abs=0.01)
    assert shapes["transformer.layers.0.gating.linear_in.weight"] == (11264, 2048)  # ffn 2 x 5632 (4.125 x dim)
    assert ("extra_heads.3.weight" in shapes) == (name == "stt")  # stt-1b's pause heads
    assert cfg["tokenizer_name"] == FULL_STT[name]["tokenizer_name"]
    json.dumps(cfg)  # written as config.json


def test_full_size_names_are_checked():
    with pytest.raises(ValueError, match="stt, stt-en"):
        full_stt_config_json("moshi")


def test_the_live_loop_feeds_a_frame_every_80_ms_and_times_the_work():
    now = [0.0]
    slept = []

    def clock():
        return now[0]

    def sleep(s):
        slept.append(s)
        now[0] += s

    def work(frame):
        assert frame.shape == (1920,)
        now[0] += 0.03  # 30 ms of work a frame

    walls = bench_stt._paced(work, np.zeros(1920 * 4, np.float32), 10, clock, sleep, warmup=2)
    assert walls == pytest.approx([0.03] * 10)
    assert slept and all(s == pytest.approx(0.05) for s in slept)  # the rest of each 80 ms
    assert now[0] == pytest.approx(11 * 0.08 + 0.03)


def test_a_late_frame_does_not_make_the_next_ones_queue_up():
    now = [0.0]

    def work(frame):
        now[0] += 0.2 if len(calls) == 0 else 0.01
        calls.append(now[0])

    calls: list[float] = []
    walls = bench_stt._paced(work, np.zeros(1920 * 2, np.float32), 3, lambda: now[0],
                             lambda s: now.__setitem__(0, now[0] + s), warmup=0)
    assert walls[0] == pytest.approx(0.2) and walls[1:] == pytest.approx([0.01, 0.01])


def test_cli_refuses_other_full_size_models_and_sizes(capsys):
    from moshikit.cli.app import main

    assert main(["bench", "stt", "--synthetic", "--lm-size", "huge"]) == 2
    assert "--lm-size must be tiny or full" in capsys.readouterr().err
    assert main(["bench", "stt", "--synthetic", "--lm-size", "full", "-m", "moshiko"]) == 2
    assert "stt or -m stt-en" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_stt_tiny_rows_name_the_reference_and_the_precision(tmp_path, one_torch_thread):
    from moshikit.cli.app import main

    out = tmp_path / "b.json"
    code = main(["bench", "stt", "--synthetic", "--batch-sizes", "1", "--streams", "1", "-b", "cpu,torch",
                                 "--seconds", "1", "--repeats", "1", "--live-frames", "2", "--dtype", "auto,int8",
                 "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    names = {(x["name"], x["unit"]) for x in rows}
    assert ("moshi MimiModel + LMGen (reference)", "x real time") in names
    assert ("moshikit cpu fp32", "x real time") in names and ("moshikit cpu int8", "ms") in names
    assert ("moshikit torch fp32", "x real time") in names and ("moshikit torch int8", "ms") in names
    live = [x for x in rows if x["unit"] == "ms"]
    assert len(live) == 5 and all(x["params"]["frames"] == 2 and "over_budget" in x["params"] for x in live)
    # The CPU engine's rows carry their share of this machine's roofline, one limit row per precision.
    limits = {x["name"]: x for x in rows if x["name"].startswith("limit: ")}
    assert set(limits) == {"limit: LM step, fp32", "limit: LM step, int8"}
    for x in limits.values():
        p = x["params"]
        assert p["bound"] in ("memory", "arithmetic") and p["step_ms"] == max(p["read_ms"], p["math_ms"])
        measured = next(r for r in rows if r["name"] == f"moshikit cpu {p['precision']}" and r["unit"] != "ms")
        # of_limit is rounded to 4 decimals, the limit's x real time to 3 (at least 0.001 on any machine).
        assert measured["params"]["of_limit"] == pytest.approx(measured["stats"]["p50"] / x["stats"]["p50"],
                                                               rel=0.01, abs=1e-4)
    assert all("of_limit" not in r["params"] for r in rows if r["name"].startswith("moshikit torch"))


def test_the_roofline_counts_the_engines_weights_keys_and_operations():
    torch = pytest.importorskip("torch")
    from torch import nn

    from moshikit.backends.cpu_kernels import Linear
    from moshikit.bench.limits import Machine, StepCost, engine_cost, limit, mean_window

    class Engine(nn.Module):  # two layers of one 4x8 matmul each, dim 4, float32 keys and values
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.ModuleList([Linear(nn.Linear(4, 8, bias=False), "fp32")])
                                         for _ in range(2)])
            self.dim, self.kv_dtype = 4, torch.float32

    cost = engine_cost(Engine(), batch=3, window=10)
    assert cost.weight_bytes == 2 * 4 * 8 * 4
    assert cost.kv_bytes == 2 * 2 * 3 * 4 * 10 * 4  # layers x (k, v) x batch x dim x window x 4 bytes
    assert cost.ops == 2 * (2 * 32 * 3 + 2 * 2 * 3 * 4 * 10)
    m = Machine(read_gb_s=1.0, gop_s={"fp32": 1.0}, threads=1)
    b = limit(StepCost(10**9, 0, 10**8), m, "fp32", batch=4)  # 1 s to read, 0.1 s of arithmetic
    assert (b["bound"], b["step_ms"], b["x_real_time"]) == ("memory", 1000.0, 0.32)
    assert limit(StepCost(0, 0, 2e9), m, "fp32", 1)["bound"] == "arithmetic"
    assert mean_window(3, 3000) == 64 and mean_window(130, 3000) == (64 * 64 + 64 * 128 + 2 * 192) / 130
    assert mean_window(100, 50) == 50  # the window never passes the context
