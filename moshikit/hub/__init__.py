"""Finding weights: explicit local paths first, then the Hugging Face cache, then the hub.

Everything goes through ``huggingface_hub`` so that ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` work as users expect
and files are shared with ``moshi`` and ``moshi_mlx``.
"""

from .mimi import DEFAULT_MIMI_REPO, MIMI_FILE, Weights, check_mimi, file_sha256, resolve_mimi
from .model import DEFAULT_MODEL, ResolvedModel, resolve_model
from .synthetic import SYNTHETIC, SYNTHETIC_HIBIKI, synthetic_checkpoint

__all__ = ["DEFAULT_MIMI_REPO", "DEFAULT_MODEL", "MIMI_FILE", "SYNTHETIC", "SYNTHETIC_HIBIKI", "ResolvedModel",
           "Weights", "check_mimi", "file_sha256", "resolve_mimi", "resolve_model", "synthetic_checkpoint"]
