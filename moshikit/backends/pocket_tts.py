"""Pocket TTS (Kyutai's ~100M-parameter CPU text-to-speech, ``pip install pocket-tts``) as a TTS backend.

One voice per run (a predefined voice, a saved voice state, or a voice sample to clone with the
gated weights), no Mimi tokens, no word timings, no CFG or pace control: see ``moshikit.tts.pocket``.
"""

from __future__ import annotations


def probe() -> str:
    """Finds pocket-tts and what it imports without importing it (its import sets torch to one thread)."""
    import importlib.util
    from importlib.metadata import version

    for mod in ("pocket_tts", "torch", "tokenizers", "scipy", "einops", "pydantic", "yaml"):
        if importlib.util.find_spec(mod) is None:
            raise ImportError(f"No module named {mod!r}")
    return f"pocket-tts {version('pocket-tts')}"


def load(model: str | None, *, device: str | None = None, dtype: str | None = None,
         revision: str | None = None, **options):
    """A ``PocketModel`` (``backends.base.TTSBackend``)."""
    from ..tts.pocket import load_pocket

    return load_pocket(model, device=device, dtype=dtype, revision=revision)


def voices(model: str | None, *, revision: str | None = None) -> tuple[str, list[str], str]:
    """(model name, voice names, where) without downloading the weights."""
    from ..tts.pocket import PREDEFINED_VOICES, OPEN_REPO, is_pocket_name, locate, voice_names

    if model is None or is_pocket_name(model):
        return "pocket-tts", list(PREDEFINED_VOICES), f"{OPEN_REPO} (pocket-tts's predefined voices)"
    files = locate(model, revision=revision)
    return (files.name, *voice_names(files))
