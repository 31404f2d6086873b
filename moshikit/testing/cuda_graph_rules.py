"""moshi's CUDA-graph rules, enforced on any device (for tests and the GPU proof's dry run).

On CUDA, moshi's streaming modules run through ``moshi.utils.compile.CUDAGraphed``: the
first call runs plainly (warm-up), the next one is captured, and every later call replays
the capture. A CPU test never sees what that implies, because moshi disables the wrapper
there. ``StrictGraphed`` keeps the rules on every device without capturing anything:

- **shapes and values**: every call after the capture must pass tensors of the captured
  call's shapes and the same non-tensor values (else moshi's ``ValueError``);
- **one set of buffers**: the captured call's inputs are copies the graph reads, and every
  replay hands back the *same* output tensors, overwritten in place (a caller that keeps an
  output past the next call sees it change, as on CUDA);
- **the capture is frozen**: a replay runs what was captured, Python included: the plain
  attributes (numbers, strings, flags) of the wrapped method's object or module are put back
  to their values at capture for the replay (``stale`` records those that had changed since:
  e.g. an ``LMGen`` whose ``temp`` changed after its depth step was captured);
- **no waiting on the device during capture**: reading a tensor on the host (``.item()``,
  ``bool(t)``, ``.cpu()``, ``.numpy()``, ``.tolist()``, ``nonzero``, boolean-mask indexing...)
  raises ``DeviceWaitInCapture``, as CUDA raises "operation not permitted when stream is
  capturing".

``captures`` counts the captures of one wrapper (``reset()`` makes the next call capture
again), so a test can tell a kept graph from a re-captured one. What the stand-in does not
do: Python side effects inside the wrapped function still happen on every replay (a real
replay runs no Python at all). ``enforce(monkeypatch)`` puts it where moshi's Mimi and LMGen
build their graphs.
"""

from __future__ import annotations

#: Tensor operations that make the host wait for the device (a sync), refused while capturing.
DEVICE_WAITS = frozenset({"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__",
                          "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "equal",
                          "allclose", "__array__"})
PLAIN = (bool, int, float, str, type(None))


class DeviceWaitInCapture(RuntimeError):
    """What CUDA raises when captured work would wait on the device."""


def _capture_guard():
    from torch.overrides import TorchFunctionMode

    class NoDeviceWaits(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in DEVICE_WAITS or (name in ("__getitem__", "__setitem__", "index_put_", "index_put")
                                        and _bool_index(args)):
                raise DeviceWaitInCapture(f"operation not permitted when stream is capturing: {name} waits on the "
                                          "device (a CUDA graph capture must not read tensors on the host)")
            return func(*args, **(kwargs or {}))

    return NoDeviceWaits()


def _bool_index(args) -> bool:
    import torch

    idx = args[1] if len(args) > 1 else None
    items = idx if isinstance(idx, (tuple, list)) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _owner(func):
    """The object whose plain attributes a capture freezes: a bound method's object, or the module."""
    owner = getattr(func, "__self__", None)
    return func if owner is None else owner


def _plain_attrs(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if isinstance(v, PLAIN)} if hasattr(obj, "__dict__") else {}


class StrictGraphed:
    """A stand-in for moshi's ``CUDAGraphed`` that keeps a CUDA graph's rules on every device."""

    instances: list["StrictGraphed"] = []
    _capturing = 0  # moshi runs a graphed function called inside another one's capture plainly

    def __init__(self, func, warmup_steps: int = 1, disable: bool = False) -> None:
        self.func = func
        self.warmup_steps = warmup_steps
        self.disable = False  # graphed, as on CUDA
        self.captured: tuple | None = None  # the captured call's shapes and values
        self.calls = 0
        self.captures = 0
        self.stale: set[str] = set()
        self._args: tuple | None = None
        self._output = None
        self._frozen: dict = {}
        StrictGraphed.instances.append(self)

    def reset(self, warmup_steps: int = 0) -> None:
        self.warmup_steps = warmup_steps
        self.captured = self._args = self._output = None
        self._frozen = {}

    @staticmethod
    def _shapes(args: tuple) -> tuple:
        import torch

        return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else ("value", a) for a in args)

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise RuntimeError("Named arguments not supported for now.")
        if StrictGraphed._capturing:
            return self.func(*args)
        self.calls += 1
        if self.captured is None:
            if self.warmup_steps > 0:
                self.warmup_steps -= 1
                return self.func(*args)
            return self._capture(args)
        return self._replay(args)

    def _capture(self, args: tuple):
        import torch

        self.captured = self._shapes(args)
        self._args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        self._frozen = _plain_attrs(_owner(self.func))
        StrictGraphed._capturing += 1
        try:
            with _capture_guard():
                self._output = self.func(*self._args)
        finally:
            StrictGraphed._capturing -= 1
        self.captures += 1
        return self._output

    def _replay(self, args: tuple):
        import torch

        shapes = self._shapes(args)
        if shapes != self.captured:
            raise ValueError(f"Argument had shape {self.captured}, but got shape {shapes}. When using CUDAGraph, "
                             "every call must be done with exactly the same shapes.")
        for target, source in zip(self._args, args):
            if isinstance(target, torch.Tensor):
                target.copy_(source)
        owner = _owner(self.func)
        now = _plain_attrs(owner)
        changed = {k: now[k] for k, v in self._frozen.items() if k in now and now[k] != v}
        self.stale |= set(changed)
        for k in changed:
            setattr(owner, k, self._frozen[k])
        StrictGraphed._capturing += 1
        try:
            out = self.func(*self._args)
        finally:
            StrictGraphed._capturing -= 1
            for k, v in changed.items():
                setattr(owner, k, v)
        _copy_into(self._output, out)
        return self._output


def _copy_into(target, source) -> None:
    """Write a replay's result into the captured output tensors (the buffers a graph owns)."""
    import torch

    if isinstance(target, torch.Tensor):
        target.copy_(source)
    elif isinstance(target, (tuple, list)):
        for t, s in zip(target, source):
            _copy_into(t, s)


def enforce(monkeypatch) -> type[StrictGraphed]:
    """Make moshi's Mimi and LMGen (built after this call) keep CUDA-graph rules here."""
    from moshi.models import compression, lm

    StrictGraphed.instances = []
    monkeypatch.setattr(compression, "CUDAGraphed", StrictGraphed)
    monkeypatch.setattr(lm, "CUDAGraphed", StrictGraphed)
    return StrictGraphed
