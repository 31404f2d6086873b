"""moshikit's Python API: the functions the commands call, for scripts and notebooks.

``import moshikit`` stays light (no torch, no mlx); a model's framework is imported when it
loads. Arrays in and out are numpy; audio is float32, any sample rate in, 24 kHz out.

    import moshikit
    codec = moshikit.load_codec()                  # Mimi, on the fastest backend here
    codes = codec.encode(audio, 16000)             # int64 [K, F] (12.5 frames a second)
    audio = codec.decode(codes)                    # float32 [T] at 24 kHz
    stt = moshikit.load_stt("stt")
    result = stt.transcribe("talk.wav")            # .text, .words, .segments
    tts = moshikit.load_tts("tts")
    audio, words = tts.speak("Hello there.", seed=1)   # float32 [T] at 24 kHz, word timings
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    from .codec import Codec
    from .conversation import Conversation
    from .stt import SttModel
    from .tokens import Tokens
    from .transcript import Transcript

#: A file path, or samples: mono ``[T]`` or ``[C, T]`` (channels are averaged).
Audio = Union[str, "os.PathLike[str]", np.ndarray]

SAMPLE_RATE = 24000


def to_24k_mono(audio: Audio, sample_rate: int | None = None) -> np.ndarray:
    """float32 ``[T]`` at 24 kHz from a file (any format moshikit reads) or an array at ``sample_rate``."""
    from .audio import Resampler, read_24k

    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError("sample_rate goes with an array; a file says its own rate")
        return read_24k(audio)[0]
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"audio must be [T] or [C, T], not an array of shape {np.shape(audio)}")
    rate = SAMPLE_RATE if sample_rate is None else int(sample_rate)
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(x)
    want = round(x.size * SAMPLE_RATE / rate)
    y = Resampler(rate, 1)(x[None], last=True)[0][:want]
    return np.pad(y, (0, want - y.size))


class MimiCodec:
    """A loaded Mimi codec: whole arrays in, whole arrays out (the commands stream files)."""

    def __init__(self, loaded: "Codec") -> None:
        self.loaded = loaded

    @property
    def backend(self) -> str:
        return self.loaded.info.backend

    @property
    def device(self) -> str:
        return self.loaded.info.device

    @property
    def num_codebooks(self) -> int:
        return self.loaded.info.num_codebooks

    @property
    def frame_rate(self) -> float:
        return self.loaded.info.frame_rate

    sample_rate = SAMPLE_RATE

    def encode(self, audio: Audio, sample_rate: int | None = None) -> np.ndarray:
        """Codes int64 ``[K, F]``, ``F = ceil(T / 1920)`` at 24 kHz; equal to ``moshikit encode``'s."""
        pcm = to_24k_mono(audio, sample_rate)
        return self.loaded.backend.encode(pcm[None])[0]

    def decode(self, codes: Union[np.ndarray, "Tokens"], num_samples: int | None = None) -> np.ndarray:
        """float32 ``[T]`` at 24 kHz. ``codes`` is ``[K, F]`` or what ``read_tokens`` returns (whose
        header gives the original length); ``num_samples`` cuts the output to that length."""
        from .tokens import Tokens

        if isinstance(codes, Tokens):
            if num_samples is None and codes.header.num_samples:
                num_samples = codes.header.num_samples
            codes = codes.codes[0]
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2:
            raise ValueError(f"codes must be [K, F], not an array of shape {codes.shape}")
        audio = self.loaded.backend.decode(codes[None])[0]
        return audio if num_samples is None else audio[:num_samples]


class SpeechToText:
    """A loaded Kyutai STT model."""

    def __init__(self, model: "SttModel") -> None:
        self.model = model

    def transcribe(self, audio: Audio, sample_rate: int | None = None) -> "Transcript":
        """Words with start and end times (``.text``, ``.words``, ``.segments``, ``.end_of_turn``)."""
        from .stt import transcribe_live

        pcm = to_24k_mono(audio, sample_rate)
        source = str(audio) if isinstance(audio, (str, os.PathLike)) else "<array>"
        return transcribe_live(self.model, iter([pcm]), source=source, chunk=25)


class TextToSpeech:
    """A loaded Kyutai TTS model."""

    def __init__(self, model) -> None:
        self.model = model

    def voices(self) -> list[str]:
        return self.model.list_voices()[0]

    def speak(self, text: str, voice: str | None = None, *, speed: float = 1.0, temp: float = 0.6,
              cfg: float = 2.0, seed: int | None = None) -> tuple[np.ndarray, list]:
        """(float32 ``[T]`` at 24 kHz, words with ``.text``, ``.start``, ``.end``), as ``moshikit speak``."""
        from .tts import Settings, chunks
        from .tts.model import padding_bonus

        pcm: list[np.ndarray] = []
        speech = self.model.generate(chunks([text]), [self.model.resolve_voice(voice)],
                          Settings(temp=temp, cfg=cfg, padding_bonus=padding_bonus(speed), seed=seed),
                          on_pcm=pcm.append)
        return (np.concatenate(pcm) if pcm else np.zeros(0, np.float32)), speech.words


def load_tts(model: str | None = "tts", backend: str = "auto", device: str | None = None,
             revision: str | None = None) -> TextToSpeech:
    """A TTS model (``tts``, ``tts-public``, a repo id, a local folder or ``"synthetic"``) on ``backend``
    (``auto``: the platform's choice, as ``moshikit speak``)."""
    from .tts import load_tts as load

    return TextToSpeech(load(model, backend=backend, device=device, revision=revision))


def load_codec(model: str | None = None, mimi_weight: str | None = None, backend: str = "auto",
               device: str | None = None, num_codebooks: int = 8, revision: str | None = None) -> MimiCodec:
    """Mimi from a catalog name, hub repo, local folder or ``"synthetic"`` (``model``), or a local
    ``.safetensors`` file (``mimi_weight``); ``backend``/``device`` as on the command line."""
    from .codec import load_codec as load

    return MimiCodec(load(backend, device, mimi_weight=mimi_weight, model=model, revision=revision,
                          num_codebooks=num_codebooks))


def load_stt(model: str | None = "stt", backend: str = "auto", device: str | None = None,
             revision: str | None = None) -> SpeechToText:
    """Kyutai STT (``stt``, ``stt-en``, a repo id, a local folder or ``"synthetic"``)."""
    from .stt import load_stt as load

    return SpeechToText(load(model, backend=backend, device=device, revision=revision))


def load_moshi(model: str | None = None, backend: str = "auto", device: str | None = None,
               revision: str | None = None) -> "Conversation":
    """Moshi as a :class:`~moshikit.conversation.Conversation`: ``step(pcm)`` takes one 80 ms frame
    (1920 samples at 24 kHz) of the user and returns Moshi's frame (``.pcm``, ``.text``)."""
    from .chat import load_chat

    return load_chat(model, backend=backend, device=device, revision=revision)
