"""moshi-server's streaming speech-to-text protocol (``/api/asr-streaming``): the messages.

Every message is one binary WebSocket frame holding a msgpack map with a ``type`` (as Kyutai's
Rust server reads and writes them, ``asr.rs``; its clients are the scripts of
kyutai-labs/delayed-streams-modeling). Client to server: ``Audio`` (``pcm``: floats, 24 kHz
mono), ``Marker`` (``id``: an integer, echoed back once the audio sent before it has been
transcribed), ``Init`` (accepted; the server has already reset the stream). Server to client:
``Ready``, ``Word`` (``text``, ``start_time``), ``EndWord`` (``stop_time``), ``Step``
(``step_idx``, ``prs``: the pause heads' probabilities, ``buffered_pcm``), ``Marker``, ``Error``
(``message``).
"""

from __future__ import annotations

import numpy as np

#: Samples one ``Audio`` message may hold (moshi-server takes any; Kyutai's script sends 1 s of
#: silence at once, so 10 s leaves room while bounding what one message makes the server hold).
MAX_AUDIO_SAMPLES = 240_000
#: Bytes of one message: 10 s of float64 samples in msgpack, plus room.
MAX_MESSAGE_BYTES = MAX_AUDIO_SAMPLES * 9 + 4096


class ProtocolError(ValueError):
    """A message this server cannot take; its text is safe to send back (no client text in it).
    ``code``: the WebSocket close code (1003: not msgpack, 1009: too large, 1008: anything else)."""

    def __init__(self, message: str, code: int = 1008) -> None:
        super().__init__(message)
        self.code = code


def pack(msg: dict) -> bytes:
    import msgpack

    return msgpack.packb(msg, use_bin_type=True)


def unpack(data: bytes) -> dict:
    """A client message, checked: ``{"type": "Audio", "pcm": float32 array}``, ``{"type": "Marker",
    "id": int}`` or ``{"type": "Init"}``. Raises ``ProtocolError`` for anything else."""
    import msgpack

    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError("messages must be binary msgpack", 1003)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message too large ({len(data)} bytes, at most {MAX_MESSAGE_BYTES})", 1009)
    try:
        msg = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, max_array_len=MAX_AUDIO_SAMPLES,
                              max_map_len=16, max_str_len=1024, max_bin_len=MAX_AUDIO_SAMPLES * 4)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError, TypeError) as exc:
        if "exceeds max" in str(exc):  # msgpack's own bounds (an array, a string too long)
            raise ProtocolError("message too large (a field holds too many items)", 1009) from None
        raise ProtocolError(f"not a msgpack message ({type(exc).__name__})", 1003) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("a message must be a msgpack map with a 'type'")
    kind = msg["type"]
    if kind == "Audio":
        return {"type": "Audio", "pcm": _pcm(msg.get("pcm"))}
    if kind == "Marker":
        mid = msg.get("id")
        if isinstance(mid, bool) or not isinstance(mid, int) or not -(2 ** 63) <= mid < 2 ** 63:
            raise ProtocolError("Marker needs an integer 'id'")
        return {"type": "Marker", "id": mid}
    if kind == "Init":
        return {"type": "Init"}
    if kind == "OggOpus":
        raise ProtocolError("OggOpus audio is not supported by this server: send Audio (pcm floats, 24 kHz)")
    raise ProtocolError("unknown message type (expected Audio, Marker or Init)")


def _pcm(value) -> np.ndarray:
    if isinstance(value, (bytes, bytearray)):  # raw little-endian float32, as some clients pack arrays
        if len(value) % 4:
            raise ProtocolError("Audio 'pcm' bytes must hold float32 samples")
        x = np.frombuffer(bytes(value), "<f4").astype(np.float32)
    elif isinstance(value, list):
        try:
            x = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ProtocolError("Audio 'pcm' must be a list of numbers") from None
        if x.ndim != 1:
            raise ProtocolError("Audio 'pcm' must be a flat list of numbers")
    else:
        raise ProtocolError("Audio needs 'pcm': a list of float samples at 24 kHz")
    if x.size > MAX_AUDIO_SAMPLES:
        raise ProtocolError(f"Audio message too long ({x.size} samples, at most {MAX_AUDIO_SAMPLES})")
    if not np.isfinite(x).all():
        raise ProtocolError("Audio 'pcm' holds NaN or infinite samples")
    return x


def ready() -> dict:
    return {"type": "Ready"}


def error(message: str) -> dict:
    return {"type": "Error", "message": message}


def marker(mid: int) -> dict:
    return {"type": "Marker", "id": int(mid)}


def step(step_idx: int, prs: list[float], buffered_pcm: int) -> dict:
    return {"type": "Step", "step_idx": int(step_idx), "prs": [float(p) for p in prs],
            "buffered_pcm": int(buffered_pcm)}
