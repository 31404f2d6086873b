"""moshikit: one toolkit for Kyutai's Moshi stack (Mimi codec, Moshi, Kyutai STT).

The Python API (see ``moshikit.api`` and docs/api.md) is imported on first use, so
``import moshikit`` loads neither torch nor mlx:

    import moshikit
    codes = moshikit.load_codec().encode("speech.wav")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

# Before any moshikit module can import moshi: moshi reads its switches at import time.
from .backends import torch_env as _torch_env  # noqa: E402

_torch_env.prepare()

_API = {
    "load_codec": "moshikit.api", "load_stt": "moshikit.api", "load_moshi": "moshikit.api",
    "MimiCodec": "moshikit.api", "SpeechToText": "moshikit.api", "load_tts": "moshikit.api",
    "TextToSpeech": "moshikit.api",
    "read_tokens": "moshikit.tokens", "write_tokens": "moshikit.tokens", "TokenHeader": "moshikit.tokens",
    "Tokens": "moshikit.tokens", "Transcript": "moshikit.transcript", "Word": "moshikit.transcript",
    "Conversation": "moshikit.conversation", "MoshikitError": "moshikit.errors",
}
__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from .api import MimiCodec, SpeechToText, TextToSpeech, load_codec, load_moshi, load_stt, load_tts
    from .conversation import Conversation
    from .errors import MoshikitError
    from .tokens import TokenHeader, Tokens, read_tokens, write_tokens
    from .transcript import Transcript, Word


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'moshikit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
