"""Audio in and out: streaming reads at any rate, exact streaming resampling, atomic writes.

Reading goes block by block so that an hour-long file never sits whole in
memory. Resampling to Mimi's 24 kHz uses soxr's streaming resampler, whose
output is identical whether it is fed in blocks or all at once, so a chunked
encode sees exactly the samples a whole-file encode sees.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import CheckedFile, atomic_path, clean_stale_partials, output_error, partial_path  # noqa: F401
from .errors import AudioError
from .inputs import check_regular

TARGET_RATE = 24000
#: Extensions a directory walk picks up by default.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga", ".aiff", ".aif", ".au", ".m4a", ".aac", ".webm")
WRITE_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "opus": "OGG", "mp3": "MP3"}
#: libsndfile subtypes where the container's default is not the one wanted (.opus: Ogg Opus).
WRITE_SUBTYPES = {"wav": "PCM_16", "flac": "PCM_16", "opus": "OPUS"}
#: The sample rates the Opus codec takes.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_BLOCK_SECONDS = 10.0


@dataclass
class AudioSource:
    """An opened audio input. ``frames`` is the length in samples at ``sample_rate``."""

    name: str
    sample_rate: int
    channels: int
    frames: int
    _reader: object
    _kind: str  # "soundfile" | "sphn"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    @property
    def target_frames(self) -> int:
        """Samples after resampling to 24 kHz (what a decode gives back)."""
        if self.sample_rate == TARGET_RATE:
            return self.frames
        return int(round(self.frames * TARGET_RATE / self.sample_rate))

    def blocks(self, seconds: float = _BLOCK_SECONDS) -> Iterator[np.ndarray]:
        """Native-rate float32 blocks shaped [channels, n]."""
        n = max(1, int(seconds * self.sample_rate))
        if self._kind == "soundfile":
            f = self._reader
            f.seek(0)
            for block in f.blocks(blocksize=n, dtype="float32", always_2d=True):
                yield np.ascontiguousarray(block.T)
        else:
            start = 0.0
            while start < self.duration:
                data = self._reader.decode(start, seconds)
                if data.shape[-1] == 0:
                    break
                yield np.asarray(data, dtype=np.float32).reshape(self.channels, -1)
                start += seconds

    def close(self) -> None:
        close = getattr(self._reader, "close", None)
        if close:
            close()


def open_audio(path: str | os.PathLike) -> AudioSource:
    """Open a file (or ``-`` for standard input) without decoding it whole."""
    import soundfile as sf

    name = str(path)
    if name == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise AudioError("-: standard input is empty")
        target: object = io.BytesIO(data)
        name = "<stdin>"
    else:
        if not os.path.exists(name):
            raise AudioError(f"{name}: no such file")
        if os.path.isdir(name):
            raise AudioError(f"{name}: is a directory")
        check_regular(name, AudioError)  # a FIFO would block the open, a device never end
        target = name
    try:
        f = sf.SoundFile(target)
        src = AudioSource(name, int(f.samplerate), int(f.channels), int(f.frames), f, "soundfile")
    except Exception as sf_exc:  # libsndfile cannot read it: try symphonia (sphn)
        if not isinstance(target, str):
            raise AudioError(f"{name}: not a readable audio file ({_reason(sf_exc)})") from None
        try:
            import sphn

            r = sphn.FileReader(target)
            frames = int(round(r.duration_sec * r.sample_rate))
            src = AudioSource(name, int(r.sample_rate), int(r.channels), frames, r, "sphn")
        except Exception:
            raise AudioError(f"{name}: not a readable audio file ({_reason(sf_exc)})") from None
    if src.frames <= 0 or src.channels <= 0:
        src.close()
        raise AudioError(f"{name}: the audio is empty (0 samples)")
    return src


def is_audio_file(path: str | os.PathLike) -> bool:
    """Whether libsndfile reads ``path``'s header as audio (a kept output, checked on a rerun)."""
    import soundfile as sf

    try:
        sf.info(os.fspath(path))
    except Exception:  # noqa: BLE001 - libsndfile raises several kinds for a file it cannot read
        return False
    return True


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    text = text[-1] if text else type(exc).__name__
    if "Format not recognised" in text or "unknown format" in text.lower():
        return "format not recognised"
    return text[:120]


class Resampler:
    """Streaming resampler to 24 kHz for ``channels`` channels; identity at 24 kHz."""

    def __init__(self, rate: int, channels: int) -> None:
        self._stream = None
        if rate != TARGET_RATE:
            import soxr

            self._stream = soxr.ResampleStream(rate, TARGET_RATE, channels, dtype="float32", quality="HQ")

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return block
        out = self._stream.resample_chunk(np.ascontiguousarray(block.T), last=last)
        return np.ascontiguousarray(out.T).reshape(block.shape[0], -1)


def drain_into(blocks, out: np.ndarray) -> int:
    """Fill ``out`` from the front of ``blocks`` (a deque of 1-D float32 arrays, consumed: the
    first one only in part when ``out`` ends inside it); what is left of ``out`` is silence.
    Returns the samples taken. A playback queue's step (sound-card callbacks, a paced sender)."""
    filled = 0
    n = out.shape[0]
    while filled < n and blocks:
        block = blocks[0]
        k = min(n - filled, block.size)
        out[filled:filled + k] = block[:k]
        filled += k
        if k == block.size:
            blocks.popleft()
        else:
            blocks[0] = block[k:]
    out[filled:] = 0
    return filled


def mix(block: np.ndarray, channels: str) -> np.ndarray:
    """[C, n] -> [C', n]: ``mix`` averages to mono, ``split`` keeps each channel."""
    if channels == "split" or block.shape[0] == 1:
        return block
    return block.mean(axis=0, keepdims=True)


def stream_24k(src: AudioSource, channels: str = "mix", seconds: float = _BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Blocks of [C', n] float32 at 24 kHz, exactly ``src.target_frames`` samples in all."""
    out_channels = src.channels if channels == "split" else 1
    resample = Resampler(src.sample_rate, out_channels)
    produced, want = 0, src.target_frames
    for block in src.blocks(seconds):
        y = resample(mix(block, channels))
        if y.shape[-1]:
            y = y[:, : want - produced]
            produced += y.shape[-1]
            yield y
    tail = resample(np.zeros((out_channels, 0), np.float32), last=True)[:, : want - produced]
    produced += tail.shape[-1]
    if tail.shape[-1]:
        yield tail
    if produced < want:  # a resampler may come up a sample or two short
        yield np.zeros((out_channels, want - produced), np.float32)


def read_24k(path: str | os.PathLike, channels: str = "mix") -> np.ndarray:
    """Whole file as [C', n] float32 at 24 kHz (for short files and tests)."""
    src = open_audio(path)
    try:
        return np.concatenate(list(stream_24k(src, channels)), axis=-1)
    finally:
        src.close()


def audio_format(path: Path, fmt: str | None = None) -> str:
    ext = (fmt or path.suffix.lstrip(".")).lower()
    if ext not in WRITE_FORMATS:
        raise AudioError(f"{path}: cannot write audio format {ext!r} (choose {', '.join(WRITE_FORMATS)})")
    return ext


class AudioWriter:
    """Writes [C, n] float32 blocks to ``path`` atomically (use as a context manager).

    libsndfile writes through ``CheckedFile`` so that an OS failure (a full disk...) comes
    out as the OS said it, as an ``OutputError`` naming ``path``, not "System error.".
    """

    def __init__(self, path: Path, sample_rate: int, channels: int, fmt: str | None = None) -> None:
        self.path = Path(path)
        self._fmt = audio_format(self.path, fmt)
        if self._fmt == "opus" and sample_rate not in OPUS_RATES:
            raise AudioError(f"{path}: Opus cannot store {sample_rate} Hz audio "
                             f"(it takes {', '.join(str(r) for r in OPUS_RATES)} Hz)",
                             hint="write .ogg (Vorbis), .flac or .wav instead")
        self._rate, self._channels = sample_rate, channels
        self._ctx = atomic_path(self.path)
        self._raw: CheckedFile | None = None
        self._file = None

    def __enter__(self) -> "AudioWriter":
        import soundfile as sf

        tmp = self._ctx.__enter__()
        try:
            self._raw = CheckedFile(tmp)
            subtype = WRITE_SUBTYPES.get(self._fmt)
            self._file = sf.SoundFile(self._raw, "w", samplerate=self._rate, channels=self._channels,
                                      format=WRITE_FORMATS[self._fmt], subtype=subtype)
            self._check()
        except BaseException:
            self._close_quietly()
            if not self._ctx.__exit__(*sys.exc_info()):
                raise
        return self

    def _check(self, exc: BaseException | None = None) -> None:
        """Raise the OS error libsndfile met, if any, as one line naming the output."""
        if self._raw is not None and self._raw.error is not None:
            err = output_error(self.path, self._raw.error)
            if err is not None:
                raise err from None
            raise self._raw.error
        if exc is not None:
            raise exc

    def write(self, block: np.ndarray) -> None:
        try:
            self._file.write(np.clip(block.T, -1.0, 1.0))
        except Exception as exc:  # LibsndfileError "System error.", or a short write
            self._check(exc)
        self._check()

    def _close_quietly(self) -> None:
        for f in (self._file, self._raw):
            if f is not None:
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - already failing: the first error is the one to show
                    pass
        self._file = self._raw = None

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self._close_quietly()
            self._ctx.__exit__(*exc)
            return
        try:
            try:
                self._file.close()  # the header's final sizes are written here
            except Exception as err:  # noqa: BLE001
                self._check(err)
            self._check()
            self._raw.close()
        except BaseException:
            self._close_quietly()
            if not self._ctx.__exit__(*sys.exc_info()):
                raise
            return
        self._file = self._raw = None
        self._ctx.__exit__(None, None, None)
