"""Finding any model (Moshi, STT, TTS, Hibiki, a codec, the synthetic test weights): a local
directory, the catalog's choice in the cache, or the hub."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .synthetic import SYNTHETIC, SYNTHETIC_HIBIKI, synthetic_checkpoint
from .mimi import MIMI_FILE, repo_label


#: The model each kind of command uses when none is given.
DEFAULT_MODEL = {"moshi": "moshiko", "stt": "stt", "codec": "mimi", "hibiki": "hibiki", "tts": "tts"}
_KIND_WORDS = {"moshi": "a Moshi dialogue", "stt": "a speech-to-text", "codec": "a Mimi codec",
               "hibiki": "a Hibiki translation", "tts": "a text-to-speech", "voices": "a voices"}


@dataclass(frozen=True)
class ResolvedModel:
    """A model's files on this machine, wherever they came from.

    ``path`` is the directory holding them (a hub snapshot, or the local directory);
    ``files`` maps each file name a run needs to its local path. ``config`` is the
    parsed config.json, when there is one. ``source``: local, cache or hub.
    """

    path: Path
    files: dict
    repo: str | None = None
    revision: str | None = None
    entry: object = None  # catalog.Entry
    source: str = "local"
    config: dict | None = None

    def role(self, key: str) -> Path | None:
        """The file for a config.json key: ``moshi_name``, ``mimi_name`` or ``tokenizer_name``."""
        from ..download import DEFAULT_NAMES, slot_of

        name = (self.config or {}).get(key)
        if name and name in self.files:
            return self.files[name]
        slot = slot_of(list(self.files), key)
        if slot is not None:
            return self.files[slot]
        default = DEFAULT_NAMES.get(key)
        return self.files.get(default) if default else None

    @property
    def moshi_weights(self) -> Path | None:
        return self.role("moshi_name")

    @property
    def mimi_weights(self) -> Path | None:
        return self.role("mimi_name")

    @property
    def tokenizer(self) -> Path | None:
        return self.role("tokenizer_name")

    @property
    def config_path(self) -> Path | None:
        return self.files.get("config.json")


def _read_config(path: Path | None) -> dict | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise ModelError(f"{path}: not a readable config.json") from None
    return data if isinstance(data, dict) else None


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "~", os.sep)) or model.count("/") > 1 or (os.sep != "/" and os.sep in model) \
        or model.endswith((".safetensors", ".json", ".gguf", ".model"))


def resolve_model(model: str | os.PathLike | None = None, *, kind: str | None = None,
                  variant: str | None = None, revision: str | None = None,
                  files: list[str] | None = None, platform=None, any_platform: bool = False,
                  download: bool = True, on_progress=None) -> ResolvedModel:
    """The one resolver for every command: local paths first, then the cache, then (unless offline) the hub.

    ``model``: a local directory or file, a catalog name (``moshika``, ``stt``...: the
    variant is picked for this machine unless ``variant`` says), or a hub repo id.
    None means the default model of ``kind`` (``moshi``, ``stt``, ``codec``).
    ``files`` overrides which files are needed. When the model is missing and the hub
    cannot be used, the ModelError names the model and the ``moshikit download``
    command that fixes it. A catalog variant that cannot run on this platform (MLX off
    Apple silicon, PyTorch int8 without CUDA) is refused unless ``any_platform``
    (e.g. a caller that runs MLX on a Linux CPU on purpose). ``platform`` (a
    ``PlatformInfo``) replaces detection; ``on_progress`` receives ``download.Progress``.
    """
    from .. import catalog
    from .. import download as dl

    if model is None:
        if kind not in DEFAULT_MODEL:
            raise ModelError("no model given", hint="pass --model (a catalog name, repo id or local path)")
        model = DEFAULT_MODEL[kind]
    raw = os.fspath(model)
    local = synthetic_checkpoint("hibiki" if raw == SYNTHETIC_HIBIKI else kind) \
        if raw in (SYNTHETIC, SYNTHETIC_HIBIKI) else Path(raw).expanduser()
    if local.exists():
        return _resolve_local(local, files)
    if _looks_like_path(raw) or (catalog.family_of(raw) is None and not catalog.is_repo_id(raw)):
        if _looks_like_path(raw):
            raise ModelError(f"{raw}: no such file or directory")
        raise catalog.unknown(raw)
    repo, choice = dl.resolve_target(raw, variant, platform, any_platform)
    entry = choice.entry if choice else None
    if entry is not None and kind is not None:
        if kind != "codec" and entry.kind != kind:
            raise ModelError(f"{raw} is {_KIND_WORDS.get(entry.kind, entry.kind)} model; this command needs "
                             f"{_KIND_WORDS.get(kind, kind)} model",
                             hint=f"e.g. --model {DEFAULT_MODEL.get(kind, '')}")
        if entry.backend == "candle":
            raise ModelError(f"{entry.repo} is for Kyutai's Rust server (moshi-backend); moshikit runs the "
                             "pytorch and mlx variants", hint="drop --variant, or use --variant pytorch-bf16")
    label = repo_label(raw, repo)
    fix = dl.download_command(raw, variant=variant, revision=revision, files=files)
    cached = _from_cache(repo, entry, revision, files, kind)
    if cached is not None:
        path, found, config = cached
        return ResolvedModel(path, found, repo, revision or "main", entry, "cache", config)
    if dl.offline():
        raise ModelError(f"{label} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: run `{fix}`",
                         hint="or point --model at a local directory or file")
    if not download:
        raise ModelError(f"{label} is not downloaded: run `{fix}`")
    try:
        if entry is None and not files:
            files = _adhoc_files(repo, revision, kind)
        p = dl.plan(raw, variant=variant, revision=revision, files=files, platform=platform,
                    any_platform=any_platform)
        got = dl.download(p, on_progress=on_progress)
    except dl.HubUnreachable as exc:
        raise ModelError(f"{label} is not in the Hugging Face cache and the hub cannot be reached: run `{fix}` "
                         "when connected", hint=f"{exc}; or point --model at a local directory or file") from None
    except ModelError as exc:
        if exc.hint is None:
            exc.hint = "or point --model at a local directory or file"
        raise
    found = {f.name: f.path for f in got.files}
    return ResolvedModel(got.path, found, repo, revision or "main", entry, "hub",
                         _read_config(found.get("config.json")))


def _default_files(entry, kind: str | None) -> list[str] | None:
    """For a repo the catalog does not know and whose config.json is not cached: moshi's default names."""
    if entry is not None:
        return None
    from ..download import DEFAULT_NAMES

    if kind == "codec":
        return [MIMI_FILE]
    return None if kind == "stt" else list(DEFAULT_NAMES.values())


def _adhoc_files(repo: str, revision: str | None, kind: str | None) -> list[str]:
    """The files a run needs from a repo the catalog does not know: its config.json says, else moshi's defaults."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from ..download import DEFAULT_NAMES, cache_dir, hub_error, wanted_files

    try:
        config = _read_config(Path(hf_hub_download(repo, "config.json", revision=revision, cache_dir=cache_dir())))
    except LocalEntryNotFoundError as exc:
        raise hub_error(exc, repo, revision, "config.json") from None
    except EntryNotFoundError:
        return [MIMI_FILE] if kind == "codec" else list(DEFAULT_NAMES.values())
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise hub_error(exc, repo, revision, "config.json") from None
    if kind == "codec":
        return [(config or {}).get("mimi_name") or MIMI_FILE]
    return wanted_files(None, config)[0]


def _from_cache(repo: str, entry, revision: str | None, files: list[str] | None, kind: str | None = None):
    """(snapshot dir, {name: path}, config) when everything needed is cached, else None."""
    from huggingface_hub import try_to_load_from_cache

    from ..download import cache_dir, wanted_files

    cache = cache_dir()

    def cached(name: str) -> Path | None:
        if name.startswith("hf://"):  # a file of another repo (the -q8 configs), at its main
            from ..backends.lm_repo import split_ref

            other, file = split_ref(name)
            found = try_to_load_from_cache(other, file, cache_dir=cache)
        else:
            found = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision)
        return Path(found) if isinstance(found, str) else None

    config_path = cached("config.json")
    config = _read_config(config_path)
    if files:
        required, optional = list(files), []
    elif entry is None and config is None:  # a repo the catalog does not know, without a cached config.json
        required, optional = _default_files(None, kind) or [], []
    elif entry is None and kind == "codec":
        required, optional = [config.get("mimi_name") or MIMI_FILE], []
    else:
        required, optional = wanted_files(entry, config)
        if entry is None:
            required = [n for n in required if n != "config.json"] + ["config.json"]
    if not required:
        return None
    found: dict[str, Path] = {}
    for name in required:
        path = cached(name)
        if path is None:
            return None
        found[name] = path
    for name in optional:
        path = cached(name)
        if path is not None:
            found[name] = path
    own = [(n, f) for n, f in found.items() if not n.startswith("hf://")]
    first_name, first = own[0] if own else next(iter(found.items()))
    snapshot = first
    for _ in first_name.split("/"):
        snapshot = snapshot.parent
    return snapshot, found, config


def _resolve_local(path: Path, files: list[str] | None) -> ResolvedModel:
    """A local directory (its config.json names the files) or a single file."""
    if path.is_file():
        return ResolvedModel(path.parent, {path.name: path}, source="local",
                             config=_read_config(path) if path.suffix == ".json" else None)
    config = _read_config(path / "config.json")
    if files:
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise ModelError(f"{path}: no {missing[0]} in this directory")
        names = list(files)
    else:
        names = sorted(q.relative_to(path).as_posix() for q in path.rglob("*")
                       if q.is_file() and not any(part.startswith(".") for part in q.relative_to(path).parts))
    return ResolvedModel(path, {n: path / n for n in names}, source="local", config=config)
