"""moshi-server's streaming text-to-speech protocol (``/api/tts_streaming``), as Kyutai's Rust server
speaks it and ``scripts/tts_rust_server.py`` in delayed-streams-modeling uses it.

A WebSocket, ``?voice=NAME&format=FORMAT`` (``auth_id=`` for the key, checked by the app).
In, binary msgpack maps: ``{"type": "Text", "text": "..."}`` (one word or several) and
``{"type": "Eos"}``; a plain text WebSocket message is text too, and the single byte ``0x00`` is
the end of the text. Out, by ``format``:

* ``PcmMessagePack``: msgpack maps ``{"type": "Ready"}`` first, then ``{"type": "Audio", "pcm":
  [1920 floats, 24 kHz]}`` per 80 ms frame and ``{"type": "Text", "text", "start_s", "stop_s"}``
  per word once its end is known; ``{"type": "Error", "message"}`` on a refusal.
* ``OggOpusMessagePack``: the same, audio as ``{"type": "OggOpus", "data": bytes}`` (the Ogg
  stream's header first).
* ``Pcm``: binary messages of raw float32 little-endian samples; no words, no Ready.
* ``OggOpus`` (the Rust server's default): binary pieces of one Ogg Opus stream; no words.

The server closes the WebSocket once the audio of the last word has been sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMATS = ("PcmMessagePack", "OggOpusMessagePack", "Pcm", "OggOpus")
DEFAULT_FORMAT = "OggOpus"  # moshi-server's default when no format= is given
END_OF_STREAM = b"\x00"


class ProtocolError(ValueError):
    """A client message this protocol does not allow (one line, safe to log once escaped)."""


@dataclass(frozen=True)
class TextIn:
    text: str


@dataclass(frozen=True)
class EosIn:
    pass


def parse_format(value: str | None) -> str:
    """``format=`` as one of ``FORMATS`` (None: the default); ProtocolError naming the valid ones."""
    if value is None or value == "":
        return DEFAULT_FORMAT
    if value not in FORMATS:
        raise ProtocolError(f"unknown format {value[:40]!r}: use one of {', '.join(FORMATS)}")
    return value


def parse_message(data: bytes | str, *, max_text: int) -> TextIn | EosIn:
    """One client message; ProtocolError for anything else (a voice embedding included)."""
    import msgpack

    if isinstance(data, str):
        if len(data) > max_text:
            raise ProtocolError(f"a text message of {len(data)} characters (at most {max_text})")
        return TextIn(data)
    if data == END_OF_STREAM:
        return EosIn()
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001 - any undecodable bytes are one refusal
        raise ProtocolError("not a msgpack message") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a msgpack map with a \"type\"")
    kind = msg.get("type")
    if kind == "Eos":
        return EosIn()
    if kind == "Text":
        text = msg.get("text")
        if not isinstance(text, str):
            raise ProtocolError("a Text message needs a \"text\" string")
        if len(text) > max_text:
            raise ProtocolError(f"a text message of {len(text)} characters (at most {max_text})")
        return TextIn(text)
    if kind == "Voice":
        raise ProtocolError("voice embeddings sent over the socket are not supported: name a voice with ?voice=")
    raise ProtocolError(f"unknown message type {str(kind)[:40]!r} (expected Text or Eos)")


def _pack(obj) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True, use_single_float=True)


class Encoder:
    """What the server sends for one stream in ``format``: each method returns the messages to send."""

    def __init__(self, format: str) -> None:
        self.format = parse_format(format)
        self.packed = self.format.endswith("MessagePack")
        self._opus = None
        if self.format.startswith("OggOpus"):
            from ..wire import OpusEncoder

            self._opus = OpusEncoder()

    def ready(self) -> list[bytes]:
        return [_pack({"type": "Ready"})] if self.packed else []

    def audio(self, pcm: np.ndarray) -> list[bytes]:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if self._opus is not None:
            data = self._opus.encode(pcm)
            if not data:
                return []
            return [_pack({"type": "OggOpus", "data": data})] if self.packed else [data]
        if self.packed:
            return [_pack({"type": "Audio", "pcm": pcm.tolist()})]
        return [pcm.astype("<f4").tobytes()]

    def word(self, text: str, start: float, stop: float) -> list[bytes]:
        if not self.packed:
            return []
        return [_pack({"type": "Text", "text": text, "start_s": float(start), "stop_s": float(stop)})]

    def error(self, message: str) -> list[bytes]:
        return [_pack({"type": "Error", "message": message})] if self.packed else []
