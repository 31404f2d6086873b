"""The agent's two models: which backend and device its STT and TTS run on, and loading them.

With no ``--stt``/``--tts`` the choices are ``platform.default_agent``'s parts, the ``agent`` row of
``moshikit info``; ``choices`` resolves both before either model loads (so a bad ``--device``
fails before minutes of loading, and ``info``'s agreement test sees both).
"""

from __future__ import annotations


def choices(stt_model: str | None = None, tts_model: str | None = None, device: str | None = None,
            tts_backend: str | None = None):
    """(STT choice, TTS choice): ``platform.Choice``s as ``agent`` runs them here (``tts_backend``:
    as ``speak -b``, e.g. ``pocket`` for ``--tts synthetic`` on Pocket TTS)."""
    from .. import platform
    from ..tts import tts_choice

    stt = platform.stt_lm(platform.resolve("lm", None, device, platform.default_agent_stt))
    tts = tts_choice(tts_model, tts_backend, device, default=lambda: platform.default_agent_tts(model=tts_model))
    return stt, tts


def load(stt_model: str | None = None, tts_model: str | None = None, device: str | None = None,
         tts_backend: str | None = None):
    """(SttModel, TTS backend) on the backends and devices of ``choices``."""
    from .. import stt
    from ..tts import load_tts

    s, t = choices(stt_model, tts_model, device, tts_backend)
    return (stt.load_stt(stt_model, backend=s.backend, device=s.device),
            load_tts(tts_model, backend=t.backend, device=t.device))
