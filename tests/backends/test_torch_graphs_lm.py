"""The Moshi LM under moshi's CUDA-graph rules, enforced on a CPU by the stricter stand-in
(``moshikit.testing.cuda_graph_rules``): a replay runs what was captured, so anything a
session changes after the capture must reach a fresh capture."""

from __future__ import annotations

import numpy as np
import pytest

from moshikit.backends.base import SamplingConfig
from moshikit.synthetic import lm as synthetic_lm
from moshikit.testing import cuda_graph_rules

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = SamplingConfig(temp=0.0, temp_text=0.0)
HOT = SamplingConfig(temp=1.0, temp_text=1.0, top_k=250, seed=7)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return synthetic_lm.write_moshi_repo(tmp_path_factory.mktemp("lm") / "moshiko-pytorch", seed=0)


def _run(lm, codes: np.ndarray) -> np.ndarray:
    lm.reset(codes.shape[1])
    return np.stack([lm.step(c) for c in codes][1:])


def _codes(steps: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 2048, (steps, 1, 8))


def test_the_stand_in_freezes_what_a_capture_read(repo, monkeypatch):
    """The stand-in itself: a depth step captured at one temperature replays that temperature,
    and says so (``stale``), whatever the attribute says now."""
    from moshikit.backends import torch_lm

    graphs = cuda_graph_rules.enforce(monkeypatch)
    lm = torch_lm.load(repo, device="cpu", sampling=HOT)
    _run(lm, _codes(4))
    depth = lm._gen._streaming_state.graphed_depth
    assert depth.captures == 1
    lm._gen.temp = 0.0  # behind the backend's back: the capture keeps 1.0
    lm.step(_codes(1)[0])
    assert depth.stale == {"temp"} and lm._gen.temp == 0.0
    assert graphs.instances


def test_serve_sampling_reaches_the_graphed_audio_step(repo, monkeypatch):
    """serve --batch 1 keeps one LMGen and sets each session's sampling on it: the next
    session must sample audio as a model loaded with that setting (a fresh capture of the
    depth step), not as the first session did."""
    from moshikit.backends import torch_lm

    cuda_graph_rules.enforce(monkeypatch)
    codes = _codes()
    greedy = _run(torch_lm.load(repo, device="cpu", sampling=GREEDY), codes)
    hot_alone = _run(torch_lm.load(repo, device="cpu", sampling=HOT), codes)
    assert not np.array_equal(greedy[:, :, 1:], hot_alone[:, :, 1:])  # audio rows differ

    lm = torch_lm.load(repo, device="cpu", sampling=HOT)
    np.testing.assert_array_equal(_run(lm, codes), hot_alone)  # session 1 captures at HOT
    lm.set_sampling(GREEDY)
    second = _run(lm, codes)
    depth = lm._gen._streaming_state.graphed_depth
    assert not depth.stale, f"the depth step replayed the first session's {sorted(depth.stale)}"
    np.testing.assert_array_equal(second, greedy)  # audio rows included
    lm.set_sampling(HOT)
    np.testing.assert_array_equal(_run(lm, codes), hot_alone)


def test_same_sampling_keeps_the_capture(repo, monkeypatch):
    """A session that keeps the sampling (and a reset) keeps the captured graphs: no capture is paid again."""
    from moshikit.backends import torch_lm

    cuda_graph_rules.enforce(monkeypatch)
    lm = torch_lm.load(repo, device="cpu", sampling=GREEDY)
    _run(lm, _codes(4))
    state = lm._gen._streaming_state
    lm.set_sampling(GREEDY)
    _run(lm, _codes(4))
    assert lm._gen._streaming_state is state
    assert state.graphed_depth.captures == 1 and state.graphed_main.captures == 1
