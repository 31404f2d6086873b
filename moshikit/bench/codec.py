"""The codec stage: every Mimi backend side by side with moshi's MimiModel and rustymimi, whole
files, batches and streaming 80 ms frames."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import prepare_live
from .core import Clock, PeakMemory, Row, latency_row, measure, throughput_row


# ---------------------------------------------------------------- codec stage


@dataclass
class CodecPlan:
    backends: list[str]
    weights: str
    reference: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    seconds: list[float] = field(default_factory=lambda: [10.0])
    repeats: int = 3
    stream_frames: int = 50
    num_codebooks: int = 8
    device: str | None = None
    files: tuple[int, float] | None = None  # (count, seconds): many short files vs one long one
    notes: list[str] = field(default_factory=list)  # subjects skipped, and why (filled while running)


def _reference_subjects(plan: CodecPlan) -> list[tuple[str, object]]:
    from ..backends import registry

    subjects = []
    if registry.probe("codec", "torch")[0]:
        subjects.append(("moshi MimiModel (reference)", _MoshiReference(plan.weights, plan.device, plan.num_codebooks)))
    if registry.probe("codec", "rustymimi")[0] and plan.device in (None, "auto", "cpu"):
        subjects.append(("rustymimi Tokenizer (reference)", _RustyReference(plan.weights, plan.num_codebooks)))
    return subjects


class _MoshiReference:
    """moshi's MimiModel called directly, as its README shows."""

    def __init__(self, weights: str, device: str | None, k: int) -> None:
        from ..backends.torch_env import prepare as _prepare_torch

        _prepare_torch()
        import torch
        from moshi.models import loaders

        from ..backends.torch_codec import pick_device

        self.torch = torch
        self.device = pick_device(device)
        self.mimi = loaders.get_mimi(weights, device=self.device, num_codebooks=k)
        self._ctx = None
        self.batch_gain = True

    def encode(self, pcm):
        with self.torch.no_grad():
            return self.mimi.encode(self.torch.from_numpy(pcm).to(self.device)[:, None]).cpu().numpy()

    def decode(self, codes):
        with self.torch.no_grad():
            return self.mimi.decode(self.torch.from_numpy(codes).to(self.device)).cpu().numpy()

    def reset_stream(self, batch_size=1):
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = self.mimi.streaming(batch_size)

    encode_step = encode
    decode_step = decode

    def sync(self):
        if is_cuda(self.device):
            self.torch.cuda.synchronize()


def is_cuda(device) -> bool:
    """``cuda``, ``cuda:0``, a ``torch.device`` of type cuda."""
    return str(device).split(":")[0] == "cuda"


class _RustyReference:
    """rustymimi's Tokenizer called directly."""

    def __init__(self, weights: str, k: int) -> None:
        import rustymimi

        self.tok = rustymimi.Tokenizer(weights, num_codebooks=k)
        self.batch_gain = False

    def encode(self, pcm):
        return self.tok.encode(pcm[:, None])

    def decode(self, codes):
        return self.tok.decode(codes.astype(np.uint32))

    def reset_stream(self, batch_size=1):
        self.tok.reset()

    def encode_step(self, pcm):
        return self.tok.encode_step(pcm[:, None])

    def decode_step(self, codes):
        return self.tok.decode_step(codes.astype(np.uint32))


def codec_subjects(plan: CodecPlan, codecs: dict | None = None) -> Iterator[tuple[str, object]]:
    """The reference rows, then each moshikit backend (its ``Codec`` kept in ``codecs``)."""
    from ..codec import load_codec

    if plan.reference:
        yield from _reference_subjects(plan)
    from ..errors import MoshikitError

    loaded = 0
    for i, name in enumerate(plan.backends):
        try:
            codec = load_codec(name, plan.device, mimi_weight=plan.weights, num_codebooks=plan.num_codebooks)
        except MoshikitError as exc:  # e.g. a CPU-only backend with --device cuda: the others still run
            if loaded == 0 and i == len(plan.backends) - 1 and not plan.reference:
                raise
            plan.notes.append(f"moshikit {name}: skipped ({exc})")
            continue
        loaded += 1
        if codecs is not None:
            codecs[f"moshikit {name}"] = codec
        yield f"moshikit {name}", codec.backend


#: Idle time before each timed streaming frame. Live frames arrive every 80 ms, never right
#: behind another runtime's work; without a gap, the subject timed after a torch one shares
#: the CPU with OpenMP threads still busy-waiting (measured: onnx 20.4 ms a frame encode after
#: moshikit torch, 14.1 ms after moshi's reference, 13.7 ms with this gap; the references
#: gain too).
STREAM_GAP_S = 0.01


def bench_codec(plan: CodecPlan, *, clock: Clock = time.perf_counter) -> Iterator[Row]:
    """Batch encode/decode throughput over the sweep, then per-frame streaming latency.

    Subjects are timed round-robin, repeat by repeat, so that a noisy machine slows
    them alike and the ratios between rows hold.
    """
    from ..synthetic.core import speech_sample

    speech = speech_sample()
    codecs: dict = {}
    subjects = list(codec_subjects(plan, codecs))

    def device(subj) -> str:
        return getattr(getattr(subj, "info", None), "device", None) or getattr(subj, "device", "cpu")

    def sync_of(subj):
        return getattr(subj, "sync", None) or torch_sync

    for seconds in plan.seconds:
        for batch in plan.batch_sizes:
            pcm = np.stack([np.resize(np.roll(speech, 24000 * i), int(seconds * 24000)) for i in range(batch)])
            pcm = pcm.astype(np.float32)
            codes = {name: np.asarray(subj.encode(pcm)).astype(np.int64) for name, subj in subjects}
            for task in ("encode", "decode"):
                walls: dict[str, list[float]] = {name: [] for name, _ in subjects}
                mems: dict[str, dict] = {}
                for rep in range(plan.repeats + 1):  # the first round is the warm-up
                    for name, subj in subjects:
                        fn = (lambda s=subj: s.encode(pcm)) if task == "encode" else \
                             (lambda s=subj, c=codes[name]: s.decode(c))
                        with PeakMemory() as mem:
                            w = measure(fn, repeats=1, warmup=0, clock=clock, sync=sync_of(subj))
                        if rep:
                            walls[name] += w
                            mems[name] = mem.result
                for name, subj in subjects:
                    row = throughput_row("codec", name, task, seconds * batch, walls[name], batch=batch,
                                         seconds=seconds, device=device(subj))
                    row.memory = mems[name]
                    yield row
    if plan.files:
        refs = {name: subj for name, subj in subjects if isinstance(subj, _MoshiReference)}
        yield from _bench_files(plan, codecs, refs, speech, clock)
    if not plan.stream_frames:
        return
    frames = np.resize(speech, 1920 * (plan.stream_frames + 5)).astype(np.float32)[None]
    enc: dict[str, list[float]] = {name: [] for name, _ in subjects}
    dec: dict[str, list[float]] = {name: [] for name, _ in subjects}
    for _, subj in subjects:
        prepare_live(subj)  # what chat and serve do before their first frame
        subj.reset_stream(1)
    for i in range(plan.stream_frames + 5):
        for name, subj in subjects:
            sync = sync_of(subj)
            time.sleep(STREAM_GAP_S)
            t = clock()
            c = np.asarray(subj.encode_step(frames[:, i * 1920 : (i + 1) * 1920])).astype(np.int64)
            sync()
            t1 = clock()
            subj.decode_step(c)
            sync()
            t2 = clock()
            if i >= 5:  # warm-up frames
                enc[name].append(t1 - t)
                dec[name].append(t2 - t1)
    for name, subj in subjects:
        dev = device(subj)
        yield latency_row("codec", name, "stream encode (80 ms frame)", enc[name], frames=plan.stream_frames, device=dev)
        yield latency_row("codec", name, "stream decode (80 ms frame)", dec[name], frames=plan.stream_frames, device=dev)
        both = [a + b for a, b in zip(enc[name], dec[name])]
        yield latency_row("codec", name, "stream encode+decode", both, frames=plan.stream_frames, device=dev)


def _bench_files(plan: CodecPlan, codecs: dict, refs: dict, speech: np.ndarray, clock: Clock) -> Iterator[Row]:
    """``moshikit encode`` on many short files against one file as long as all of them,
    through the library call behind the command (decoding, resampling, token files); the
    reference is the loop a moshi user writes: read each file, ``MimiModel.encode``, save."""
    import tempfile
    from pathlib import Path

    import soundfile as sf

    from ..codec import EncodeOptions, encode_files
    from ..filejobs import Job

    count, seconds = plan.files
    with tempfile.TemporaryDirectory(prefix="moshikit-bench-") as tmp:
        root = Path(tmp)
        n = int(seconds * 24000)
        short = []
        for i in range(count):
            src = root / f"short{i:04d}.wav"
            sf.write(src, np.resize(np.roll(speech, 7919 * i), n), 24000, subtype="FLOAT")
            short.append(Job(str(src), root / "out" / f"short{i:04d}.mimi"))
        sf.write(root / "long.wav", np.resize(speech, n * count), 24000, subtype="FLOAT")
        long = [Job(str(root / "long.wav"), root / "out" / "long.mimi")]
        opts = EncodeOptions(overwrite=True)

        def moshikit(jobs, codec):
            bad = [r for r in encode_files(jobs, codec, opts) if r.status != "done"]
            if bad:
                raise RuntimeError(f"bench files: {bad[0].error}")

        (root / "ref").mkdir()

        def reference(jobs, ref):
            for job in jobs:
                pcm, _ = sf.read(job.source, dtype="float32", always_2d=True)
                np.save(root / "ref" / f"{Path(job.source).stem}.npy", ref.encode(np.ascontiguousarray(pcm.T)))

        runs = {name: (reference, ref, ref.device) for name, ref in refs.items()}
        runs.update({name: (moshikit, codec, codec.info.device) for name, codec in codecs.items()})
        tasks = {f"encode {count} files of {seconds:g} s": short, f"encode 1 file of {count * seconds:g} s": long}
        walls: dict = {(name, task): [] for name in runs for task in tasks}
        for rep in range(plan.repeats + 1):  # the first round is the warm-up
            for name, (run, subject, _) in runs.items():
                for task, jobs in tasks.items():
                    t = clock()
                    run(jobs, subject)
                    if rep:
                        walls[name, task].append(clock() - t)
        for (name, task), w in walls.items():
            yield throughput_row("codec", name, task, count * seconds, w, batch=1, seconds=seconds,
                                 device=runs[name][2])


def torch_sync() -> None:
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
