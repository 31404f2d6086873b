"""Kyutai TTS on PyTorch: moshi's own ``TTSModel`` (CUDA, MPS or CPU), driven by ``moshikit.tts.engine``.

Weights load through ``TTSModel.from_checkpoint_info`` with local paths (``tts.model``), so the
published repos and the synthetic checkpoint go through moshi's loader alike.
"""

from __future__ import annotations


def probe() -> str:
    import moshi
    import torch
    from moshi.models.tts import TTSModel  # noqa: F401 (moshi >= 0.2.9)

    return f"torch {torch.__version__}, moshi {moshi.__version__}"


def load(model: str | None, *, device: str | None = None, dtype: str | None = None,
         revision: str | None = None, **options):
    """A ``TtsModel`` (``backends.base.TTSBackend``)."""
    from ..tts.model import load_torch_tts

    return load_torch_tts(model, device=device, dtype=dtype, revision=revision, n_q=options.get("n_q"))


def voices(model: str | None, *, revision: str | None = None) -> tuple[str, list[str], str]:
    """(model name, voice names, where) from the checkpoint's config.json alone."""
    from ..tts.model import checkpoint_voices
    from ..tts.voices import list_voices

    found = checkpoint_voices(model, revision=revision)
    return (found.name, *list_voices(found))
