"""Library operations behind ``moshikit encode`` and ``moshikit decode``.

They take typed inputs, yield typed results and never print: the CLI renders.
Short inputs ride together in batches (Mimi is causal, so zero padding after a
clip does not change its codes); long inputs stream in chunks with the codec's
state carried across, so memory stays flat and codes equal a whole-file encode.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import AudioSource, AudioWriter, open_audio, stream_24k
from .backends import registry
from .backends.base import CodecBackend, ParallelStreams
from .errors import MoshikitError, TokenFileError, UsageError
from .hub import Weights, resolve_mimi
from .filejobs import FileResult, Job, job_failed, skip_result
from .platform import Choice, resolve
from .tokens import TokenHeader, Tokens, read_tokens, write_tokens
from .version import __version__

#: Frames per streaming call and the longest clip that goes through the batch path (10 s).
CHUNK_FRAMES = 125


@dataclass
class Codec:
    """A loaded codec backend and the weights it runs."""

    backend: CodecBackend
    weights: Weights
    choice: Choice

    @property
    def info(self):
        return self.backend.info


def load_codec(backend: str | None = None, device: str | None = None, *, mimi_weight=None,
               model: str | None = None, revision: str | None = None, num_codebooks: int = 8,
               weights: Weights | None = None) -> Codec:
    """Resolve weights, pick a backend (platform default unless given) and load it."""
    if not 1 <= num_codebooks <= 32:
        raise UsageError(f"--num-codebooks must be between 1 and 32, not {num_codebooks}")
    choice = resolve("codec", backend, device)
    mod = registry.module("codec", choice.backend)
    weights = weights or resolve_mimi(mimi_weight, model, revision)
    dev = None if choice.device == "auto" else choice.device
    try:
        impl = mod.load(weights.path, device=dev, num_codebooks=num_codebooks)
    except MoshikitError:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        raise MoshikitError(f"{weights.path}: the {choice.backend} backend could not load it "
                            f"({str(exc).splitlines()[0][:160]})") from exc
    return Codec(impl, weights, choice)


# ---------------------------------------------------------------- planning


# ---------------------------------------------------------------- encode


@dataclass
class EncodeOptions:
    fmt: str = "mimi"  # mimi | npy
    channels: str = "mix"  # mix | split
    batch_size: int = 8
    overwrite: bool = False


@dataclass
class _Pending:
    job: Job
    src: AudioSource
    started: float = field(default_factory=time.perf_counter)


def _header(codec: Codec, src: AudioSource, codes: np.ndarray, num_samples: int) -> TokenHeader:
    info = codec.info
    c, k, f = codes.shape
    return TokenHeader(
        num_codebooks=k, frames=f, channels=c, cardinality=info.cardinality, sample_rate=info.sample_rate,
        frame_rate=info.frame_rate, frame_size=info.frame_size, num_samples=num_samples,
        codec=codec.weights.describe(),
        source={"name": os.path.basename(src.name), "sample_rate": src.sample_rate, "channels": src.channels,
                "frames": src.frames},
        backend=info.backend, moshikit_version=__version__,
    )


def encode_files(jobs: Sequence[Job], codec: Codec, opts: EncodeOptions | None = None,
                 on_audio: Callable[[float], None] | None = None) -> Iterator[FileResult]:
    """Encode each job's audio to a token file; yields one result per job, in completion order.

    ``on_audio(seconds)`` is called as audio is consumed, for progress bars.
    """
    opts = opts or EncodeOptions()
    frame = codec.info.frame_size
    batch_limit = CHUNK_FRAMES * frame
    tick = on_audio or (lambda s: None)
    batch: list[_Pending] = []
    workers = codec.backend.parallel_streams if isinstance(codec.backend, ParallelStreams) else 1
    if workers > 1 and not codec.backend.batch_gain and len(jobs) > 1:
        yield from _encode_parallel(jobs, codec, opts, tick, workers)
        return

    def flush() -> Iterator[FileResult]:
        items = list(batch)
        batch.clear()
        if items:
            yield from _encode_batch(items, codec, opts, tick)

    for job in jobs:
        kept = skip_result(job, overwrite=opts.overwrite)
        if kept is not None:
            yield kept
            continue
        started = time.perf_counter()
        try:
            src = open_audio(job.source)
        except MoshikitError as exc:
            yield job_failed(job, exc)
            continue
        channels = src.channels if opts.channels == "split" else 1
        if codec.backend.batch_gain and opts.batch_size > 1 and src.target_frames <= batch_limit:
            batch.append(_Pending(job, src, started))
            if sum(p.src.channels if opts.channels == "split" else 1 for p in batch) >= opts.batch_size:
                yield from flush()
            continue
        try:
            codes = _encode_stream(src, codec, opts.channels, channels, tick)
            yield _finish(job, src, codec, codes, opts, started)
        except MoshikitError as exc:
            yield job_failed(job, exc)
        finally:
            src.close()
    yield from flush()


def _finish(job: Job, src: AudioSource, codec: Codec, codes: np.ndarray, opts: EncodeOptions,
            started: float) -> FileResult:
    header = _header(codec, src, codes, src.target_frames)
    write_tokens(job.output, codes, header, opts.fmt)
    return FileResult(job.source, str(job.output), "done", audio_seconds=src.duration, frames=header.frames,
                      seconds=time.perf_counter() - started)


def _encode_parallel(jobs: Sequence[Job], codec: Codec, opts: EncodeOptions, tick: Callable[[float], None],
                     workers: int) -> Iterator[FileResult]:
    """Whole files on ``workers`` threads, each with its own one-thread stream (the backend's
    ``open_encoder(single_thread=True)``); results in completion order."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    def one(job: Job) -> FileResult:
        started = time.perf_counter()
        try:
            src = open_audio(job.source)
        except MoshikitError as exc:
            return job_failed(job, exc)
        try:
            n = src.channels if opts.channels == "split" else 1
            encoder = codec.backend.open_encoder(n, single_thread=True)
            codes = _encode_stream(src, codec, opts.channels, n, tick, encoder.encode)
            return _finish(job, src, codec, codes, opts, started)
        except MoshikitError as exc:
            return job_failed(job, exc)
        finally:
            src.close()

    pool = ThreadPoolExecutor(workers, thread_name_prefix="moshikit-encode")
    pending: set = set()
    try:
        for job in jobs:
            kept = skip_result(job, overwrite=opts.overwrite)
            if kept is not None:
                yield kept
                continue
            pending.add(pool.submit(one, job))
            if len(pending) >= 2 * workers:  # a bounded queue: memory stays flat on huge lists
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
    finally:  # interrupted: finish what runs (outputs are atomic), start nothing more
        pool.shutdown(wait=True, cancel_futures=True)


def _encode_stream(src: AudioSource, codec: Codec, channels: str, n_channels: int,
                   tick: Callable[[float], None], encode: Callable[[np.ndarray], np.ndarray] | None = None
                   ) -> np.ndarray:
    """One input, chunk by chunk with the streaming state carried: [C, K, F] (through the
    backend's own stream, or through ``encode``, an encoder with a state of its own)."""
    backend = codec.backend
    frame = codec.info.frame_size
    chunk = CHUNK_FRAMES * frame
    if encode is None:
        backend.reset_stream(n_channels)
        encode = backend.encode_step
    parts: list[np.ndarray] = []
    buf = np.zeros((n_channels, 0), np.float32)
    for block in stream_24k(src, channels):
        buf = np.concatenate([buf, block], axis=-1) if buf.shape[-1] else block
        while buf.shape[-1] >= chunk:
            parts.append(encode(buf[:, :chunk]))
            buf = buf[:, chunk:]
            tick(chunk / codec.info.sample_rate)
    if buf.shape[-1]:
        tick(buf.shape[-1] / codec.info.sample_rate)
        pad = (-buf.shape[-1]) % frame
        parts.append(encode(np.pad(buf, ((0, 0), (0, pad)))))
    return np.concatenate(parts, axis=-1).astype(np.int64)


def _encode_batch(items: list[_Pending], codec: Codec, opts: EncodeOptions,
                  tick: Callable[[float], None]) -> Iterator[FileResult]:
    """Short inputs as one zero-padded batch; each gets the codes it would get alone."""
    audio: list[np.ndarray] = []
    ready: list[_Pending] = []
    for p in items:
        try:
            audio.append(np.concatenate(list(stream_24k(p.src, opts.channels)), axis=-1))
            ready.append(p)
        except MoshikitError as exc:
            yield job_failed(p.job, exc)
        finally:
            p.src.close()
    if not ready:
        return
    frame = codec.info.frame_size
    longest = max(a.shape[-1] for a in audio)
    stacked = np.concatenate([np.pad(a, ((0, 0), (0, longest - a.shape[-1]))) for a in audio], axis=0)
    codes = codec.backend.encode(stacked)
    tick(sum(a.shape[-1] for a in audio) / codec.info.sample_rate)
    row = 0
    for p, a in zip(ready, audio):
        c = a.shape[0]
        frames = -(-a.shape[-1] // frame)
        mine = codes[row : row + c, :, :frames]
        row += c
        try:
            yield _finish(p.job, p.src, codec, mine.astype(np.int64), opts, p.started)
        except MoshikitError as exc:
            yield job_failed(p.job, exc)


# ---------------------------------------------------------------- decode


@dataclass
class DecodeOptions:
    fmt: str = "wav"
    overwrite: bool = False
    force: bool = False  # decode even if the tokens were made with other weights


def check_tokens(tokens: Tokens, codec: Codec, where: str, force: bool = False) -> None:
    """The token file must match the loaded codec: codebooks, cardinality and weights."""
    h, info = tokens.header, codec.info
    if h.num_codebooks > info.total_codebooks:
        raise TokenFileError(f"{where}: {h.num_codebooks} codebooks, but this Mimi has {info.total_codebooks}")
    if h.num_codebooks != info.num_codebooks:
        raise TokenFileError(f"{where}: {h.num_codebooks} codebooks, but the codec was loaded with {info.num_codebooks}")
    if (h.cardinality, h.sample_rate, h.frame_size) != (info.cardinality, info.sample_rate, info.frame_size):
        raise TokenFileError(
            f"{where}: made for a codec with {h.cardinality} entries at {h.sample_rate} Hz, "
            f"this one has {info.cardinality} at {info.sample_rate} Hz")
    if tokens.codes.size and int(tokens.codes.max()) >= info.cardinality:
        raise TokenFileError(f"{where}: codes outside 0..{info.cardinality - 1}")
    made_with = (h.codec or {}).get("sha256")
    if made_with and not force and made_with != codec.weights.sha256:
        raise TokenFileError(
            f"{where}: made with other Mimi weights (sha256 {made_with[:12]}…, loaded {codec.weights.sha256[:12]}…)",
            hint="pass the weights the tokens were made with, or --force to decode anyway")


def decode_files(jobs: Sequence[Job], get_codec: Callable[[int], Codec], opts: DecodeOptions | None = None,
                 on_audio: Callable[[float], None] | None = None) -> Iterator[FileResult]:
    """Decode token files to audio. ``get_codec(num_codebooks)`` supplies a matching codec."""
    opts = opts or DecodeOptions()
    tick = on_audio or (lambda s: None)
    for job in jobs:
        kept = skip_result(job, overwrite=opts.overwrite)
        if kept is not None:
            yield kept
            continue
        started = time.perf_counter()
        try:
            tokens = read_tokens(job.source)
            try:
                codec = get_codec(tokens.header.num_codebooks)
            except TokenFileError as exc:  # e.g. more codebooks than Mimi has: name the file
                raise TokenFileError(f"{job.source}: {exc}", hint=exc.hint) from None
            check_tokens(tokens, codec, job.source, opts.force)
            seconds = _decode_one(tokens, codec, job.output, opts.fmt, tick)
        except MoshikitError as exc:
            yield job_failed(job, exc)
            continue
        yield FileResult(job.source, str(job.output), "done", audio_seconds=seconds,
                         frames=tokens.header.frames, seconds=time.perf_counter() - started)


def _decode_one(tokens: Tokens, codec: Codec, output: Path, fmt: str, tick: Callable[[float], None]) -> float:
    h = tokens.header
    backend = codec.backend
    total = h.num_samples or h.frames * h.frame_size
    written = 0
    with AudioWriter(output, h.sample_rate, h.channels, fmt) as writer:
        backend.reset_stream(h.channels)
        for start in range(0, h.frames, CHUNK_FRAMES):
            pcm = backend.decode_step(tokens.codes[:, :, start : start + CHUNK_FRAMES])
            pcm = pcm[:, : total - written]
            writer.write(pcm)
            written += pcm.shape[-1]
            tick(pcm.shape[-1] / h.sample_rate)
        if written < total:  # num_samples may exceed frames * frame_size by a resampler sample
            writer.write(np.zeros((h.channels, total - written), np.float32))
    return total / h.sample_rate
