"""Audio for ``POST /v1/audio/speech`` in OpenAI's ``response_format``s, encoded as it is generated.

* ``wav``: 16-bit PCM with an open-ended header (data and RIFF sizes 0xFFFFFFFF, as OpenAI's API
  and moshi-server stream it), then the samples as they come.
* ``pcm``: raw 16-bit little-endian samples, 24 kHz mono (OpenAI's ``pcm``).
* ``opus``: an Ogg Opus stream (sphn, 80 ms pages).
* ``mp3``: MPEG layer III through libsndfile (LAME), written to a sink that sends every byte as it is
  encoded; the one header rewrite libsndfile does at the end (its LAME tag) is dropped, so the
  stream starts with one silent frame, which decoders play as such.
* ``flac``: libsndfile's FLAC, sent whole once the speech is done: FLAC's header holds the length,
  and a streamed FLAC without it is refused by libsndfile and sphn readers.
"""

from __future__ import annotations

import struct

import numpy as np

SAMPLE_RATE = 24000
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SUPPORTED = ("wav", "mp3", "opus", "flac", "pcm")
CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "opus": "audio/ogg", "mp3": "audio/mpeg",
                 "flac": "audio/flac"}
#: Formats whose bytes leave as the audio is generated (flac comes at the end).
STREAMED = ("wav", "pcm", "opus", "mp3")


def s16(pcm: np.ndarray) -> bytes:
    return (np.clip(np.asarray(pcm, np.float32).reshape(-1), -1, 1) * 32767).round().astype("<i2").tobytes()


def wav_header(rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """A 44-byte WAV header for 16-bit PCM of unknown length (sizes 0xFFFFFFFF)."""
    block = channels * 2
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


class _Sink:
    """A file for libsndfile that hands on every byte written at its end; writes after a seek back
    (header fixes at close) are dropped."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.pos = self.size = 0

    def write(self, data) -> int:
        data = bytes(data)
        if self.pos == self.size:
            self.out += data
        self.pos += len(data)
        self.size = max(self.size, self.pos)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        return b""

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


class SpeechEncoder:
    """``write(pcm)`` and ``close()`` return the bytes to send next (possibly empty)."""

    def __init__(self, fmt: str, rate: int = SAMPLE_RATE) -> None:
        if fmt not in SUPPORTED:
            raise ValueError(f"response_format {fmt!r}")
        self.fmt, self.rate = fmt, rate
        self.content_type = CONTENT_TYPES[fmt]
        self._opus = self._sf = self._sink = None
        self._head = b""
        self._samples = 0
        if fmt == "wav":
            self._head = wav_header(rate)
        elif fmt == "opus":
            from ..wire import OpusEncoder

            self._opus = OpusEncoder()
        elif fmt in ("mp3", "flac"):
            import io

            import soundfile as sf

            self._sink = _Sink() if fmt == "mp3" else io.BytesIO()
            self._sf = sf.SoundFile(self._sink, mode="w", samplerate=rate, channels=1, format=fmt.upper(),
                                    subtype="PCM_16" if fmt == "flac" else None)

    def start(self) -> bytes:
        head, self._head = self._head, b""
        return head

    def write(self, pcm: np.ndarray) -> bytes:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if self.fmt in ("wav", "pcm"):
            return self.start() + s16(pcm)
        if self._opus is not None:
            self._samples += pcm.size
            return self._opus.encode(pcm)
        self._sf.write(np.clip(pcm, -1, 1))
        return self._sink.take() if self.fmt == "mp3" else b""

    def close(self) -> bytes:
        if self._opus is not None:
            rest = -self._samples % 1920  # the last partial 80 ms page, completed with silence
            return self._opus.encode(np.zeros(rest, np.float32)) if rest else b""
        if self._sf is None:
            return self.start()
        self._sf.close()
        self._sf = None
        if self.fmt == "mp3":
            return self._sink.take()
        return self._sink.getvalue()
