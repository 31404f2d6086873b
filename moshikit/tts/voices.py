"""Voices for Kyutai TTS: catalog names (files of ``kyutai/tts-voices``), embedding files, audio files.

The 1.6B model is conditioned on a voice *embedding*: for a voice named
``expresso/ex03-ex01_happy_001_channel1_334s.wav`` it reads
``<name>.<sig>@<epoch>.safetensors`` (``model_id`` of its config.json) from the voices
repo. The 0.75B public model is conditioned on an audio prefix instead: any audio
file. ``--model synthetic`` keeps its voices in a ``voices/`` folder of the same layout.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, UsageError

VOICES_REPO = "kyutai/tts-voices"


@dataclass(frozen=True)
class Voice:
    """A resolved voice: an embedding file (``kind="embedding"``) or an audio prefix (``"audio"``)."""

    name: str
    path: Path
    kind: str


def local_voices_dir(model) -> Path | None:
    """A model folder's own ``voices/`` (synthetic and local checkpoints), if any."""
    d = Path(model.path) / "voices"
    return d if d.is_dir() else None


def _hub_snapshot() -> Path | None:
    """The cached snapshot of kyutai/tts-voices, without touching the network."""
    from huggingface_hub import snapshot_download

    from ..download import cache_dir

    try:
        return Path(snapshot_download(VOICES_REPO, local_files_only=True, cache_dir=cache_dir()))
    except Exception:  # noqa: BLE001 - nothing cached, or a partial cache: no listing
        return None


def list_voices(model) -> tuple[list[str], str]:
    """(voice names that fit ``model``, where they were found). For an audio-prefix model, the
    names of the voices repo's audio files."""
    suffix = model.voice_suffix if model.multi_speaker else ""
    where = local_voices_dir(model)
    label = str(where) if where else f"{VOICES_REPO} (Hugging Face cache)"
    roots = [where] if where else [r for r in [_hub_snapshot()] if r is not None]
    names: set[str] = set()
    for root in roots:
        for f in root.rglob("*"):
            rel = f.relative_to(root).as_posix()
            if rel.startswith("."):
                continue
            if suffix and rel.endswith(suffix):
                names.add(rel[: -len(suffix)])
            elif not suffix and f.suffix.lower() in (".wav", ".mp3", ".flac", ".ogg"):
                names.add(rel)
    if not where:
        names |= _listed_online(suffix)
    return sorted(names), label


def _listed_online(suffix: str) -> set[str]:
    from ..download import offline

    if offline():
        return set()
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(VOICES_REPO)
    except Exception:  # noqa: BLE001 - offline, unreachable: the cache's listing stands
        return set()
    if suffix:
        return {f[: -len(suffix)] for f in files if f.endswith(suffix)}
    return {f for f in files if f.lower().endswith((".wav", ".mp3", ".flac", ".ogg"))}


def _check_embedding(path: Path, shown: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            keys = set(f.keys())
    except Exception:  # noqa: BLE001
        raise UsageError(f"{shown}: not a voice embedding (not a readable safetensors file)") from None
    if "speaker_wavs" not in keys:
        raise UsageError(f"{shown}: not a voice embedding (no speaker_wavs tensor)")


def check_audio(path: Path, shown: str, instead: str = "a catalog voice name (see --list-voices)") -> None:
    """A voice sample that moshikit cannot read as audio is one line (``instead``: what else to give)."""
    from ..audio import open_audio
    from ..errors import MoshikitError

    try:
        open_audio(path)
    except MoshikitError:
        raise UsageError(f"{shown}: not an audio file moshikit can read",
                         hint=f"give a .wav, .flac, .mp3 or .ogg voice sample, or {instead}") from None


def resolve_voice(model, voice: str | None) -> Voice:
    """``--voice``: a catalog name, an embedding (``.safetensors``) or an audio file, checked for ``model``."""
    from ..catalog import DEFAULT_TTS_VOICE

    name = voice or DEFAULT_TTS_VOICE
    local = Path(name).expanduser()
    if local.is_file():
        if local.suffix == ".safetensors":
            if not model.multi_speaker:
                raise UsageError(f"{name}: {model.name} takes its voice from an audio sample, not an embedding",
                                 hint="give an audio file with --voice")
            _check_embedding(local, name)
            return Voice(name, local, "embedding")
        check_audio(local, name)
        if model.multi_speaker:
            beside = local.with_name(local.name + model.voice_suffix)
            if beside.is_file():
                _check_embedding(beside, str(beside))
                return Voice(name, beside, "embedding")
            raise UsageError(f"{name}: {model.name} takes voice embeddings, not audio (no {beside.name} beside it)",
                             hint="pick a catalog voice (--list-voices), or use --model tts-public, which takes "
                                  "any voice sample")
        return Voice(name, local, "audio")
    if voice is not None and (name.startswith((".", "/", "~")) or name.endswith(".safetensors")) \
            and not name.startswith("hf://"):
        raise UsageError(f"{name}: no such voice file")
    return _catalog_voice(model, name)


def _catalog_voice(model, name: str) -> Voice:
    suffix = model.voice_suffix if model.multi_speaker else ""
    kind = "embedding" if model.multi_speaker else "audio"
    own = local_voices_dir(model)
    if own is not None:
        path = own / (name + suffix)
        if path.is_file():
            return Voice(name, path, kind)
        raise _unknown(model, name)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from ..download import cache_dir, download_command, hub_error

    try:
        return Voice(name, Path(hf_hub_download(VOICES_REPO, name + suffix, cache_dir=cache_dir())), kind)
    except LocalEntryNotFoundError:
        known, _ = list_voices(model)
        if known and name not in known:
            raise _unknown(model, name, known) from None
        fix = download_command(VOICES_REPO, files=[name + suffix])
        raise ModelError(f"voice {name!r} is not in the Hugging Face cache and the hub cannot be reached: "
                         f"run `{fix}` when connected") from None
    except EntryNotFoundError:
        raise _unknown(model, name) from None
    except Exception as exc:  # noqa: BLE001 - any hub failure is one line
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise hub_error(exc, VOICES_REPO, None, name + suffix) from None


def _unknown(model, name: str, known: list[str] | None = None) -> UsageError:
    if known is None:
        known, _ = list_voices(model)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4) or difflib.get_close_matches(
        name.rsplit("/", 1)[-1], [k.rsplit("/", 1)[-1] for k in known], n=3, cutoff=0.4)
    full = [k for k in known if k in close or k.rsplit("/", 1)[-1] in close][:3]
    hint = f"did you mean {', '.join(full)}?" if full else "see `moshikit speak --list-voices`"
    return UsageError(f"unknown voice {name!r}", hint=hint)
