"""Finding weights: explicit local paths first, then the Hugging Face cache, then the hub.

Everything goes through ``huggingface_hub`` so that ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` work as users expect
and files are shared with ``moshi`` and ``moshi_mlx``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

DEFAULT_MIMI_REPO = "kyutai/moshiko-pytorch-bf16"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
SYNTHETIC = "synthetic"
_MIMI_PATTERNS = ("tokenizer-*.safetensors", "mimi*.safetensors", "*mimi*.safetensors")
# A few tensors any Mimi checkpoint has; either attention naming is accepted.
_MIMI_KEYS = (
    "encoder.model.0.conv.conv.weight",
    "decoder.model.0.conv.conv.weight",
    "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum",
    "quantizer.rvq_rest.vq.layers.0._codebook.embedding_sum",
)


@dataclass(frozen=True)
class Weights:
    """A resolved weights file and where it came from (recorded in token files)."""

    path: Path
    repo: str | None = None
    revision: str | None = None

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def describe(self) -> dict:
        return {"repo": self.repo, "revision": self.revision, "file": self.path.name, "sha256": self.sha256}


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file; free for hub-cache blobs, whose name is their sha256."""
    real = Path(os.path.realpath(path))
    if re.fullmatch(r"[0-9a-f]{64}", real.name) and real.parent.name == "blobs":
        return real.name
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def check_mimi(path: Path) -> None:
    """Fail early, with one line, when ``path`` is not a Mimi checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            keys = set(f.keys())
    except Exception:
        raise ModelError(f"{path}: not a Mimi checkpoint (not a readable safetensors file)") from None
    missing = [k for k in _MIMI_KEYS if k not in keys]
    if missing:
        raise ModelError(f"{path}: not a Mimi checkpoint (no tensor {missing[0]})",
                         hint="pass the Mimi file, e.g. tokenizer-e351c8d8-checkpoint125.safetensors")


def _mimi_in_dir(directory: Path) -> Path:
    config = directory / "config.json"
    if config.exists():
        try:
            name = json.loads(config.read_text()).get("mimi_name")
        except (json.JSONDecodeError, UnicodeDecodeError):
            name = None
        if name and name.startswith("hf://"):  # a file of another repo (the -q8 configs)
            from .backends.lm_repo import mimi_path

            found = mimi_path(name, directory)
            if found.is_file():
                return found
        elif name and (directory / name).exists():
            return directory / name
    for pattern in _MIMI_PATTERNS:
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    raise ModelError(f"{directory}: no Mimi weights in this directory",
                     hint=f"expected {MIMI_FILE} or the file named by config.json's mimi_name")


def resolve_mimi(mimi_weight: str | os.PathLike | None = None, model: str | None = None,
                 revision: str | None = None) -> Weights:
    """The one way commands find Mimi weights.

    ``mimi_weight`` is a local file. ``model`` is a local directory or file, a catalog
    name (``mimi``, ``moshika``, ``stt``...), a hub repo id, or ``synthetic`` (a
    generated test checkpoint, never a real model). Hub models come from the cache
    first, then (unless offline) from the hub.
    """
    if mimi_weight is not None:
        path = Path(mimi_weight).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: no such weights file")
        check_mimi(path)
        return Weights(path)
    model = model or DEFAULT_MIMI_REPO
    if model == SYNTHETIC:
        from .testing.synthetic import SYNTHETIC_REPO

        return Weights(synthetic_checkpoint("codec"), repo=SYNTHETIC_REPO, revision="seed0")
    local = Path(model).expanduser()
    if local.is_dir():
        path = _mimi_in_dir(local)
        check_mimi(path)
        return Weights(path)
    if local.is_file():
        check_mimi(local)
        return Weights(local)
    candidates, asked = _mimi_targets(model)
    for repo, guess in candidates:  # any cached variant will do: they all hold the same Mimi
        path = _cached_mimi(repo, guess, revision)
        if path is not None:
            break
    else:
        repo, guess = candidates[0]
        fix = _mimi_download_command(asked, repo, guess, revision)
        if _offline():
            raise ModelError(f"{_label(asked, repo)} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                             f"run `{fix}`", hint="or pass a local Mimi file with --mimi-weight")
        name = _hub_mimi_name(repo, revision, guess)
        if name.startswith("hf://"):  # a file of another repo (the -q8 configs), at its main
            from .backends.lm_repo import split_ref

            (repo, name), revision = split_ref(name), None
        path = _hub_file(repo, name, revision, fix=_mimi_download_command(repo, repo, name, revision))
    check_mimi(path)
    return Weights(path, repo=repo, revision=revision or "main")


def _label(asked: str, repo: str) -> str:
    return repo if asked == repo else f"{asked} ({repo})"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _mimi_targets(model: str) -> tuple[list[tuple[str, str]], str]:
    """[(repo, Mimi file name to expect)], best first, and what the user asked, for a catalog name or repo id.

    For a catalog name: the variant this machine picks, then the family's other variants.
    """
    from . import catalog

    def mimi_name(e) -> str:
        return next((f for f in e.files if f in (MIMI_FILE, catalog.STT_MIMI_FILE)), MIMI_FILE) if e else MIMI_FILE

    family = catalog.family_of(model)
    if family is not None:
        # Every Kyutai model uses the same Mimi (e351c8d8, step 125): after this machine's
        # variant and the family's others, the Mimi entry (`moshikit download mimi`) will do.
        chosen = catalog.choose(model, catalog.current_platform(), any_platform=True).entry
        order = [chosen, *[e for e in catalog.entries(family) if e is not chosen], *catalog.entries("mimi")]
        out: list[tuple[str, str]] = []
        for e in order:
            if (e.repo, mimi_name(e)) not in out:
                out.append((e.repo, mimi_name(e)))
        return out, model
    if not catalog.is_repo_id(model):
        if any(sep in model for sep in ("/", os.sep)) or model.startswith((".", "~")):
            raise ModelError(f"{model}: no such file or directory")
        raise catalog.unknown(model)
    return [(model, mimi_name(catalog.by_repo(model)))], model


def _cached_mimi(repo: str, guess: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    from .download import cache_dir

    cache = cache_dir()
    config = try_to_load_from_cache(repo, "config.json", cache_dir=cache, revision=revision)
    name = guess
    if isinstance(config, str):
        try:
            name = json.loads(Path(config).read_text()).get("mimi_name") or guess
        except (OSError, ValueError):
            pass
    if name.startswith("hf://"):  # a file of another repo (the -q8 configs), at its main
        from .backends.lm_repo import split_ref

        (repo, name), revision = split_ref(name), None
    found = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision)
    return Path(found) if isinstance(found, str) else None


def _mimi_download_command(asked: str, repo: str, name: str, revision: str | None) -> str:
    from . import catalog
    from .download import download_command

    if (repo == DEFAULT_MIMI_REPO and name == MIMI_FILE) or (
            catalog.family_of(asked) is not None and revision in (None, "main")):
        return download_command("mimi", revision=revision)
    if catalog.family_of(asked) is not None:
        asked = repo
    return download_command(asked, revision=revision, files=[name])


def _hub_mimi_name(repo: str, revision: str | None, default: str = MIMI_FILE) -> str:
    try:
        config = json.loads(_hub_file(repo, "config.json", revision).read_text())
        return config.get("mimi_name") or default
    except (ModelError, OSError, ValueError, AttributeError):
        return default


def _hub_file(repo: str, filename: str, revision: str | None, fix: str | None = None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    from .download import cache_dir, hub_error

    if "/" not in repo:
        raise ModelError(f"{repo}: not a local path or a hub repo id (owner/name)")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir()))
    except LocalEntryNotFoundError:
        fix = fix or f"moshikit download {repo} --file {filename}"
        raise ModelError(
            f"{repo}/{filename} is not in the Hugging Face cache and the hub cannot be reached: run `{fix}` "
            "when connected",
            hint="or pass a local file with --mimi-weight (or a local directory with --model)",
        ) from None
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise hub_error(exc, repo, revision, filename) from None


# ---------------------------------------------------------------- any model


#: The model each kind of command uses when none is given.
DEFAULT_MODEL = {"moshi": "moshiko", "stt": "stt", "codec": "mimi", "hibiki": "hibiki", "tts": "tts"}
_KIND_WORDS = {"moshi": "a Moshi dialogue", "stt": "a speech-to-text", "codec": "a Mimi codec",
               "hibiki": "a Hibiki translation", "tts": "a text-to-speech", "voices": "a voices"}
#: ``--model synthetic-hibiki``: the synthetic Hibiki whatever the command's kind (e.g. serve).
SYNTHETIC_HIBIKI = "synthetic-hibiki"


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
        from .download import DEFAULT_NAMES, slot_of

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


def synthetic_checkpoint(kind: str | None) -> Path:
    """``--model synthetic``, one source among the others: generated weights of ``kind`` in the
    published layout (Mimi for ``codec``/None, a Moshi or STT folder), built on first use.
    Valid for speed and mechanics, never for quality."""
    from .testing import synthetic

    if kind == "tts":
        from .testing.synthetic_tts import ensure_synthetic_tts

        return ensure_synthetic_tts(mimi_path=synthetic.ensure_synthetic_mimi())
    if kind == "stt":
        from .testing.synthetic_stt import ensure_synthetic_stt

        return ensure_synthetic_stt()
    if kind == "hibiki":
        from .testing.synthetic_hibiki import ensure_synthetic_hibiki

        return ensure_synthetic_hibiki(mimi_path=synthetic.ensure_synthetic_mimi())
    if kind == "moshi":
        from .testing.synthetic_lm import ensure_synthetic_moshi

        return ensure_synthetic_moshi(mimi_path=synthetic.ensure_synthetic_mimi())
    return synthetic.ensure_synthetic_mimi()


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
    from . import catalog
    from . import download as dl

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
    label = _label(raw, repo)
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
    from .download import DEFAULT_NAMES

    if kind == "codec":
        return [MIMI_FILE]
    return None if kind == "stt" else list(DEFAULT_NAMES.values())


def _adhoc_files(repo: str, revision: str | None, kind: str | None) -> list[str]:
    """The files a run needs from a repo the catalog does not know: its config.json says, else moshi's defaults."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from .download import DEFAULT_NAMES, cache_dir, hub_error, wanted_files

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

    from .download import cache_dir, wanted_files

    cache = cache_dir()

    def cached(name: str) -> Path | None:
        if name.startswith("hf://"):  # a file of another repo (the -q8 configs), at its main
            from .backends.lm_repo import split_ref

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
