"""Hibiki's simultaneous speech translation over files and live audio.

Hibiki listens to the source speech and speaks its translation as it goes, with a text
stream of the translation: one LM step per 80 ms frame, as for Moshi. A run here mirrors
Kyutai's ``moshi.run_inference`` for one stream (not its batch of 8):

* the model is conditioned on the description "very_good"; with ``cfg != 1``
  classifier-free guidance runs a second, "very_bad" half of the batch;
* the first frame is stepped twice (so the model reads it: the codes given to a
  step's first call are otherwise replaced by the initial token);
* after the last frame, one step reads codes all equal to the codec's cardinality
  (Hibiki's end-of-input signal), then silence until the text stream says EOS, so
  the last words come out (bounded by ``tail_seconds``). An EOS said before the
  end of input is ignored, as Kyutai's inference does;
* output frame ``j`` (audio and text) is written at ``j x 80 ms``.

Input of any length: Hibiki was trained on clips of up to about two minutes, so longer
input is cut into pieces at the quietest moment (frame energy) between
``min_piece_seconds`` and ``max_piece_seconds``; each piece is translated from a fresh
state, and the pieces follow each other on one timeline (a piece's translation and its
original both start where the previous piece's longer one ended). At most one piece of
input is held in memory; audio is written as it is produced.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .conversation import piece_decoder
from .errors import AudioError, BackendError, ModelError, MoshikitError, OutputError
from .transcript import Segment, Transcript, Word, render, segment

FRAME = 1920
SAMPLE_RATE = 24000
FRAME_SECONDS = FRAME / SAMPLE_RATE
TEXT_FORMATS = ("json", "srt", "vtt", "txt")
AUDIO_FORMATS = ("wav", "flac", "ogg", "opus", "mp3")


def check_hibiki_config(config: dict | None, source: str) -> dict:
    """A clear error for a checkpoint that is not Hibiki (before any weights are read)."""
    config = config or {}
    if config.get("model_type") != "hibiki":
        kind = config.get("model_type") or "moshi"
        raise ModelError(f"{source} is not a Hibiki translation checkpoint (model_type {kind!r})",
                         hint="use --model hibiki (kyutai/hibiki-1b-pytorch-bf16), hibiki-2b, or synthetic")
    return config


@dataclass
class Translator:
    """A loaded Hibiki: codec, LM (with guidance and end-of-input), tokenizer."""

    codec: object
    lm: object
    tokenizer: object
    name: str = ""
    cfg: float = 1.0
    seed: int | None = None

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_id())

    def describe(self) -> dict:
        return {"name": self.name, "lm_backend": self.lm.info.backend, "codec_backend": self.codec.info.backend,
                "device": self.lm.info.device, "cfg": self.cfg, "seed": self.seed}


def load_translator(model: str | None = None, *, backend: str | None = None, device: str | None = None,
                    dtype: str | None = None, codec_backend: str | None = None, revision: str | None = None,
                    cfg: float = 1.0, seed: int | None = None) -> Translator:
    """Resolve ``--model`` (``hibiki``, ``hibiki-2b``, a repo id, a path, ``synthetic``) and load it.

    Translation runs on the torch LM backend or moshikit's CPU engine (``--backend cpu``; both have
    the conditioning, guidance and end-of-input step; MLX not yet): ``auto`` means torch
    (``platform.default_translate``), and a catalog name then means its PyTorch variant on every
    platform (on Apple silicon torch runs on MPS)."""
    from . import catalog, platform
    from .backends.base import GuidedLM
    from .loading import load_lm_and_codec

    if backend not in (None, "auto", "torch", "cpu"):
        raise BackendError(f"translation runs on the torch backend or the cpu engine; the {backend} backend "
                           "has no Hibiki conditioning here yet", hint="use --backend torch (the default)")
    variant = "pytorch-bf16" if model is None or catalog.family_of(model) is not None else None
    loaded = load_lm_and_codec(model, kind="hibiki", check_config=check_hibiki_config, backend=backend,
                               device=device, dtype=dtype, codec_backend=codec_backend, revision=revision,
                               variant=variant, default=platform.default_translate)
    lm = loaded.lm
    if not isinstance(lm, GuidedLM):
        raise BackendError(f"the {lm.info.backend} LM backend cannot run Hibiki yet (no conditioning)",
                           hint="use --backend torch")
    lm.set_guidance(cfg)
    lm.sampling = dataclasses.replace(lm.sampling, seed=seed)
    return Translator(loaded.codec, lm, loaded.tokenizer,
                      str(loaded.repo.source if model in (None, "synthetic") else model), cfg, seed)


# ---------------------------------------------------------------- one piece


def translate_frames(tr: Translator, frames: Iterable[np.ndarray], *, tail_seconds: float = 12.0,
                     end: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Translate one piece from a fresh state: ``frames`` are float32 [1920] arrays.

    Yields one ``(text token, audio codes [dep_q], pcm [1920])`` per output step. With
    ``end`` the end of input is signalled and the tail runs until EOS (at most
    ``tail_seconds``); without it (a live source that was stopped) the run just stops.
    """
    codec, lm = tr.codec, tr.lm
    k = lm.info.input_codebooks
    codec.reset_stream(1)
    lm.reset(1)
    first = True

    def emit(out) -> tuple[int, np.ndarray, np.ndarray]:
        codes = out[:, 1:]
        pcm = np.asarray(codec.decode_step(codes[:, :, None]), np.float32).reshape(-1)
        return int(out[0, 0]), codes[0].copy(), pcm

    for frame in frames:
        codes = codec.encode_step(np.asarray(frame, np.float32).reshape(1, FRAME))[:, :k, 0]
        if first:
            lm.step(codes)  # read the first frame: see the module docstring
            first = False
        out = lm.step(codes)
        if out is not None:
            yield emit(out)
    if first or not end:
        return
    out = lm.step_end_of_input()
    if out is not None:
        item = emit(out)
        yield item
        if item[0] == tr.eos_id:
            return
    silence = np.zeros((1, FRAME), np.float32)
    for _ in range(int(round(tail_seconds / FRAME_SECONDS))):
        out = lm.step(codec.encode_step(silence)[:, :k, 0])
        if out is None:
            continue
        item = emit(out)
        yield item
        if item[0] == tr.eos_id:
            return


# ---------------------------------------------------------------- long input


def frames_of(pcm: np.ndarray) -> Iterator[np.ndarray]:
    """[n] -> 1920-sample frames, the last zero-padded."""
    n = -(-pcm.size // FRAME)
    padded = np.zeros(n * FRAME, np.float32)
    padded[: pcm.size] = pcm
    for i in range(n):
        yield padded[i * FRAME : (i + 1) * FRAME]


def quietest_cut(pcm: np.ndarray, lo: int, hi: int, window: int = 5) -> int:
    """The frame boundary (in samples) in ``[lo, hi]`` frames at the middle of the quietest
    ``window`` frames (mean energy): where a pause is."""
    n = pcm.size // FRAME
    hi = min(hi, n)
    if hi <= lo:
        return hi * FRAME
    energy = np.square(pcm[: n * FRAME].reshape(n, FRAME), dtype=np.float64).mean(axis=1)
    smooth = np.convolve(energy, np.ones(window) / window, mode="same")
    best = lo + int(np.argmin(smooth[lo:hi]))
    return max(best, 1) * FRAME


def pieces_of(blocks: Iterable[np.ndarray], max_seconds: float, min_seconds: float) -> Iterator[np.ndarray]:
    """Cut a stream of mono blocks into pieces of at most ``max_seconds``, at pauses after
    ``min_seconds``; holds at most one piece (plus a block) in memory."""
    max_n = max(1, int(max_seconds / FRAME_SECONDS)) * FRAME
    lo = max(1, int(min_seconds / FRAME_SECONDS))
    parts: list[np.ndarray] = []
    have = 0
    for block in blocks:
        block = np.asarray(block, np.float32).reshape(-1)
        parts.append(block)
        have += block.size
        while have >= max_n:
            buf = np.concatenate(parts)
            cut = quietest_cut(buf[:max_n], lo, max_n // FRAME)
            yield buf[:cut]
            parts, have = [buf[cut:]], buf.size - cut
    if have:
        yield np.concatenate(parts)


# ---------------------------------------------------------------- a whole input


@dataclass
class TranslateOptions:
    formats: list[str] = field(default_factory=lambda: ["wav", "json"])
    overwrite: bool = False
    max_piece_seconds: float = 110.0  # Hibiki was trained on clips of up to ~2 minutes
    min_piece_seconds: float = 60.0
    tail_seconds: float = 12.0  # at most this long after the end of input, waiting for EOS
    keep_tokens: bool = False  # keep every step's text token and audio codes (parity tests)


@dataclass
class Translation:
    """What a run produced: timed text pieces of the translation, durations, pieces cut."""

    source: str
    duration: float  # input seconds
    output_seconds: float = 0.0
    pieces: list[dict] = field(default_factory=list)  # {"time", "text"} on the output timeline
    cuts: list[float] = field(default_factory=list)  # where the input was cut (input seconds)
    steps: int = 0
    tokens: list[int] = field(default_factory=list)  # with keep_tokens
    codes: list[np.ndarray] = field(default_factory=list)  # with keep_tokens
    model: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(p["text"] for p in self.pieces).strip()

    def transcript(self) -> Transcript:
        """The translation's words and subtitle segments, for json/srt/vtt/txt."""
        words: list[Word] = []
        new_word = True  # a space (even in a piece of its own) ends the word before it
        for p in self.pieces:
            t, text = p["time"], p["text"]
            new_word = new_word or text.startswith(" ")
            if not text.strip():
                continue
            if new_word or not words:
                words.append(Word(text.strip(), t, t + FRAME_SECONDS))
            else:
                words[-1].text += text
                words[-1].end = t + FRAME_SECONDS
            new_word = text.endswith(" ")
        segments: list[Segment] = segment(words)
        return Transcript(self.source, self.output_seconds, words, segments, [],
                          dict(self.model, input_seconds=round(self.duration, 3),
                               cuts=[round(c, 3) for c in self.cuts]))


def translate_stream(tr: Translator, blocks: Iterable[np.ndarray], *, source: str = "<audio>",
                     opts: TranslateOptions | None = None,
                     write: Callable[[np.ndarray, np.ndarray], None] | None = None,
                     on_audio: Callable[[float], None] | None = None,
                     on_text: Callable[[str], None] | None = None) -> Translation:
    """Translate mono 24 kHz ``blocks``; ``write(original, translation)`` receives aligned
    blocks of the two timelines as they are produced (equal lengths)."""
    opts = opts or TranslateOptions()
    piece = piece_decoder(tr.tokenizer)
    result = Translation(source, 0.0, model=tr.describe())
    clock = 0  # output timeline, in frames
    consumed = 0  # input samples
    for pcm in pieces_of(blocks, opts.max_piece_seconds, opts.min_piece_seconds):
        if consumed:
            result.cuts.append(consumed / SAMPLE_RATE)
        n_in = -(-pcm.size // FRAME)
        original = np.zeros(n_in * FRAME, np.float32)
        original[: pcm.size] = pcm
        j = 0
        for token, codes, audio in translate_frames(tr, _counted(frames_of(pcm), on_audio, pcm.size),
                                                    tail_seconds=opts.tail_seconds):
            left = original[j * FRAME : (j + 1) * FRAME]
            if write is not None:
                write(np.pad(left, (0, FRAME - left.size)), audio)
            text = piece(token)
            if text:
                result.pieces.append({"time": round((clock + j) * FRAME_SECONDS, 3), "text": text})
                if on_text is not None:
                    on_text(text)
            if opts.keep_tokens:
                result.tokens.append(token)
                result.codes.append(codes)
            j += 1
        if j < n_in and write is not None:  # the translation came out shorter than its original
            rest = original[j * FRAME :]
            write(rest, np.zeros_like(rest))
        clock += max(j, n_in)
        result.steps += j
        consumed += pcm.size
    result.duration = consumed / SAMPLE_RATE
    result.output_seconds = clock * FRAME_SECONDS
    return result


def _counted(frames: Iterator[np.ndarray], on_audio, total: int) -> Iterator[np.ndarray]:
    left = total
    for f in frames:
        if on_audio is not None:
            on_audio(min(FRAME, left) / SAMPLE_RATE)
        left -= FRAME
        yield f


# ---------------------------------------------------------------- files


def output_paths(job_output: Path, formats: Sequence[str]) -> list[Path]:
    return [job_output.with_suffix(f".{fmt}") for fmt in formats]


def translate_file(tr: Translator, source: str, *, audio_out: Path | Sequence[Path] | None = None,
                   text_outs: Sequence[Path] = (), stereo_out: Path | None = None,
                   opts: TranslateOptions | None = None, on_audio=None, on_text=None) -> Translation:
    """Translate one file: the translated audio (24 kHz mono; one path or several, one per audio
    format), the timed text in every format its suffix names, the original/translation stereo
    pair; all written atomically, as the audio is produced."""
    from contextlib import ExitStack

    from .atomic import write_text
    from .audio import AudioWriter, open_audio

    for p in text_outs:
        if Path(p).suffix.lstrip(".").lower() not in TEXT_FORMATS:
            raise OutputError(f"{p}: the text of a translation is written as {', '.join(TEXT_FORMATS)}")
    src = open_audio(source)
    try:
        with ExitStack() as stack:
            audio_outs = [audio_out] if isinstance(audio_out, (str, Path)) else list(audio_out or ())
            monos = [stack.enter_context(AudioWriter(Path(p), SAMPLE_RATE, 1)) for p in audio_outs]
            both = stack.enter_context(AudioWriter(Path(stereo_out), SAMPLE_RATE, 2)) if stereo_out else None

            def write(original: np.ndarray, translation: np.ndarray) -> None:
                for mono in monos:
                    mono.write(translation[None])
                if both is not None:
                    both.write(np.stack([original, translation]))

            blocks = _read(src, str(source))
            result = translate_stream(tr, blocks, source=str(source), opts=opts, write=write,
                                      on_audio=on_audio, on_text=on_text)
    finally:
        src.close()
    transcript = result.transcript()
    for p in text_outs:
        write_text(Path(p), render(transcript, Path(p).suffix.lstrip(".").lower()))
    return result


def _read(src, source: str) -> Iterator[np.ndarray]:
    """The file's mono 24 kHz blocks; a file that breaks mid-read is one AudioError naming it
    (no partial output is left: the writers are still open when it is raised)."""
    from .audio import stream_24k

    try:
        for b in stream_24k(src, "mix", seconds=2.0):
            yield b[0]
    except MoshikitError:
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"{source}: cannot read audio ({str(exc).splitlines()[0]})") from None


def translate_files(jobs: Sequence, tr: Translator, opts: TranslateOptions | None = None,
                    on_audio: Callable[[float], None] | None = None,
                    on_text: Callable[[str], None] | None = None) -> Iterator:
    """Translate planned jobs (``filejobs.plan``), one output per format each; yield FileResults.
    Inputs whose outputs are all kept are skipped (a rerun resumes: see ``filejobs.skip_result``);
    a bad input fails alone."""
    from .filejobs import FileResult, job_failed, skip_result

    opts = opts or TranslateOptions()
    for job in jobs:
        outs = output_paths(job.output, opts.formats)
        kept = skip_result(job, outs, opts.overwrite)
        if kept is not None:
            yield kept
            continue
        audio = [p for p, f in zip(outs, opts.formats) if f in AUDIO_FORMATS]
        text = [p for p, f in zip(outs, opts.formats) if f not in AUDIO_FORMATS]
        started = time.perf_counter()
        try:
            r = translate_file(tr, job.source, audio_out=audio, text_outs=text, opts=opts, on_audio=on_audio,
                               on_text=on_text)
        except OutputError as exc:
            yield job_failed(job, exc)
            continue
        except MoshikitError as exc:
            yield FileResult(job.source, None, "failed", str(exc))
            continue
        yield FileResult(job.source, str(outs[0]), "done", audio_seconds=r.duration, frames=r.steps,
                         seconds=time.perf_counter() - started)


__all__ = ["AUDIO_FORMATS", "TEXT_FORMATS", "TranslateOptions", "Translation", "Translator",
           "check_hibiki_config", "load_translator", "pieces_of", "quietest_cut", "translate_file",
           "translate_files", "translate_frames", "translate_stream"]
