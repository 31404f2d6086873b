"""Framework-free parts shared by the LM backends: resolving a checkpoint's files,
sampling defaults and input checks. Imports neither torch nor mlx."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..download.paths import is_other_repo_ref, split_ref
from ..errors import ModelError
from .base import SamplingConfig, SamplingOverrides

#: moshi's defaults for a repo without config.json (the original Moshi 7B repos).
MOSHI_NAME = "model.safetensors"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_NAME = "tokenizer_spm_32k_3.model"


# --------------------------------------------------------------------------- repos


@dataclass(frozen=True)
class LMRepo:
    """The files of one Moshi LM checkpoint, resolved to local paths.

    ``config`` is the raw config.json (None for the legacy 7B repos that have none:
    loaders then assume ``moshi.models.loaders._lm_kwargs``). ``mimi_weights`` may
    not exist: the LM does not need it.
    """

    moshi_weights: Path
    tokenizer: Path
    mimi_weights: Path
    config_path: Path | None
    config: dict | None
    source: str

    @property
    def lm_gen_config(self) -> dict:
        return dict((self.config or {}).get("lm_gen_config") or {})


def resolve_repo(repo_dir_or_config, *, moshi_weights: str | os.PathLike | None = None,
                 revision: str | None = None) -> LMRepo:
    """Resolve a model directory, a config.json, a weights file or a hub repo id.

    * a directory: its ``config.json`` (if any) names the files inside it;
    * a ``.json`` file: the config; the files it names sit next to it;
    * a ``.safetensors`` file: the LM weights; config and tokenizer sit next to it;
    * ``org/name`` that is not a local path: a Hugging Face repo, through
      ``huggingface_hub`` (so ``HF_HOME``, ``HF_HUB_OFFLINE`` and the cache apply).
    ``moshi_weights`` overrides the weights file in every case.
    """
    if isinstance(repo_dir_or_config, LMRepo):
        return repo_dir_or_config
    raw = os.fspath(repo_dir_or_config)
    path = Path(raw).expanduser()
    weights_override = Path(moshi_weights) if moshi_weights is not None else None
    if path.is_dir():
        root, config_path = path, path / "config.json"
    elif path.is_file() and path.suffix == ".json":
        root, config_path = path.parent, path
    elif path.is_file():
        root, config_path = path.parent, path.parent / "config.json"
        weights_override = weights_override or path
    elif _looks_like_repo_id(raw):
        return _resolve_hub(raw, revision, weights_override)
    else:
        raise ModelError(f"{raw}: no such model directory, config or weights file")
    config = _read_config(config_path) if config_path.is_file() else None
    if config is None:
        config_path = None
    names = config or {}

    where = config_path or root

    def local(key: str, default: str) -> Path:
        name = names.get(key, default)
        return other_repo_file(name) if is_other_repo_ref(name) else named_file(root, name, key, where)

    return LMRepo(
        moshi_weights=weights_override or local("moshi_name", MOSHI_NAME),
        tokenizer=local("tokenizer_name", TOKENIZER_NAME),
        mimi_weights=mimi_path(names.get("mimi_name", MIMI_NAME), root, where),
        config_path=config_path, config=config, source=str(path),
    )


def named_file(root: Path, name: object, key: str, where: str | os.PathLike) -> Path:
    """``root / name`` for the file that config.json's ``key`` names (``where``: the config, for
    the message). A name that is not a relative path inside the model folder (absolute, or
    climbing out with ``..``) is refused in one line: a checkpoint only names its own files
    (and files of other hub repos, as ``hf://`` references, resolved elsewhere)."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"{where}: config.json's {key} must be a file name, not {str(name)[:60]!r}")
    if (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive
            or ".." in PurePosixPath(name.replace("\\", "/")).parts):
        raise ModelError(f"{where}: config.json's {key} ({name[:120]!r}) names a file outside the model folder",
                         hint="a model folder's config.json names files inside that folder")
    return root / name


def other_repo_file(name: str) -> Path:
    """The local path of an ``hf://`` reference, through huggingface_hub (its cache, and
    the network unless ``HF_HUB_OFFLINE``); the other repo's main revision."""
    from huggingface_hub import hf_hub_download

    repo, file = split_ref(name)
    try:
        return Path(hf_hub_download(repo, file))
    except Exception as exc:  # offline and not cached, no such repo or file, no access
        raise ModelError(f"cannot get {file} from {repo} (named by config.json as {name}): "
                         f"{str(exc).splitlines()[0]}",
                         hint=f"moshikit download {repo}") from None


def _looks_like_repo_id(raw: str) -> bool:
    parts = raw.split("/")
    return len(parts) == 2 and all(parts) and not raw.startswith((".", "~"))


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable config.json ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: config.json must hold a JSON object")
    return config


def mimi_path(name: str, root: Path, where: str | os.PathLike | None = None) -> Path:
    """Where the Mimi named by config.json is: ``root / name`` (never outside ``root``: see
    ``named_file``), or the file an ``hf://`` reference resolves to. The LM runs without it, so
    an unresolvable reference gives a path that does not exist (whoever needs the codec
    reports it) rather than an error."""
    if not is_other_repo_ref(name):
        return named_file(root, name, "mimi_name", where or root)
    try:
        return other_repo_file(name)
    except ModelError:
        return root / split_ref(name)[1]


def _resolve_hub(repo: str, revision: str | None, weights_override: Path | None) -> LMRepo:
    from huggingface_hub import hf_hub_download

    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import EntryNotFoundError  # type: ignore

    def get(name: str, key: str = "config.json") -> Path:
        if is_other_repo_ref(name):
            return other_repo_file(name)
        named_file(Path("."), name, key, repo)  # a name that climbs out of the repo: refused
        try:
            return Path(hf_hub_download(repo, name, revision=revision))
        except EntryNotFoundError:
            raise
        except Exception as exc:  # offline, no such repo, no access
            raise ModelError(f"cannot get {name} from {repo}: {str(exc).splitlines()[0]}") from None

    try:
        config_path: Path | None = get("config.json")
    except EntryNotFoundError:
        config_path = None
    config = _read_config(config_path) if config_path is not None else None
    names = config or {}
    try:
        weights = weights_override or get(names.get("moshi_name", MOSHI_NAME), "moshi_name")
        tokenizer = get(names.get("tokenizer_name", TOKENIZER_NAME), "tokenizer_name")
    except EntryNotFoundError as exc:
        raise ModelError(f"{repo}: {str(exc).splitlines()[0]}") from None
    root = config_path.parent if config_path is not None else tokenizer.parent
    return LMRepo(moshi_weights=weights, tokenizer=tokenizer,
                  mimi_weights=mimi_path(names.get("mimi_name", MIMI_NAME), root, repo),
                  config_path=config_path, config=config, source=repo)


def sampling_from(repo: LMRepo, sampling: SamplingConfig | SamplingOverrides | None) -> SamplingConfig:
    """``sampling`` if a whole config; else the repo's ``lm_gen_config`` over LMGen's defaults,
    with the overrides (``SamplingOverrides``: what a user gave) on top."""
    if isinstance(sampling, SamplingConfig):
        return sampling
    keys = ("temp", "temp_text", "top_k", "top_k_text")
    base = SamplingConfig(**{k: v for k, v in repo.lm_gen_config.items() if k in keys})
    return sampling.over(base) if sampling else base


def check_codes(codes: np.ndarray, batch: int, k_in: int, card: int) -> np.ndarray:
    """``codes`` as ``[batch, k_in]``: extra codebooks are dropped (as LMGen does);
    values must lie in ``[-1, card)`` (-1 is moshi's "no input" token)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != batch or codes.shape[1] < k_in:
        raise ValueError(f"codes must be [{batch}, >={k_in}], not {list(codes.shape)}")
    codes = codes[:, :k_in]
    if codes.size and (codes.min() < -1 or codes.max() >= card):
        raise ValueError(f"codes must lie in [0, {card}), got {codes.min()}..{codes.max()}")
    return codes
