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
        if name and (directory / name).exists():
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

    ``mimi_weight`` is a local file. ``model`` is a local directory, a hub repo
    id (from the cache, or downloaded unless offline) or ``synthetic`` (a
    generated test checkpoint, never a real model).
    """
    if mimi_weight is not None:
        path = Path(mimi_weight).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: no such weights file")
        check_mimi(path)
        return Weights(path)
    model = model or DEFAULT_MIMI_REPO
    if model == SYNTHETIC:
        from .testing.synthetic import SYNTHETIC_REPO, ensure_synthetic_mimi

        return Weights(ensure_synthetic_mimi(), repo=SYNTHETIC_REPO, revision="seed0")
    local = Path(model).expanduser()
    if local.is_dir():
        path = _mimi_in_dir(local)
        check_mimi(path)
        return Weights(path)
    if local.is_file():
        check_mimi(local)
        return Weights(local)
    path = _hub_file(model, _hub_mimi_name(model, revision), revision)
    check_mimi(path)
    return Weights(path, repo=model, revision=revision or "main")


def _hub_mimi_name(repo: str, revision: str | None) -> str:
    try:
        config = json.loads(_hub_file(repo, "config.json", revision).read_text())
        return config.get("mimi_name") or MIMI_FILE
    except ModelError:
        return MIMI_FILE


def _hub_file(repo: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    if "/" not in repo:
        raise ModelError(f"{repo}: not a local path or a hub repo id (owner/name)")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except LocalEntryNotFoundError:
        raise ModelError(
            f"{repo}/{filename} is not in the Hugging Face cache and the hub cannot be reached",
            hint="download it on a connected machine (huggingface-cli download "
                 f"{repo} {filename}), or pass a local file with --mimi-weight",
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"{repo}/{filename}: {str(exc).splitlines()[0]}") from None
