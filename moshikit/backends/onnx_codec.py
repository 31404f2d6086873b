"""Mimi on a CPU with its convolutions in ONNX Runtime and the rest in moshi's PyTorch.

Mimi's SEANet encoder and decoder (strided 1-D convolutions at up to 24 kHz) cost
most of the codec's arithmetic; ONNX Runtime's CPU kernels run them clearly faster
than PyTorch's on x86. The transformers, the resampling convolutions and the
quantizer stay moshi's own ``MimiModel`` (under ``inference_mode``), so only the
convolution stacks differ from the reference, and only by float rounding.

The two convolution stacks are exported once per weights and library versions
(about 5 s) and kept under ``<moshikit cache>/onnx/<key>/``; later loads read them
back in a fraction of a second. Streaming calls (``encode_step``/``decode_step``)
run moshi's streaming modules exactly as the torch backend does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from .torch_codec import TorchCodec

#: Bumped when what is exported changes, so stale cached graphs are never reused.
EXPORT_VERSION = 1
OPSET = 17


def probe() -> str:
    import moshi  # noqa: F401
    import onnxruntime
    import torch  # noqa: F401

    return f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}"


def cache_root() -> Path:
    base = os.environ.get("MOSHIKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "moshikit")
    return Path(base) / "onnx"


def _graph_key(module) -> str:
    """A hash of a module's weights and of the versions that shape its export."""
    import onnxruntime
    import torch

    h = hashlib.sha256(f"v{EXPORT_VERSION}|opset{OPSET}|torch{torch.__version__}|ort{onnxruntime.__version__}".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu", copy=True).contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _export(module, example, path: Path) -> None:
    """Export ``module`` ([B, C, T] -> [B, C', T']) with free batch and time axes, atomically."""
    import warnings

    import torch

    from ..audio import atomic_path

    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python asserts on shapes
        torch.onnx.export(
            module, (example,), str(tmp), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch", 2: "time"}, "y": {0: "batch", 2: "time_out"}},
            opset_version=OPSET, dynamo=False,
        )


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = _threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def graph(module, example, name: str):
    """An ONNX Runtime session for ``module``, exported on first use and cached by weights."""
    path = cache_root() / _graph_key(module) / f"{name}.onnx"
    if not path.exists():
        _export(module, example, path)
    return _session(path)


class OnnxCodec(TorchCodec):
    batch_gain = False  # CPU only: batches gain little from one big call (see TorchCodec)

    def __init__(self, weights: Path, *, device: str | None = None, num_codebooks: int = 8) -> None:
        if device not in (None, "auto", "cpu"):
            from ..errors import BackendError

            raise BackendError(f"the onnx backend runs on the cpu only, not {device!r}",
                               hint="use --backend torch for CUDA or MPS")
        super().__init__(weights, device="cpu", num_codebooks=num_codebooks)
        self.batch_gain = False
        self.info = dataclasses.replace(self.info, backend="onnx")
        import torch

        m = self._mimi
        self._enc = graph(m.encoder, torch.zeros(1, 1, 2 * m.frame_size), "seanet_encoder")
        self._dec = graph(m.decoder, torch.zeros(1, m.decoder.dimension, 4), "seanet_decoder")

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        self._end_stream()
        torch, m = self._torch, self._mimi
        frame = self.info.frame_size
        x = np.ascontiguousarray(pcm, dtype=np.float32)
        if x.shape[-1] == 0:
            return np.zeros((x.shape[0], self.info.num_codebooks, 0), dtype=np.int64)
        pad = (-x.shape[-1]) % frame
        if pad:
            x = np.pad(x, ((0, 0), (0, pad)))
        emb = self._enc.run(None, {"x": x[:, None, :]})[0]
        with torch.inference_mode():
            e = torch.from_numpy(emb)
            if m.encoder_transformer is not None:
                (e,) = m.encoder_transformer(e)
            return m.quantizer.encode(m._to_framerate(e)).numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._end_stream()
        torch, m = self._torch, self._mimi
        with torch.inference_mode():
            emb = m._to_encoder_framerate(m.decode_latent(self._codes(codes)))
            if m.decoder_transformer is not None:
                (emb,) = m.decoder_transformer(emb)
            emb = np.ascontiguousarray(emb.float().numpy())
        return self._dec.run(None, {"x": emb})[0][:, 0]


def load(weights: Path, *, device: str | None = None, num_codebooks: int = 8) -> OnnxCodec:
    return OnnxCodec(weights, device=device, num_codebooks=num_codebooks)
