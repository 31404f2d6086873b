"""The stricter CPU stand-in for moshi's CUDA graphs: what a real capture and replay do to
a caller (one set of output buffers, a frozen capture, no host reads while capturing)."""

import pytest

from moshikit.testing.cuda_graph_rules import DeviceWaitInCapture, StrictGraphed


class Scale:
    def __init__(self) -> None:
        self.factor = 2.0

    def step(self, x):
        return x * self.factor, x + 1


def test_replays_hand_back_the_captured_buffers():
    import torch

    g = StrictGraphed(Scale().step)
    first = g(torch.ones(3))  # warm-up: a plain call, its own tensors
    captured = g(torch.full((3,), 2.0))
    replayed = g(torch.full((3,), 5.0))
    assert replayed is captured and replayed[0] is captured[0]
    assert torch.equal(captured[0], torch.full((3,), 10.0))  # overwritten in place, as on CUDA
    assert torch.equal(first[0], torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="had shape"):
        g(torch.ones(4))
    assert g.captures == 1 and g.calls == 4


def test_a_replay_runs_the_capture_and_reset_captures_again():
    import torch

    s = Scale()
    g = StrictGraphed(s.step, warmup_steps=0)
    g(torch.ones(2))
    s.factor = 3.0
    assert torch.equal(g(torch.ones(2))[0], torch.full((2,), 2.0)) and g.stale == {"factor"}
    assert s.factor == 3.0  # put back after the replay
    g.reset()
    assert torch.equal(g(torch.ones(2))[0], torch.full((2,), 3.0)) and g.captures == 2


@pytest.mark.parametrize("wait", [lambda x: x.sum().item(), lambda x: bool(x.any()), lambda x: x.cpu(),
                                  lambda x: x[x > 0], lambda x: x.nonzero(), lambda x: x.tolist()],
                         ids=["item", "bool", "cpu", "bool-mask", "nonzero", "tolist"])
def test_capture_refuses_to_wait_on_the_device(wait):
    import torch

    g = StrictGraphed(wait, warmup_steps=1)
    g(torch.ones(2))  # the warm-up runs plainly, host reads allowed
    with pytest.raises(DeviceWaitInCapture, match="not permitted when stream is capturing"):
        g(torch.ones(2))


def test_graphs_called_inside_a_capture_run_plainly():
    import torch

    inner = StrictGraphed(lambda x: x + 1, warmup_steps=0)
    outer = StrictGraphed(lambda x: inner(x) * 2, warmup_steps=0)
    outer(torch.ones(1))
    outer(torch.ones(1))
    assert outer.captures == 1 and inner.captures == 0
