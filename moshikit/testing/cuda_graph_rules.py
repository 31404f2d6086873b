"""moshi's CUDA-graph rules, enforced on any device (for tests and the GPU proof's dry run).

On CUDA, moshi's streaming modules run through ``moshi.utils.compile.CUDAGraphed``: the
first call runs plainly (warm-up), the next one is captured, and every later call must
pass tensors of the captured call's shapes, else ``ValueError: Argument #0 had shape ...``.
On a CPU moshi disables the wrapper, so a CPU test never sees those rules.
``StrictGraphed`` keeps the rules (and raises the same error) without capturing anything;
``enforce(monkeypatch)`` puts it where moshi's Mimi and LMGen build their graphs.
"""

from __future__ import annotations


class StrictGraphed:
    """A stand-in for moshi's ``CUDAGraphed`` that checks its shape rules on every device."""

    instances: list["StrictGraphed"] = []

    def __init__(self, func, warmup_steps: int = 1, disable: bool = False) -> None:
        self.func = func
        self.warmup_steps = warmup_steps
        self.disable = False  # graphed, as on CUDA
        self.captured: tuple | None = None
        self.calls = 0
        StrictGraphed.instances.append(self)

    def reset(self, warmup_steps: int = 0) -> None:
        self.warmup_steps = warmup_steps
        self.captured = None

    @staticmethod
    def _shapes(args: tuple) -> tuple:
        import torch

        return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else ("value", a) for a in args)

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise RuntimeError("Named arguments not supported for now.")
        shapes = self._shapes(args)
        self.calls += 1
        if self.captured is None:
            if self.warmup_steps <= 0:
                self.captured = shapes
            else:
                self.warmup_steps -= 1
        elif shapes != self.captured:
            raise ValueError(f"Argument had shape {self.captured}, but got shape {shapes}. When using CUDAGraph, "
                             "every call must be done with exactly the same shapes.")
        return self.func(*args)


def enforce(monkeypatch) -> type[StrictGraphed]:
    """Make moshi's Mimi and LMGen (built after this call) keep CUDA-graph rules here."""
    from moshi.models import compression, lm

    StrictGraphed.instances = []
    monkeypatch.setattr(compression, "CUDAGraphed", StrictGraphed)
    monkeypatch.setattr(lm, "CUDAGraphed", StrictGraphed)
    return StrictGraphed
