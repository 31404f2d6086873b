"""Where models live: the Hugging Face cache, the hub endpoint, offline mode, and small helpers
shared by planning, fetching and the cache tools."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from .. import catalog
from ..errors import ModelError


SHA256 = re.compile(r"[0-9a-f]{64}")
SHA1 = re.compile(r"[0-9a-f]{40}")
DEFAULT_NAMES = {"moshi_name": "model.safetensors", "mimi_name": catalog.MIMI_FILE,
                 "tokenizer_name": catalog.MOSHI_TOKENIZER}


# ---------------------------------------------------------------- cache locations


def moshikit_cache() -> Path:
    """moshikit's own cache (``MOSHIKIT_CACHE``, else ``$XDG_CACHE_HOME/moshikit``): generated and
    derived files (synthetic checkpoints, Pocket TTS configs), never the hub's files."""
    import os

    base = os.environ.get("MOSHIKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "moshikit"
    )
    return Path(base)


def is_other_repo_ref(name: str) -> bool:
    """``hf://<org>/<repo>/<path>``: a file of another hub repo, as moshi's export script
    writes for the Mimi and tokenizer of the ``-q8`` repos (they live in the bf16 repo)."""
    return isinstance(name, str) and name.startswith("hf://")


def split_ref(name: str) -> tuple[str, str]:
    """``hf://org/repo/path/file`` -> (``org/repo``, ``path/file``)."""
    parts = name.removeprefix("hf://").split("/")
    if len(parts) < 3 or not all(parts):
        raise ModelError(f"{name}: not a file reference of the form hf://<org>/<repo>/<file>")
    return "/".join(parts[:2]), "/".join(parts[2:])


def cache_dir() -> Path:
    """The hub cache, read when called (``HF_HUB_CACHE``, else ``HF_HOME``/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def repo_dir(repo: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / ("models--" + repo.replace("/", "--"))


def download_command(asked: str, *, variant: str | None = None, revision: str | None = None,
                     files: Sequence[str] | None = None) -> str:
    """The exact ``moshikit download ...`` line that fetches what was asked."""
    parts = ["moshikit", "download", asked]
    if variant:
        parts += ["--variant", variant]
    if revision and revision != "main":
        parts += ["--revision", revision]
    for f in files or ():
        parts += ["--file", f]
    return " ".join(shlex.quote(p) for p in parts)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
