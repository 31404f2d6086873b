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
EXPORT_VERSION = 3
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
    parts = module.key_parts() if hasattr(module, "key_parts") else [module]
    for part in parts:
        if part is None:
            continue
        for name, t in part.state_dict().items():
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


def _export_dynamo(module, example, path: Path) -> None:
    """Export through ``torch.export`` (needs onnxscript): the tracing exporter bakes the
    time length into the transformers' reshapes, torch.export keeps it symbolic."""
    import contextlib
    import io
    import warnings

    import torch

    from ..audio import atomic_path

    time_dim = torch.export.Dim("time", min=2, max=1 << 16)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(tmp), input_names=["x"], output_names=["y"], dynamo=True,
                          dynamic_shapes={"x": {2: time_dim}}, opset_version=18)


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = _threads()
    opts.inter_op_num_threads = 1
    # Idle ORT threads busy-wait by default: on a few cores that steals the CPU from
    # the PyTorch half of the codec (and from everything else in the process).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def graph(module, example, name: str, *, dynamo: bool = False):
    """An ONNX Runtime session for ``module``, exported on first use and cached by weights."""
    path = cache_root() / _graph_key(module) / f"{name}.onnx"
    if not path.exists():
        (_export_dynamo if dynamo else _export)(module, example, path)
    return _session(path)


def _tails(m):
    """The parts between the SEANet stacks and the quantizer, as plain modules."""
    import torch

    class EncoderTail(torch.nn.Module):  # encoder transformer, then 25 -> 12.5 Hz
        def __init__(self, mimi):
            super().__init__()
            self.mimi = mimi

        def forward(self, x):
            if self.mimi.encoder_transformer is not None:
                (x,) = self.mimi.encoder_transformer(x)
            return self.mimi._to_framerate(x)

        def key_parts(self):  # what the graph holds (not the whole Mimi and its codebooks)
            return [self.mimi.encoder_transformer, getattr(self.mimi, "downsample", None)]

    class DecoderHead(torch.nn.Module):  # 12.5 -> 25 Hz, then the decoder transformer
        def __init__(self, mimi):
            super().__init__()
            self.mimi = mimi

        def forward(self, x):
            x = self.mimi._to_encoder_framerate(x)
            if self.mimi.decoder_transformer is not None:
                (x,) = self.mimi.decoder_transformer(x)
            return x

        def key_parts(self):
            return [getattr(self.mimi, "upsample", None), self.mimi.decoder_transformer]

    return EncoderTail(m).eval(), DecoderHead(m).eval()


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
        # The transformers: moshi's non-streaming attention is slow on a CPU (measured
        # ~8x slower than the same graph in ONNX Runtime). Without onnxscript, or if the
        # export fails, they stay in PyTorch.
        self._tail_mod, self._head_mod = _tails(m)
        self._tail = self._head = None
        try:
            dim = m.decoder.dimension
            self._tail = graph(self._tail_mod, torch.zeros(1, dim, 8), "encoder_transformer", dynamo=True)
            self._head = graph(self._head_mod, torch.zeros(1, dim, 4), "decoder_transformer", dynamo=True)
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: keep torch
            import warnings

            warnings.warn(f"onnx codec: transformers stay in PyTorch ({type(exc).__name__}: {exc})"[:300],
                          stacklevel=2)

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
            if self._tail is not None:
                e = torch.from_numpy(_rows(self._tail, emb))
            else:
                e = self._tail_mod(torch.from_numpy(emb))
            return m.quantizer.encode(e).numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._end_stream()
        torch, m = self._torch, self._mimi
        with torch.inference_mode():
            emb = m.decode_latent(self._codes(codes))
            if self._head is not None:
                emb = _rows(self._head, emb.float().numpy())
            else:
                emb = np.ascontiguousarray(self._head_mod(emb).float().numpy())
        return self._dec.run(None, {"x": emb})[0][:, 0]


def _rows(session, x: np.ndarray) -> np.ndarray:
    """Run a batch-1 graph (torch.export fixes the transformers' batch) row by row."""
    return np.concatenate([session.run(None, {"x": np.ascontiguousarray(x[i : i + 1])})[0]
                           for i in range(x.shape[0])])


def load(weights: Path, *, device: str | None = None, num_codebooks: int = 8) -> OnnxCodec:
    return OnnxCodec(weights, device=device, num_codebooks=num_codebooks)
