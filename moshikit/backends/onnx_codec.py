"""Mimi on a CPU through ONNX Runtime: the fastest CPU codec measured (issue #7).

Both halves of the codec run as streaming graphs (``mimi_graph``): the encoder graph
takes audio and its state and returns codes (quantizer included), the decoder graph
takes codes (any number of codebooks) and its state and returns audio. Whole-file calls
are streams of ``CHUNK_FRAMES``-frame calls, so one graph serves files, chunked encoding
and 80 ms live frames, memory stays flat on long files, and chunked equals whole-file.

The graphs are exported with PyTorch's tracing exporter from moshi's own modules
(a few seconds, once per weights, codebook count, library versions and wiring) and kept
under ``<moshikit cache>/onnx/<key>/``. moshi's ``MimiModel`` is still loaded: it holds
the weights and is the fallback (with a warning) for any model this wiring does not
support.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from . import mimi_graph, onnx_int8
from .torch_codec import TorchCodec

#: Bumped when what is exported changes, so stale cached graphs are never reused.
EXPORT_VERSION = 4
OPSET = 17
#: Frames per graph call for whole-file work (2 s: activations stay in cache; measured
#: faster than 10 s chunks or whole files, see docs/benchmarks.md).
CHUNK_FRAMES = 25
#: ``decode_step`` calls of at most this many frames are live frames (see ``prepare_live``).
LIVE_FRAMES = 2
#: The int8 live decoder is refused below this agreement with the fp32 graph (measured ~69 dB).
LIVE_MIN_SNR_DB = 40.0


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
    """A hash of the weights a graph holds and of the versions that shape its export."""
    import onnxruntime
    import torch

    h = hashlib.sha256(f"v{EXPORT_VERSION}|opset{OPSET}|torch{torch.__version__}|ort{onnxruntime.__version__}".encode())
    wiring = sorted(Path(mimi_graph.__file__).parent.glob("*.py")) + [Path(onnx_int8.__file__)]
    for source in wiring:  # the wiring itself (every file of the graph package): an edit re-exports
        h.update(source.read_bytes())
    for part in module.key_parts():
        if part is None:
            continue
        for name, t in part.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().to("cpu", copy=True).contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _export(module, example, path: Path) -> None:
    """Export a streaming module (x, offset, *state) -> (y, *state) with free batch and time."""
    import warnings

    import torch

    from ..audio import atomic_path

    specs = module.specs
    names_in = ["x", "offset", *(f"s{i}" for i in range(len(specs)))]
    names_out = ["y", *(f"n{i}" for i in range(len(specs)))]
    axes = {"x": {0: "batch", 1: "channels", 2: "time"}, "offset": {0: "batch"}, "y": {0: "batch", 2: "time_out"}}
    for i, spec in enumerate(specs):
        axes[f"s{i}"] = {0: "batch"}
        axes[f"n{i}"] = {0: "batch"} if spec.ring_axis is None else {0: "batch", 1 + spec.ring_axis: "steps"}
    state = [torch.zeros(1, *s.shape) for s in specs]
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python asserts on shapes
        torch.onnx.export(module, (example, torch.zeros(1, dtype=torch.long), *state), str(tmp),
                          input_names=names_in, output_names=names_out, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or _threads()
    opts.inter_op_num_threads = 1
    # Worker threads spin between the kernels of a call (a graph is hundreds of small
    # kernels: waking a sleeping thread for each costs more than the kernel, most of all
    # after the CPU idled between live frames: measured 0.8x the time per streaming frame)
    # and stop spinning when the call returns. Left spinning after a call (ORT's default)
    # they steal the CPU from the next graph or the LM: measured 1.8x slower.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def graph(module, example, name: str) -> Path:
    """The ONNX file of ``module``, exported on first use and cached by weights."""
    path = cache_root() / _graph_key(module) / f"{name}.onnx"
    if not path.exists():
        import sys

        from ..atomic import check_room

        # the graph holds the weights: a cache that cannot take them fails now, not after the export
        check_room(path, sum(t.numel() * t.element_size() for t in module.state_dict().values()))
        print(f"moshikit: exporting the onnx codec's {name} graph to {path.parent} (first use of these weights)",
              file=sys.stderr, flush=True)
        _export(module, example, path)
    return path


class _Stream:
    """One graph and the state of one batch of streams through it."""

    def __init__(self, session, specs, batch: int) -> None:
        self.session = session
        self.state = mimi_graph.StreamState(specs, batch, steps_per_frame=2)

    def run(self, x: np.ndarray, frames: int, per_frame: int, session=None) -> np.ndarray:
        """``x`` [B, C, frames * per_frame] through the graph (or ``session``, a graph with
        the same state), CHUNK_FRAMES frames per call (any chunking gives the same result,
        up to float rounding)."""
        session = session or self.session
        outs = []
        for f in range(0, frames, CHUNK_FRAMES):
            n = min(CHUNK_FRAMES, frames - f)
            y, *state = session.run(None, {"x": x[..., f * per_frame : (f + n) * per_frame], **self.state.feeds()})
            self.state.advance(state, n)
            outs.append(y)
        return outs[0] if len(outs) == 1 else np.concatenate(outs, -1)


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
        import threading

        import torch

        m = self._mimi
        self._lock = threading.Lock()
        self._enc = self._dec = self._enc_one_thread = self._live = None
        self._streams: tuple[_Stream, _Stream] | None = None
        try:
            enc, dec = mimi_graph.stream_encoder(m), mimi_graph.stream_decoder(m)
            self._enc_path = graph(enc, torch.zeros(1, 1, 2 * m.frame_size), f"encoder_k{self.info.num_codebooks}")
            self._enc = (_session(self._enc_path), enc.specs)
            self._dec_path = graph(dec, torch.zeros(1, self.info.num_codebooks, 2, dtype=torch.long), "decoder")
            self._dec = (_session(self._dec_path), dec.specs)
        except Exception as exc:  # noqa: BLE001 - an unsupported model or exporter failure: keep torch
            import warnings

            warnings.warn(f"onnx codec: running moshi's PyTorch Mimi instead ({type(exc).__name__}: {exc})"[:300],
                          stacklevel=2)
            self._enc = self._dec = None

    # -- whole arrays: a fresh stream each call

    def _frames(self, pcm: np.ndarray) -> tuple[np.ndarray, int]:
        frame = self.info.frame_size
        x = np.ascontiguousarray(pcm, dtype=np.float32)
        pad = (-x.shape[-1]) % frame
        if pad:
            x = np.pad(x, ((0, 0), (0, pad)))
        return x[:, None, :], x.shape[-1] // frame

    @staticmethod
    def _ints(codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes, dtype=np.int64)

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        if self._enc is None:
            return super().encode(pcm)
        x, frames = self._frames(pcm)
        if frames == 0:
            return np.zeros((x.shape[0], self.info.num_codebooks, 0), dtype=np.int64)
        return _Stream(*self._enc, x.shape[0]).run(x, frames, self.info.frame_size)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self._dec is None:
            return super().decode(codes)
        if codes.shape[-1] == 0:
            return np.zeros((codes.shape[0], 0), dtype=np.float32)
        return _Stream(*self._dec, codes.shape[0]).run(self._ints(codes), codes.shape[-1], 1)[:, 0]

    # -- streaming: state carried between calls

    def reset_stream(self, batch_size: int = 1) -> None:
        if self._enc is None:
            return super().reset_stream(batch_size)
        self._streams = (_Stream(*self._enc, batch_size), _Stream(*self._dec, batch_size))

    def reset_slots(self, mask: np.ndarray) -> None:
        if self._enc is None:
            return super().reset_slots(mask)
        assert self._streams is not None, "call reset_stream() first"
        for s in self._streams:
            s.state.reset(mask)

    def encode_step(self, pcm: np.ndarray) -> np.ndarray:
        if self._enc is None:
            return super().encode_step(pcm)
        assert self._streams is not None, "call reset_stream() first"
        x, frames = self._frames(pcm)
        return self._streams[0].run(x, frames, self.info.frame_size)

    def decode_step(self, codes: np.ndarray) -> np.ndarray:
        if self._dec is None:
            return super().decode_step(codes)
        assert self._streams is not None, "call reset_stream() first"
        live = self._live if codes.shape[-1] <= LIVE_FRAMES else None
        return self._streams[1].run(self._ints(codes), codes.shape[-1], 1, live)[:, 0]

    def prepare_live(self) -> None:
        """Live loops (chat, serve) call this once: from then on ``decode_step`` calls of
        at most ``LIVE_FRAMES`` frames run the int8 decoder graph (``onnx_int8``: 0.7x the
        time, output within ~69 dB SNR of the fp32 graph; both share the stream state).
        Larger calls (``moshikit decode``'s chunks, ``decode``) stay fp32. The graph is
        written once beside the fp32 one; it is used only if this CPU runs it and it agrees
        with the fp32 graph on a probe (else a warning, and fp32). ``MOSHIKIT_ONNX_INT8=0``
        keeps live decoding in fp32."""
        if self._dec is None or self._live is not None or os.environ.get("MOSHIKIT_ONNX_INT8", "1") == "0":
            return
        path = self._dec_path.with_name("decoder_int8.onnx")
        try:
            if not path.exists():
                import sys

                print("moshikit: writing the onnx codec's int8 live decoder (first use of these weights)",
                      file=sys.stderr, flush=True)
                onnx_int8.write_int8(self._dec_path, path)
            session = _session(path)
            snr = _agreement(self._dec, session, self.info)
            if snr < LIVE_MIN_SNR_DB:
                raise RuntimeError(f"output {snr:.0f} dB from the fp32 graph's")
        except Exception as exc:  # noqa: BLE001 - an ORT without 8-bit kernels, a CPU that disagrees
            import warnings

            warnings.warn(f"onnx codec: live decoding stays fp32 ({type(exc).__name__}: {exc})"[:300], stacklevel=2)
            return
        self._live = session

    def open_encoder(self, batch: int = 1, *, single_thread: bool = False):
        """An encoder with a stream state of its own. ``single_thread`` encoders share one
        one-thread session and can run at the same time from several threads (measured
        1.2x the throughput of one two-thread stream on 2 cores: small kernels scale
        badly across threads, whole streams scale well)."""
        if self._enc is None:
            return super().open_encoder()
        session = self._enc[0]
        if single_thread:
            with self._lock:  # encoding threads open their encoders at the same time
                if self._enc_one_thread is None:
                    self._enc_one_thread = _session(self._enc_path, threads=1)
            session = self._enc_one_thread
        return _OwnEncoder(self, _Stream(session, self._enc[1], batch))

    @property
    def parallel_streams(self) -> int:
        """How many ``open_encoder(single_thread=True)`` streams pay off at once (one per core)."""
        return 1 if self._enc is None else min(16, _threads())


def _agreement(fp32: tuple, session, info) -> float:
    """SNR (dB) of ``session``'s decoding against the fp32 graph's, on a few random frames."""
    codes = np.random.default_rng(0).integers(0, info.cardinality, (1, info.num_codebooks, 4), dtype=np.int64)
    want = _Stream(*fp32, 1).run(codes, 4, 1)
    got = _Stream(session, fp32[1], 1).run(codes, 4, 1)
    return float(10 * np.log10(np.sum(want**2) / max(float(np.sum((want - got) ** 2)), 1e-30)))


class _OwnEncoder:
    """One stream's encoder with a state of its own (what ``TorchCodec.open_encoder`` gives)."""

    def __init__(self, codec: OnnxCodec, stream: _Stream) -> None:
        self._codec, self._stream = codec, stream

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        x, frames = self._codec._frames(pcm)
        return self._stream.run(x, frames, self._codec.info.frame_size)


class _OwnDecoder:
    """A batch of decoder streams with a state of their own (``stream_decoders``)."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream

    def decode(self, codes: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """``codes`` [B, K, n] -> pcm [B, n * frame_size] float32, continuing the streams. With
        ``active`` (bool [B]), as moshi's Mimi under an exec mask: the other rows' states stay
        where they were (their output is to be ignored)."""
        state = self._stream.state
        still = np.zeros(0, bool) if active is None else ~np.asarray(active, dtype=bool)
        kept = ([a[still].copy() for a in state.arrays], state.offset[still].copy()) if still.any() else None
        pcm = self._stream.run(OnnxCodec._ints(codes), codes.shape[-1], 1)[:, 0]
        if kept is not None:
            for a, before in zip(state.arrays, kept[0]):
                a[still] = before
            state.offset[still] = kept[1]
        return pcm

    def reset(self, mask: np.ndarray) -> None:
        """Restart the streams where ``mask`` (bool [B]) is true."""
        self._stream.state.reset(mask)


def stream_decoders(mimi, num_codebooks: int):
    """``open(batch)`` -> a decoder of ``batch`` fresh streams (``decode(codes [B, K, n])``) of a
    loaded moshi ``MimiModel`` in float32, on one onnx session (the codec's decoder graph, cached
    by weights): Kyutai TTS on the CPU engine decodes its frames with it. None, with a warning,
    where the graph cannot be made or run here (the caller keeps moshi's Mimi)."""
    import torch

    try:
        if any(p.dtype != torch.float32 for p in mimi.parameters()):
            raise ValueError("Mimi's weights are not float32")
        dec = mimi_graph.stream_decoder(mimi)
        session = _session(graph(dec, torch.zeros(1, num_codebooks, 2, dtype=torch.long), "decoder"))
    except Exception as exc:  # noqa: BLE001 - an unsupported model, an exporter or runtime failure
        import warnings

        warnings.warn(f"onnx codec: decoding with moshi's PyTorch Mimi ({type(exc).__name__}: {exc})"[:300],
                      stacklevel=2)
        return None
    return lambda batch: _OwnDecoder(_Stream(session, dec.specs, batch))


def load(weights: Path, *, device: str | None = None, num_codebooks: int = 8) -> OnnxCodec:
    return OnnxCodec(weights, device=device, num_codebooks=num_codebooks)
