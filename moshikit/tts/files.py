"""Speech to files: audio (wav, flac, ogg, opus) or Mimi tokens (``.mimi``), word timings (json, srt, vtt),
atomically; many text files in one run, resumable."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import MoshikitError, UsageError
from .engine import Settings, Speech
from .text import Chunk

OUTPUT_FORMATS = ("wav", "flac", "ogg", "opus", "mimi")
WORD_FORMATS = ("json", "srt", "vtt")
TEXT_EXTENSIONS = (".txt",)


def output_format(path: str | Path) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in OUTPUT_FORMATS:
        raise UsageError(f"{path}: cannot write {ext or 'a file without extension'!r} "
                         f"(choose .{', .'.join(OUTPUT_FORMATS)})")
    return ext


def words_format(path: str | Path) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in WORD_FORMATS:
        raise UsageError(f"--words {path}: choose a .json, .srt or .vtt file")
    return ext


def transcript_of(speech: Speech, source: str, model: dict | None = None):
    """The words as a ``Transcript`` (the same renderers as ``transcribe``'s json/srt/vtt)."""
    from ..transcript import Transcript, Word, segment

    end = speech.duration
    words = [Word(w.text, max(0.0, w.start), min(max(w.end, w.start), end) if end else w.end)
             for w in speech.words]
    return Transcript(source, end, words, segment(words), [], model or {})


def write_words(speech: Speech, path: str | Path, source: str, model: dict | None = None) -> Path:
    from ..atomic import write_text
    from ..transcript import render

    return write_text(path, render(transcript_of(speech, source, model), words_format(path)))


def speak_to_file(model, chunks: Iterable[Chunk], voices, output: str | Path | None, settings: Settings | None = None,
                  *, words: str | Path | None = None, source: str = "<text>",
                  on_pcm: Callable | None = None, on_audio: Callable[[float], None] | None = None,
                  on_word: Callable | None = None) -> Speech:
    """Generate and write ``output`` (audio streamed to it as generated, or tokens at the end) and
    ``words``; both appear only complete. ``output`` None: audio only to ``on_pcm`` (``--play``)."""
    import numpy as np

    settings = settings or Settings()
    fmt = output_format(output) if output is not None else None
    if words is not None:
        words_format(words)
    if fmt == "mimi":
        if not model.n_q:
            raise UsageError(f"{output}: the {model.backend} backend makes no Mimi tokens",
                             hint="write audio (.wav, .flac, .ogg, .opus), or use Kyutai TTS (-b torch)")
        # Tokens only: no audio to decode unless it is also played (MLX's Mimi is slow on a CPU).
        settings = replace(settings, keep_codes=True, decode=on_pcm is not None)

    def fan_out(writer):
        def push(pcm):
            if writer is not None:
                writer.write(pcm[None])
            if on_pcm is not None:
                on_pcm(pcm)
            if on_audio is not None:
                on_audio(pcm.size / 24000)
        return push

    if fmt in (None, "mimi"):
        speech = model.generate(chunks, voices, settings, on_pcm=fan_out(None), on_word=on_word)
    else:
        from ..audio import AudioWriter

        with AudioWriter(Path(output), model.sample_rate, 1, fmt) as writer:
            speech = model.generate(chunks, voices, settings, on_pcm=fan_out(writer), on_word=on_word)
    if fmt == "mimi":
        from ..tokens import TokenHeader, write_tokens
        from ..version import __version__

        codes = np.stack(speech.codes, axis=-1) if speech.codes else np.zeros((model.n_q, 0), np.int64)
        header = TokenHeader(num_codebooks=int(codes.shape[0]), frames=int(codes.shape[1]),
                             num_samples=int(codes.shape[1]) * 1920, backend=model.backend,
                             source={"name": source, "kind": "tts", "model": model.name},
                             moshikit_version=__version__)
        write_tokens(Path(output), codes, header)
    if words is not None:
        write_words(speech, words, source, model.describe())
    return speech


# ---------------------------------------------------------------- many files


@dataclass
class BatchOptions:
    suffix: str = ".wav"
    words: str | None = None  # a word-timings format written beside each output (json, srt, vtt)
    overwrite: bool = False
    settings: Settings = field(default_factory=Settings)
    batch: int = 1  # texts spoken at once (one batch row each) by a backend that can (``BatchTTS``)


def word_path(output: Path, fmt: str | None) -> Path | None:
    return output.with_suffix(f".{fmt}") if fmt else None


#: Texts spoken at once by ``speak DIR`` on moshikit's CPU engine when no ``--batch`` is given:
#: its frame is bound by per-operation work that a batch shares (Kyutai TTS 1.6B, 20 words, 2-core
#: Xeon, ``moshikit bench tts``: 0.93-0.96x real time at 4, 1.8x at 8, 2.7x at 16; docs/benchmarks.md).
ENGINE_BATCH = 16


def default_batch(model) -> tuple[int, str]:
    """(texts spoken at once, why) when ``--batch`` is not given: 32 on a GPU (as Kyutai's own
    script; on CUDA fewer when its free memory holds fewer streams), ``ENGINE_BATCH`` on moshikit's
    CPU engine (fewer where half the available RAM holds fewer), 4 on a CPU otherwise (see
    docs/benchmarks.md: measured with ``moshikit bench tts``)."""
    from ..platform import fit_batch, fit_cpu_batch

    device = str(model.describe().get("device", "cpu"))
    on_cpu = not device.startswith(("cuda", "mps", "gpu"))
    if on_cpu and getattr(model, "backend", None) != "cpu":
        return 4, "4 texts at once (the default on a CPU)"
    per = getattr(model, "stream_bytes", lambda: 0)()
    return fit_cpu_batch(ENGINE_BATCH, per, "texts") if on_cpu else fit_batch(device, 32, per, "texts")


def speak_files(jobs: Sequence, model, voices, opts: BatchOptions,
                on_audio: Callable[[float], None] | None = None) -> Iterator:
    """Speak planned jobs (``filejobs.plan`` over .txt files); yield FileResults. Finished outputs are
    skipped (a rerun resumes), a bad file fails alone, outputs appear only complete. With
    ``opts.batch`` > 1 and a backend that batches, texts of similar length are spoken
    ``opts.batch`` at a time."""
    from ..backends.base import BatchTTS
    from ..filejobs import skip_result

    todo = []
    for job in jobs:
        words = word_path(job.output, opts.words)
        kept = skip_result(job, [job.output] + ([words] if words is not None else []), opts.overwrite)
        if kept is not None:
            yield kept
        else:
            todo.append(job)
    if opts.batch > 1 and isinstance(model, BatchTTS):
        yield from _batched(todo, model, voices, opts, on_audio)
        return
    for job in todo:
        yield _one_file(job, model, voices, opts, on_audio)


def _one_file(job, model, voices, opts: BatchOptions, on_audio):
    from ..filejobs import FileResult
    from .text import chunks, read_blocks

    started = time.perf_counter()
    settings = replace(opts.settings, keep_codes=False)
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
        speech = speak_to_file(model, chunks(read_blocks(job.source)), voices, job.output, settings,
                               words=word_path(job.output, opts.words), source=job.source, on_audio=on_audio)
    except MoshikitError as exc:
        return _failed(job, exc)
    return FileResult(job.source, str(job.output), "done", audio_seconds=speech.duration, frames=speech.frames,
                      seconds=time.perf_counter() - started)


def _failed(job, exc: MoshikitError):
    """The job's failure, its message naming the text file (the text's own errors say "text: ...")."""
    from ..filejobs import FileResult, job_failed
    from ..errors import OutputError

    message = str(exc)
    if isinstance(exc, OutputError) or message.startswith(str(job.source)):
        return job_failed(job, exc)
    return FileResult(job.source, str(job.output), "failed", f"{job.source}: {message.removeprefix('text: ')}")


def _batched(jobs: Sequence, model, voices, opts: BatchOptions, on_audio) -> Iterator:
    """Texts read and checked first (a bad one fails alone), sorted by length (a batch runs
    until its longest text ends), then spoken ``opts.batch`` at a time into atomic writers."""
    import contextlib

    from ..audio import AudioWriter
    from ..filejobs import FileResult
    from .text import chunks, read_blocks

    ready = []
    for job in jobs:
        try:
            script = list(chunks(read_blocks(job.source)))
            if not script:
                raise UsageError("nothing to say: the text is empty")
            for chunk in script:
                model.check_text(chunk.text)
        except MoshikitError as exc:
            yield _failed(job, exc)
            continue
        ready.append((sum(len(c.text) for c in script), job, script))
    ready.sort(key=lambda r: r[0])
    settings = replace(opts.settings, keep_codes=False)
    fmt = opts.suffix.lstrip(".")
    for i in range(0, len(ready), opts.batch):
        group = ready[i:i + opts.batch]
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            writers = []
            for _, job, _ in group:
                job.output.parent.mkdir(parents=True, exist_ok=True)
                writers.append(stack.enter_context(AudioWriter(job.output, model.sample_rate, 1, fmt)))

            def push(b: int, pcm) -> None:
                writers[b].write(pcm[None])
                if on_audio is not None:
                    on_audio(pcm.size / model.sample_rate)

            speeches = model.generate_batch([s for _, _, s in group], [voices] * len(group), settings, on_pcm=push)
            for (_, job, _), speech in zip(group, speeches):
                words = word_path(job.output, opts.words)
                if words is not None:
                    write_words(speech, words, job.source, model.describe())
        seconds = (time.perf_counter() - started) / len(group)  # spoken together: an equal share each
        for (_, job, _), speech in zip(group, speeches):
            yield FileResult(job.source, str(job.output), "done", audio_seconds=speech.duration,
                             frames=speech.frames, seconds=seconds)
