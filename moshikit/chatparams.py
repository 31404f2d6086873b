"""Per-session sampling a client asks for in ``/api/chat``'s query, under the names Kyutai's
web client and Rust server use: ``text_temperature``, ``text_topk``, ``audio_temperature``,
``audio_topk``. The official client sends more (``pad_mult``, ``repetition_penalty``,
``repetition_penalty_context``, ``text_seed``, ``audio_seed``); moshi's LMGen has no such
settings, so those are accepted and not used."""

from __future__ import annotations

import math
from dataclasses import replace

from .backends.base import SamplingConfig
from .clienttext import shown

#: query name -> (SamplingConfig field, type, smallest, largest)
FIELDS = {
    "text_temperature": ("temp_text", float, 0.0, 10.0),
    "text_topk": ("top_k_text", int, 1, 1 << 20),
    "audio_temperature": ("temp", float, 0.0, 10.0),
    "audio_topk": ("top_k", int, 1, 1 << 20),
}


class BadParameter(ValueError):
    pass


def requested(query) -> dict:
    """The sampling fields ``query`` (a mapping of strings) sets; raises BadParameter on a bad value."""
    out = {}
    for name, (field, kind, lo, hi) in FIELDS.items():
        raw = query.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
        except (TypeError, ValueError):
            raise BadParameter(f"{name}={shown(raw, 40)!r} is not a number") from None
        if isinstance(value, float) and not math.isfinite(value) or not lo <= value <= hi:
            raise BadParameter(f"{name}={shown(raw, 40)} is out of range ({lo} to {hi})")
        out[field] = value
    return out


def session_sampling(base: SamplingConfig, query) -> SamplingConfig | None:
    """``base`` with what ``query`` asks for; None when it asks for nothing."""
    fields = requested(query)
    return replace(base, **fields) if fields else None
