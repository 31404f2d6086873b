"""The model a chat server (or ``chat``) runs: a Moshi-kind checkpoint and its codec as one
``Conversation``."""

from __future__ import annotations

from ..conversation import Conversation
from ..errors import UsageError


def check_moshi_config(config: dict | None, source: str) -> None:
    """A clear error for a checkpoint of another kind (a config.json of a speech-to-text model,
    or of no Kyutai model at all) before any weights are read."""
    from ..errors import ModelError

    if config is None:  # the original Moshi 7B repos have no config.json
        return
    kind = config.get("model_type")
    if kind == "stt" or "stt_config" in config:
        raise ModelError(f"{source} is a speech-to-text checkpoint, not a Moshi dialogue model",
                         hint="use it with `moshikit transcribe --model`; chat with moshika, moshiko or synthetic")
    if kind not in (None, "moshi") and not {"dim", "n_q", "card"} <= config.keys():
        raise ModelError(f"{source}: its config.json is not a Moshi model's (model_type {kind!r})",
                         hint="point --model at a Moshi checkpoint: moshika, moshiko, a local copy or synthetic")


def load_conversation(model: str | None = None, *, backend: str | None = None, device: str | None = None,
                      sampling=None, batch: int = 1, dtype: str | None = None,
                      revision: str | None = None) -> Conversation:
    """Resolve a Moshi model (path, catalog name or repo id), load LM and codec, and wrap them
    in a ``Conversation`` of ``batch`` streams. Batches above 1 need the torch backends
    (they restart one stream of a batch)."""
    from .. import platform
    from ..errors import BackendError
    from ..loading import load_lm_and_codec

    if batch < 1:
        raise UsageError("--batch must be at least 1")
    choice = platform.resolve("lm", backend, device)
    if batch > 1 and choice.backend != "torch":
        raise BackendError(f"--batch {batch} needs the torch backend (the {choice.backend} backend cannot "
                           "restart one session of a batch)", hint="use --backend torch, or --batch 1")
    # Hibiki (translation) is served like Moshi: the same duplex loop, conditioned on "very_good".
    from ..catalog import FAMILIES, family_of
    from ..hub import SYNTHETIC_HIBIKI

    family = FAMILIES.get(family_of(model) or "") if model else None
    kind = "hibiki" if model == SYNTHETIC_HIBIKI or (family is not None and family.kind == "hibiki") else "moshi"
    loaded = load_lm_and_codec(model, kind=kind, check_config=check_moshi_config, backend=backend,
                               device=device, dtype=dtype, sampling=sampling, revision=revision)
    return Conversation(loaded.codec, loaded.lm, loaded.tokenizer, batch_size=batch)
