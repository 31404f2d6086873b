"""Kyutai text-to-speech (``moshikit speak``): loading, voices, text chunks, generation, files."""

from __future__ import annotations

from .engine import Settings, Speech, WordTime, generate
from .model import TtsModel
from .text import Chunk, chunks, dialogue_chunks, read_dialogue, sentences
from .voices import Voice, list_voices, resolve_voice

__all__ = ["Chunk", "Settings", "Speech", "TtsModel", "Voice", "WordTime", "chunks", "dialogue_chunks",
           "generate", "list_voices", "load_tts", "read_dialogue", "resolve_voice", "sentences", "tts_choice",
           "voices_of"]


def load_tts(model: str | None = None, *, backend: str | None = None, device: str | None = None,
             dtype: str | None = None, revision: str | None = None, **options):
    """Load a TTS model on ``backend`` (None/``auto``: the platform's choice; see
    ``platform.default_tts``) through the registry: a ``backends.base.TTSBackend``."""
    from ..backends import registry

    choice = tts_choice(model, backend, device)
    dev = None if choice.device in (None, "auto") else choice.device
    return registry.module("tts", choice.backend).load(model, device=dev, dtype=dtype, revision=revision,
                                                       **options)


def voices_of(model: str | None = None, *, backend: str | None = None,
              revision: str | None = None) -> tuple[str, list[str], str]:
    """(model name, voice names, where they were found) without loading any weights (``--list-voices``)."""
    from ..backends import registry

    choice = tts_choice(model, backend, None)
    return registry.module("tts", choice.backend).voices(model, revision=revision)


def pocket_backend(model: str | None, backend: str | None) -> str | None:
    """A Pocket TTS model name (``pocket-tts``, ``pocket``) implies ``-b pocket``; another backend cannot run it."""
    from .pocket import is_pocket_name

    if not is_pocket_name(model):
        return backend
    if backend not in (None, "auto", "pocket"):
        from ..errors import UsageError

        raise UsageError(f"--model {model} runs on the pocket backend, not {backend}", hint="use -b pocket")
    return "pocket"


def tts_choice(model: str | None, backend: str | None, device: str | None, default=None):
    """The backend and device ``speak`` runs ``model`` on: a Pocket TTS name implies pocket; with
    no backend, ``default()`` (``platform.default_tts`` for this model: with no model on a machine
    without a GPU, Pocket TTS when it is installed), the function ``moshikit info`` shows too."""
    from .. import platform

    return platform.resolve("tts", pocket_backend(model, backend), device,
                            default=default or (lambda: platform.default_tts(model=model)))
