"""One way to load a Kyutai model and the Mimi beside it, for every command that runs an LM.

chat, serve and transcribe (and the commands to come) all do the same: resolve ``--model``
(a local path, a catalog name, a hub repo id or ``synthetic``) into a checkpoint, check that
its config.json is of the kind the command needs, load the LM on the chosen backend and
device, then load the codec that runs best beside it with the codebooks the LM reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ModelError

#: What a checkpoint of each kind is called in messages.
KIND_NAMES = {"moshi": "a Moshi model", "stt": "a speech-to-text model", "hibiki": "a Hibiki translation model"}


@dataclass
class LoadedModel:
    """An LM and its codec, ready to step: what ``load_lm_and_codec`` returns."""

    lm: Any  # an LMBackend
    codec: Any  # a CodecBackend
    repo: Any  # the LMRepo it came from
    config_check: Any  # what the kind's config check returned (e.g. the STT delays)

    @property
    def tokenizer(self):
        return self.lm.text_tokenizer()


def load_lm_and_codec(model: str | None, *, kind: str, check_config: Callable[[dict | None, str], Any],
                      backend: str | None = None, device: str | None = None, dtype: str | None = None,
                      sampling=None, codec_backend: str | None = None, revision: str | None = None,
                      variant: str | None = None,
                      choose_dtype: Callable[[str | None, str | None, Any, str], str | None] | None = None,
                      default: Callable[[], Any] | None = None) -> LoadedModel:
    """Resolve ``model`` as a checkpoint of ``kind`` (``moshi``, ``stt``), check its config with
    ``check_config(config, source)`` before any weights are read, and load LM and codec.
    ``choose_dtype(dtype, device, repo, backend)``, if given, picks the LM's dtype once the
    checkpoint's files are known (e.g. int8 weights for a large model on a CPU). ``default``: the
    command's entry of ``platform.DEFAULTS`` when no backend is given (the LM's otherwise).

    A config.json that moshi's builder cannot build is one ``ModelError`` naming the source.
    """
    from . import hub, platform
    from .backends import registry
    from .backends.lm_repo import resolve_repo
    from .codec import load_codec

    choice = platform.resolve("lm", backend, device, default)
    if kind == "stt" and backend in (None, "auto"):
        choice = platform.stt_lm(choice)
    dev = None if choice.device in (None, "auto") else choice.device
    resolved = hub.resolve_model(model, kind=kind, variant=variant, revision=revision,
                                 any_platform=choice.backend == "mlx")
    repo = resolve_repo(resolved.path if resolved.path.is_dir() and resolved.config_path else
                        (resolved.config_path or resolved.path))
    checked = check_config(repo.config, str(model if model not in (None, hub.SYNTHETIC) else repo.source))
    if choose_dtype is not None:
        dtype = choose_dtype(dtype, choice.device, repo, choice.backend)
    try:
        lm = registry.module("lm", choice.backend).load(repo, device=dev, dtype=dtype, sampling=sampling)
    except (AssertionError, KeyError, TypeError, ValueError) as exc:  # moshi's builder on a foreign config
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"{repo.source}: its config.json does not describe {KIND_NAMES.get(kind, 'a model')} "
                         f"({type(exc).__name__}: {first})") from None
    if not Path(repo.mimi_weights).is_file():
        raise ModelError(f"{repo.source}: missing the Mimi codec file {Path(repo.mimi_weights).name}")
    if codec_backend in (None, "auto"):
        codec_backend = platform.codec_beside_lm(choice.backend, lm.info.device)
    codec = load_codec(codec_backend, dev, mimi_weight=str(repo.mimi_weights),
                       num_codebooks=max(lm.info.input_codebooks, lm.info.dep_q)).backend
    return LoadedModel(lm, codec, repo, checked)
