"""Kyutai speech-to-text over files in bulk and live audio.

A Kyutai STT checkpoint is a Moshi-style LM (no audio output) fed with Mimi codes of
every codebook, its text running ``audio_delay_seconds`` behind the audio. Many
inputs run as parallel streams of one batch: each slot of the batch holds one file;
when a file ends, its slot is restarted (the codec's and the LM's per-stream reset)
and the next waiting file takes it, so files of any lengths share a batch and the
batch stays full. Backends without per-stream reset run files in groups instead.

Memory stays flat for long inputs: audio is read and resampled block by block, and a
stream keeps only its words and a compact energy track.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .backends.base import OwnStateEncoders, SlotResetCodec, StreamsLMBackend
from .conversation import piece_decoder
from .errors import ModelError, MoshikitError, OutputError
from .transcript import Energy, Transcript, WordBuilder, render, segment

FRAME = 1920
SAMPLE_RATE = 24000
FRAME_RATE = 12.5


# ---------------------------------------------------------------- the model


def check_stt_config(config: dict | None, source: str) -> dict:
    """The checkpoint's ``stt_config``; a clear error for anything that is not an STT model."""
    config = config or {}
    if config.get("model_type") != "stt" and "stt_config" not in config:
        kind = config.get("model_type") or ("moshi" if config.get("dep_q", 8) else "unknown")
        raise ModelError(f"{source} is not a speech-to-text checkpoint (model_type {kind!r}, no stt_config)",
                         hint="use --model stt (kyutai/stt-1b-en_fr) or stt-en (kyutai/stt-2.6b-en)")
    if int(config.get("dep_q", 0)) != 0:
        raise ModelError(f"{source}: a speech-to-text model generates no audio, but this one has dep_q "
                         f"{config.get('dep_q')}")
    return dict(config.get("stt_config") or {})


@dataclass
class SttModel:
    """A loaded STT model: codec, LM, tokenizer and the delays that time its text."""

    codec: object  # CodecBackend (all the codebooks the LM reads)
    lm: object  # LMBackend, ideally StreamsLMBackend
    tokenizer: object  # sentencepiece.SentencePieceProcessor
    delay: float  # audio_delay_seconds
    prefix: float  # audio_silence_prefix_seconds
    name: str = ""
    codec_weights: str = ""
    precision_reason: str = ""  # why the LM runs in its precision (cpu_precision.choose)

    @property
    def prefix_frames(self) -> int:
        return math.ceil(self.prefix * FRAME_RATE)

    @property
    def delay_frames(self) -> int:
        return math.ceil(self.delay * FRAME_RATE)

    @property
    def offset(self) -> float:
        """Seconds between the audio's start and the text about it, in model steps' time."""
        return self.prefix_frames / FRAME_RATE + self.delay

    @property
    def precision(self) -> str:
        """What the LM's weights run in (int8, bf16, fp16, fp32), where the backend says."""
        return self.lm.info.precision

    @property
    def slot_reset(self) -> bool:
        return isinstance(self.lm, StreamsLMBackend) and isinstance(self.codec, SlotResetCodec)

    def describe(self) -> dict:
        return {"name": self.name, "lm_backend": self.lm.info.backend, "codec_backend": self.codec.info.backend,
                "device": self.lm.info.device, "precision": self.precision, "audio_delay_seconds": self.delay,
                "audio_silence_prefix_seconds": self.prefix}


def load_stt(model: str | None = None, *, backend: str | None = None, codec_backend: str | None = None,
             device: str | None = None, dtype: str | None = None, revision: str | None = None) -> SttModel:
    """Resolve (``--model``: path, catalog name such as ``stt``/``stt-en``, or repo id) and load."""
    from . import platform
    from .cpu_precision import choose
    from .loading import load_lm_and_codec

    picked: list = []

    def choose_dtype(dtype, dev, repo, lm_backend):
        picked.append(choose(dtype, dev, repo.moshi_weights, lm_backend))
        return picked[-1].dtype

    loaded = load_lm_and_codec(model, kind="stt", check_config=check_stt_config, backend=backend, device=device,
                               dtype=dtype, codec_backend=codec_backend, revision=revision,
                               choose_dtype=choose_dtype, default=platform.default_stt)
    lm, repo, stt_config = loaded.lm, loaded.repo, loaded.config_check
    if lm.info.dep_q != 0:
        raise ModelError(f"{repo.source} is not a speech-to-text checkpoint (it generates audio)")
    return SttModel(loaded.codec, lm, loaded.tokenizer, float(stt_config.get("audio_delay_seconds", 0.5)),
                    float(stt_config.get("audio_silence_prefix_seconds", 0.0)),
                    str(repo.source if model in (None, "synthetic") else model),
                    str(repo.mimi_weights), picked[-1].reason if picked else "")


# ---------------------------------------------------------------- one stream


def frames_of(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Mono float32 blocks of any sizes -> 1920-sample frames (the last zero-padded)."""
    rest = np.zeros(0, np.float32)
    for block in blocks:
        x = np.concatenate([rest, np.asarray(block, np.float32).reshape(-1)])
        n = x.size // FRAME
        for i in range(n):
            yield x[i * FRAME : (i + 1) * FRAME]
        rest = x[n * FRAME:]
    if rest.size:
        yield np.concatenate([rest, np.zeros(FRAME - rest.size, np.float32)])


class Stream:
    """One input being transcribed: its frames (silence prefix, audio, delay flush) and its words."""

    def __init__(self, model: SttModel, source: str, blocks: Iterable[np.ndarray], *, refine: bool = True,
                 on_word: Callable[["Stream", object], None] | None = None,
                 on_audio: Callable[[float], None] | None = None, on_text: Callable[[str], None] | None = None,
                 on_turn: Callable[[float], None] | None = None, key: object = None,
                 pause_threshold: float = 0.5) -> None:
        self.model, self.source, self.key = model, source, key
        self.pause_threshold = pause_threshold  # end of turn: pause head 2 above this (Unmute: 0.5)
        self.energy = Energy() if refine else None
        sp = model.tokenizer
        self.words = WordBuilder(lambda ids: sp.decode(ids), sp.id_to_piece, model.offset, self.energy)
        self._frames = frames_of(self._all_blocks(blocks))
        self._on_word, self._on_audio, self._on_text, self._on_turn = on_word, on_audio, on_text, on_turn
        self._piece = piece_decoder(sp)
        self.samples = 0
        self.step = 0
        self.end_of_turn: list[float] = []
        self.error: str | None = None
        self._paused = True
        self.started = time.perf_counter()

    def _all_blocks(self, blocks) -> Iterator[np.ndarray]:
        silence = np.zeros(FRAME, np.float32)
        for _ in range(self.model.prefix_frames):
            yield silence
        try:
            for block in blocks:
                block = np.asarray(block, np.float32).reshape(-1)
                self.samples += block.size
                if self.energy is not None:
                    self.energy.add(block)
                if self._on_audio is not None:
                    self._on_audio(block.size / SAMPLE_RATE)
                yield block
        except MoshikitError as exc:  # a file that breaks mid-read fails alone
            self.error = str(exc)
        except (RuntimeError, OSError, ValueError) as exc:
            self.error = f"{self.source}: cannot read audio ({str(exc).splitlines()[0]})"
        for _ in range(self.model.delay_frames):
            yield silence

    def read_frames(self, out: np.ndarray) -> int:
        """Fill ``out`` (a whole number of frames) with the next frames; return how many were real."""
        n = 0
        for n in range(out.size // FRAME):
            f = next(self._frames, None)
            if f is None:
                return n
            out[n * FRAME : (n + 1) * FRAME] = f
        return out.size // FRAME

    def feed(self, token: int, pause: float | None) -> None:
        if self._on_text is not None and token > 3:  # the live text shows the words' spaces
            piece = self._piece(int(token))
            self._on_text(piece if piece.startswith(" ") or self.words.in_word else " " + piece)
        for w in self.words.feed(self.step, int(token)):
            if self._on_word is not None and w.text:
                self._on_word(self, w)
        if pause is not None:
            paused = pause > self.pause_threshold
            t = self.words.time(self.step)
            if paused and not self._paused and 0 <= t <= self.duration:
                self.end_of_turn.append(t)
                if self._on_turn is not None:
                    self._on_turn(t)
            self._paused = paused
        self.step += 1

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    def finish(self) -> Transcript:
        for w in self.words.finish(self.step):
            if self._on_word is not None and w.text:
                self._on_word(self, w)
        words = [w for w in self.words.words if w.start <= self.duration + 1e-6]
        for w in words:
            w.end = min(w.end, self.duration)
        return Transcript(self.source, self.duration, words, segment(words), self.end_of_turn,
                          self.model.describe())


# ---------------------------------------------------------------- many streams, one batch

#: Files transcribed at once when no batch size is given: on a GPU (fewer when its free memory
#: holds fewer streams), on a CPU.
GPU_BATCH, CPU_BATCH = 16, 4
#: Files at once on moshikit's CPU engine: its int8 step reads the weights once for every stream,
#: so a batch of 32 runs 10x real time where 4 run ~3x (stt-1b, 2-core Xeon, docs/benchmarks.md).
ENGINE_BATCH = 32


def default_batch(model: SttModel, *, files: bool = False) -> tuple[int, str]:
    """(batch size, why) for ``transcribe`` (``files``: a set of files, where throughput counts)
    or a live server without ``--batch-size``."""
    from .platform import fit_batch, fit_cpu_batch

    device = model.lm.info.device
    per = getattr(model.lm, "stream_bytes", lambda: 0)()
    if device in ("cpu", None) and files and model.lm.info.backend == "cpu":
        return fit_cpu_batch(ENGINE_BATCH, per)
    if device in ("cpu", None):
        return CPU_BATCH, f"{CPU_BATCH} streams at once (the default on a CPU)"
    return fit_batch(device, GPU_BATCH, per)



def run_streams(model: SttModel, streams: Iterable[Stream], batch_size: int = 1, *,
                chunk: int = 1) -> Iterator[Stream]:
    """Transcribe ``streams`` as ``batch_size`` parallel slots; yield each stream when its
    last frame has been read (call ``finish()`` on it for the transcript).

    The codec encodes ``chunk`` frames of every slot at once (files: ~2 s, which runs
    the codec at its whole-file speed; live audio: 1 frame, for latency), then the LM
    steps over them frame by frame. A slot's stream always starts on a chunk boundary,
    so its audio is cut into the same chunks whatever else shares the batch.
    With per-stream reset (torch), a finished slot is restarted and refilled at the
    next chunk; otherwise streams run in groups of ``batch_size``.
    """
    if batch_size < 1 or chunk < 1:
        raise ValueError("batch_size and chunk must be >= 1")
    if model.slot_reset or batch_size == 1:
        yield from _run(model, iter(streams), batch_size, chunk, refill=model.slot_reset)
        return
    it = iter(streams)
    while True:
        group = [s for _, s in zip(range(batch_size), it)]
        if not group:
            return
        yield from _run(model, iter(group), len(group), chunk, refill=False)


def _run(model: SttModel, pending: Iterator[Stream], batch: int, chunk: int, *, refill: bool) -> Iterator[Stream]:
    codec, lm = model.codec, model.lm
    k = lm.info.input_codebooks
    heads = isinstance(lm, StreamsLMBackend) and lm.info.extra_heads > 2
    # On a CPU each stream is encoded at batch 1 with a codec state of its own: the
    # faster way there, and a stream's codes then do not depend on its batch mates.
    own = chunk > 1 and isinstance(codec, OwnStateEncoders) and not codec.batch_gain
    slots: list[Stream | None] = [None] * batch
    encoders: list = [None] * batch
    used = [False] * batch
    if not own:
        codec.reset_stream(batch)
    lm.reset(batch)
    while True:
        pcm = np.zeros((batch, chunk * FRAME), np.float32)
        real = np.zeros(batch, int)
        restart = np.zeros(batch, bool)
        ended: list[Stream] = []
        for b in range(batch):
            while True:
                if slots[b] is None and (refill or not used[b]):
                    slots[b] = next(pending, None)
                    if slots[b] is not None:
                        restart[b], used[b] = used[b], True
                        encoders[b] = codec.open_encoder() if own else None
                if slots[b] is not None:
                    real[b] = slots[b].read_frames(pcm[b])
                # A stream that ended exactly on a chunk boundary reads nothing now: it is
                # done, and with refill its slot takes the next stream in this same round.
                if real[b] or slots[b] is None or not refill:
                    break
                ended.append(slots[b])
                slots[b], encoders[b] = None, None
        yield from ended
        if not real.any():
            yield from (s for s in slots if s is not None)
            return
        if restart.any():
            if not own:
                codec.reset_slots(restart)
            lm.reset_slots(restart)
        if own:
            codes = np.zeros((batch, k, chunk), np.int64)
            for b in np.flatnonzero(real):
                codes[b] = encoders[b].encode(pcm[b : b + 1])[0, :k]
        else:
            codes = codec.encode_step(pcm)[:, :k]
        # Frames past every slot's last real one would only step padding (a batch's last chunk).
        for i in range(int(real.max())):
            tokens, probs = lm.step_heads(codes[:, :, i]) if heads else (lm.step(codes[:, :, i]), None)
            if tokens is None:
                continue
            for b, s in enumerate(slots):
                if s is not None and i < real[b]:
                    s.feed(int(tokens[b, 0]), None if probs is None else float(probs[b, 2]))
        for b, s in enumerate(slots):
            if s is not None and real[b] < chunk:  # its last frame has been read and stepped
                slots[b], encoders[b] = None, None
                yield s


# ---------------------------------------------------------------- files


@dataclass
class TranscribeOptions:
    formats: list[str] = field(default_factory=lambda: ["txt"])
    batch_size: int = 1
    overwrite: bool = False
    refine: bool = True
    chunk: int = 25  # frames the codec encodes per slot at once (2 s)


def output_paths(job_output: Path, formats: Sequence[str]) -> list[Path]:
    """One output per format beside the planned output (which carries the first format's suffix)."""
    return [job_output.with_suffix(f".{fmt}") for fmt in formats]


def write_transcript(t: Transcript, outputs: Sequence[Path], formats: Sequence[str]) -> None:
    from .atomic import write_text

    for path, fmt in zip(outputs, formats):
        write_text(path, render(t, fmt))


def transcribe_files(jobs: Sequence, model: SttModel, opts: TranscribeOptions | None = None,
                     on_audio: Callable[[float], None] | None = None,
                     on_word: Callable[[Stream, object], None] | None = None,
                     on_text: Callable[[str], None] | None = None) -> Iterator:
    """Transcribe planned jobs (``filejobs.plan``), writing every format per input; yield FileResults.

    Inputs whose outputs are all kept are skipped (a rerun resumes: see ``filejobs.skip_result``); an unreadable input
    fails alone; outputs appear only complete.
    """
    from .audio import open_audio, stream_24k
    from .filejobs import FileResult, job_failed, skip_result

    opts = opts or TranscribeOptions()
    results: deque = deque()

    def streams() -> Iterator[Stream]:
        for job in jobs:
            outs = output_paths(job.output, opts.formats)
            kept = skip_result(job, outs, opts.overwrite)
            if kept is not None:
                results.append(kept)
                continue
            try:
                src = open_audio(job.source)
            except MoshikitError as exc:
                results.append(FileResult(job.source, None, "failed", str(exc)))
                continue
            blocks = (b[0] for b in stream_24k(src, "mix", seconds=2.0))
            yield Stream(model, job.source, blocks, refine=opts.refine, on_word=on_word,
                         on_audio=on_audio, on_text=on_text, key=(job, outs))

    for stream in run_streams(model, streams(), opts.batch_size, chunk=opts.chunk):
        while results:
            yield results.popleft()
        job, outs = stream.key
        if stream.error:
            yield FileResult(job.source, None, "failed", stream.error)
            continue
        transcript = stream.finish()
        try:
            write_transcript(transcript, outs, opts.formats)
        except OutputError as exc:  # this output alone (a full disk stops the batch: job_failed raises)
            yield job_failed(job, exc)
            continue
        yield FileResult(job.source, str(outs[0]), "done", audio_seconds=transcript.duration,
                         frames=stream.step, seconds=time.perf_counter() - stream.started)
    while results:
        yield results.popleft()


# ---------------------------------------------------------------- live audio


def transcribe_live(model: SttModel, blocks: Iterable[np.ndarray], *, on_text: Callable[[str], None] | None = None,
                    on_turn: Callable[[float], None] | None = None, refine: bool = True,
                    source: str = "<microphone>", chunk: int = 1) -> Transcript:
    """Transcribe a live source: ``blocks`` of 24 kHz mono float32 that end when the user stops.

    Text pieces reach ``on_text`` as the model emits them, end-of-turn times reach
    ``on_turn``; at the end the model's delay is flushed with silence so the last
    words come out. ``chunk`` frames are encoded at once (1: the lowest latency).
    """
    stream = Stream(model, source, blocks, refine=refine, on_text=on_text, on_turn=on_turn)
    for _ in run_streams(model, [stream], 1, chunk=chunk):
        pass
    return stream.finish()
