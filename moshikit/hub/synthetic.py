"""``--model synthetic``: generated weights in the published layouts, one source of the resolver."""

from __future__ import annotations

from pathlib import Path


SYNTHETIC = "synthetic"


#: ``--model synthetic-hibiki``: the synthetic Hibiki whatever the command's kind (e.g. serve).
SYNTHETIC_HIBIKI = "synthetic-hibiki"


def synthetic_checkpoint(kind: str | None) -> Path:
    """``--model synthetic``, one source among the others: generated weights of ``kind`` in the
    published layout (Mimi for ``codec``/None, a Moshi or STT folder), built on first use.
    Valid for speed and mechanics, never for quality."""
    from ..synthetic import core as synthetic

    if kind == "tts":
        from ..synthetic.tts import ensure_synthetic_tts

        return ensure_synthetic_tts(mimi_path=synthetic.ensure_synthetic_mimi())
    if kind == "stt":
        from ..synthetic.stt import ensure_synthetic_stt

        return ensure_synthetic_stt()
    if kind == "hibiki":
        from ..synthetic.hibiki import ensure_synthetic_hibiki

        return ensure_synthetic_hibiki(mimi_path=synthetic.ensure_synthetic_mimi())
    if kind == "moshi":
        from ..synthetic.lm import ensure_synthetic_moshi

        return ensure_synthetic_moshi(mimi_path=synthetic.ensure_synthetic_mimi())
    return synthetic.ensure_synthetic_mimi()
