"""Finding Mimi weights: an explicit file or directory, a model's repository, the cache, the hub."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .synthetic import SYNTHETIC, synthetic_checkpoint


DEFAULT_MIMI_REPO = "kyutai/moshiko-pytorch-bf16"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"


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
        from ..backends.lm_repo import mimi_path, named_file

        if name and isinstance(name, str) and name.startswith("hf://"):  # a file of another repo (-q8 configs)
            found = mimi_path(name, directory)
            if found.is_file():
                return found
        elif name and named_file(directory, name, "mimi_name", config).exists():  # never outside the folder
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
        from ..synthetic.core import SYNTHETIC_REPO

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
            raise ModelError(f"{repo_label(asked, repo)} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                             f"run `{fix}`", hint="or pass a local Mimi file with --mimi-weight")
        name = _hub_mimi_name(repo, revision, guess)
        if name.startswith("hf://"):  # a file of another repo (the -q8 configs), at its main
            from ..backends.lm_repo import split_ref

            (repo, name), revision = split_ref(name), None
        path = _hub_file(repo, name, revision, fix=_mimi_download_command(repo, repo, name, revision))
    check_mimi(path)
    return Weights(path, repo=repo, revision=revision or "main")


def repo_label(asked: str, repo: str) -> str:
    return repo if asked == repo else f"{asked} ({repo})"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _mimi_targets(model: str) -> tuple[list[tuple[str, str]], str]:
    """[(repo, Mimi file name to expect)], best first, and what the user asked, for a catalog name or repo id.

    For a catalog name: the variant this machine picks, then the family's other variants.
    """
    from .. import catalog

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

    from ..download import cache_dir

    cache = cache_dir()
    config = try_to_load_from_cache(repo, "config.json", cache_dir=cache, revision=revision)
    name = guess
    if isinstance(config, str):
        try:
            name = json.loads(Path(config).read_text()).get("mimi_name") or guess
        except (OSError, ValueError):
            pass
    if name.startswith("hf://"):  # a file of another repo (the -q8 configs), at its main
        from ..backends.lm_repo import split_ref

        (repo, name), revision = split_ref(name), None
    found = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision)
    return Path(found) if isinstance(found, str) else None


def _mimi_download_command(asked: str, repo: str, name: str, revision: str | None) -> str:
    from .. import catalog
    from ..download import download_command

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

    from ..download import cache_dir, hub_error

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
