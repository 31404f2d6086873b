"""What loading Pocket TTS (the ``pocket-tts`` package) needs, real or synthetic: its import without
side effects, its one torch thread, the layout of a model folder and the YAML config naming local files."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

LANGUAGE_DIR = "languages/english"
WEIGHTS = f"{LANGUAGE_DIR}/model.safetensors"
TOKENIZER = f"{LANGUAGE_DIR}/tokenizer.json"


def import_pocket_tts():
    """``import pocket_tts`` without its side effect on the process: its import runs
    ``torch.set_num_threads(1)``, which would slow every other model in the process (and change
    its kernels' rounding). The thread count is put back; Pocket TTS's own runs take one thread
    (``one_thread``), as its authors set it up (its decoder runs in a thread of its own)."""
    import sys

    if "pocket_tts" not in sys.modules:
        import torch

        threads = torch.get_num_threads()
        try:
            import pocket_tts  # noqa: F401
        finally:
            torch.set_num_threads(threads)
    return sys.modules["pocket_tts"]


@contextmanager
def one_thread():
    """Run Pocket TTS on one torch thread, as pocket-tts configures itself; the count is put back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_config(path: Path, cfg: dict, weights: Path, tokenizer: Path) -> Path:
    """``cfg`` as pocket_tts's YAML with ``weights_path`` and ``tokenizer_path`` set to files on disk."""
    import yaml

    cfg = copy.deepcopy(cfg)
    cfg["weights_path"] = str(weights)
    cfg["flow_lm"]["lookup_table"]["tokenizer_path"] = str(tokenizer)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def config_dir() -> Path:
    """Where the configs moshikit writes for the published models go (in moshikit's own cache)."""
    from ..download.paths import moshikit_cache

    return moshikit_cache() / "pocket"
