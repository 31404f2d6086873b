"""Tensors of synthetic checkpoints, produced a piece at a time and written to safetensors files
in constant memory: from a dict of real tensors (``DictSource``) or, for full-size models, windows
of one shared pool of random values (``PoolSource``); ``write_safetensors`` streams them to disk."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

ST_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
POOL_SIZE = 4_194_301  # a prime, so the pool's period never lines up with a row length


class TensorSource(Protocol):
    """Gives flat element ranges of named tensors, as torch tensors of the output dtype."""

    shapes: dict[str, tuple[int, ...]]

    def read(self, name: str, start: int, count: int, dtype) -> "object": ...


class DictSource(TensorSource):
    def __init__(self, tensors: dict) -> None:
        self._t = {k: v.reshape(-1) for k, v in tensors.items()}
        self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def read(self, name, start, count, dtype):
        return self._t[name][start : start + count].to(dtype)


class PoolSource(TensorSource):
    """Cheap deterministic "random" tensors for the full model.

    Every tensor is a window of one pool of standard-normal values (a prime
    length, started at an offset hashed from the tensor's name), scaled like
    moshi's init (std ``1/sqrt(fan_in)``); RMSNorm scales (``alpha``) are ones.
    Producing 7.7 B values costs about as much as copying them.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
        import torch

        self.shapes = shapes
        self._seed = seed
        rng = np.random.default_rng(seed)
        self._pool = torch.from_numpy(rng.standard_normal(POOL_SIZE, dtype=np.float32))

    def _offset(self, name: str) -> int:
        h = hashlib.sha256(f"{self._seed}:{name}".encode()).digest()
        return int.from_bytes(h[:8], "little") % POOL_SIZE

    def read(self, name, start, count, dtype):
        import torch

        shape = self.shapes[name]
        if name.endswith(".alpha"):
            return torch.ones(count, dtype=dtype)
        scale = 1.0 / float(np.sqrt(shape[-1] if len(shape) > 1 else 1))
        pos = (self._offset(name) + start) % POOL_SIZE
        parts, left = [], count
        while left > 0:
            n = min(left, POOL_SIZE - pos)
            parts.append(self._pool[pos : pos + n])
            left -= n
            pos = 0
        flat = parts[0] if len(parts) == 1 else torch.cat(parts)
        return (flat * scale).to(dtype)


# --------------------------------------------------------------------------- safetensors writer


@dataclass(frozen=True)
class TensorItem:
    name: str
    shape: tuple[int, ...]
    produce: Callable[[int, int], "object"]  # (start, count) -> 1-D torch tensor of the file dtype


def write_safetensors(path: Path, items: Iterable[TensorItem], dtype: str, metadata: dict,
                       chunk_elems: int = 1 << 24) -> None:
    """Write a safetensors file tensor by tensor, a chunk at a time (constant memory)."""
    import torch

    items = list(items)
    tdtype = getattr(torch, dtype)
    esize = torch.empty((), dtype=tdtype).element_size()
    header: dict = {"__metadata__": metadata}
    offset = 0
    for it in items:
        n = int(np.prod(it.shape)) if it.shape else 1
        header[it.name] = {"dtype": ST_DTYPES[dtype], "shape": list(it.shape),
                           "data_offsets": [offset, offset + n * esize]}
        offset += n * esize
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for it in items:
            n = int(np.prod(it.shape)) if it.shape else 1
            for start in range(0, n, chunk_elems):
                t = it.produce(start, min(chunk_elems, n - start)).contiguous()
                assert t.dtype == tdtype
                f.write(t.view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)
