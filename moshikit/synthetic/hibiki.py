"""Synthetic Hibiki checkpoints, laid out like ``kyutai/hibiki-1b-pytorch-bf16``.

Hibiki (Kyutai's simultaneous speech translation) is a Moshi-style multistream LM: it
listens to the source speech (8 Mimi codebooks for the 1B model) and speaks the
translation (8 more), with a text stream of the translation. What makes a repo Hibiki,
as moshi 0.2.13's loaders read it:

* ``config.json``: ``"model_type": "hibiki"``; a ``description`` conditioner (a lookup
  table, ``"type": "lut"``, over ``very_bad``/``bad``/``neutral``/``good``/``very_good``)
  summed into the input (``"fuser": {"sum": ["description"]}``); ``lm_gen_config``
  ``temp_text`` 0.4; delays ``[0, 0, 2 x 7, 0, 2 x 7]``; ``existing_text_padding_id`` 3.
  Kyutai's inference conditions on ``very_good`` and, with classifier-free guidance
  (``cfg_coef != 1``), on ``very_bad`` for the unconditioned half.
* tensors: those of a Moshi LM plus ``condition_provider.conditioners.description.*``.
* ``tokenizer_spm_48k_multi6_2.model`` and ``mimi-pytorch-e351c8d8@125.safetensors``.

(The keys were read from a description of the published 1B config; moshikit has no
route to the hub to list the repo itself.)

End of input: Kyutai feeds one frame whose codes are all ``card`` (2048) after the
last real frame and waits for the text EOS (id 2). Random weights would almost never
say EOS, so the tiny synthetic model is given one wired behaviour: the embedding of
code ``card`` in the first source codebook is a large vector along one feature, which
the text head maps to the EOS logit. The model then says EOS when it reads that code:
right after the end of input (and in its first steps, where moshi feeds the same id
as the initial token: an EOS there is ignored, as Kyutai's inference ignores any EOS
before the end of input). Everything else is moshi's own random init.

``size="full"`` (``bench translate --lm-size full``) keeps Hibiki 1B's published temporal
transformer (Kyutai's Rust server config for kyutai/hibiki-1b-rs-bf16: d_model 2048, 16 heads,
16 layers, feed-forward 8192, 48,000 text tokens out, 16 audio codebooks: 8 generated, 8
heard); its depth transformer (not in that config) is taken as moshi's (1024 wide, 6 layers,
weights per codebook). Its ~3.7 GB of bf16 tensors stream from a shared random pool, with the
same end-of-input wiring.

Random weights: valid for mechanics, parity and speed, never for quality.
"""

from __future__ import annotations

import os
from pathlib import Path

from .core import MIMI_NAME
from .lm import CONFIG_NAME, MOSHI_NAME, Size, lm_kwargs, published_shapes, random_state, to_published, \
    write_repo_files
from .tensors import DictSource, PoolSource

#: File names as published in kyutai/hibiki-1b-pytorch-bf16.
HIBIKI_TOKENIZER_NAME = "tokenizer_spm_48k_multi6_2.model"
HIBIKI_MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"
HIBIKI_LM_GEN_CONFIG = {"temp": 0.8, "temp_text": 0.4, "top_k": 250, "top_k_text": 25}
DESCRIPTIONS = ["very_bad", "bad", "neutral", "good", "very_good"]
EOS_ID = 2
#: The feature of the residual stream that carries "the end-of-input code was read".
_EOS_FEATURE = 5


#: Hibiki 1B's temporal transformer (see the module docstring); the rest is moshi's 7B LM's.
FULL_OVERRIDES = {"dim": 2048, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.0, "text_card": 48000}


def hibiki_config_json(*, codebooks: int = 8, size: Size = "tiny") -> dict:
    """config.json of a Hibiki repo: the published keys, with tiny LM sizes or (``full``) Hibiki 1B's."""
    lm = lm_kwargs(size)
    if size == "full":
        lm.update(FULL_OVERRIDES)
    lm.update(n_q=2 * codebooks, dep_q=codebooks, existing_text_padding_id=3,
              delays=[0] + ([0] + [2] * (codebooks - 1)) * 2,
              conditioners={"description": {"type": "lut", "lut": {
                  "n_bins": 31, "dim": 16, "tokenizer": "noop", "possible_values": list(DESCRIPTIONS)}}},
              fuser={"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                     "sum": ["description"], "prepend": [], "cross": []})
    return {
        "moshi_name": MOSHI_NAME,
        "mimi_name": HIBIKI_MIMI_NAME,
        "tokenizer_name": HIBIKI_TOKENIZER_NAME,
        "model_type": "hibiki",
        "lm_gen_config": dict(HIBIKI_LM_GEN_CONFIG),
        **lm,
    }


def wired_rows(config: dict) -> dict[str, tuple[int, float]]:
    """The end-of-input -> EOS wiring: {tensor name: (row, value)}; each row becomes zeros with
    ``value`` at ``_EOS_FEATURE``. The first source codebook is embedding ``dep_q`` of the LM's
    audio embeddings: its code ``card`` writes the feature, which the text head reads as EOS."""
    return {f"emb.{config['dep_q']}.weight": (config["card"], 60.0), "text_linear.weight": (EOS_ID, 4.0)}


def hibiki_state(config: dict, seed: int) -> dict:
    """moshi's random init for ``config`` plus the wired end-of-input -> EOS behaviour."""
    state = random_state(config, seed)
    for name, (row, value) in wired_rows(config).items():
        state[name][row] = 0.0
        state[name][row, _EOS_FEATURE] = value
    return state


class _WiredPool(PoolSource):
    """``PoolSource`` with ``hibiki_state``'s end-of-input wiring (``wired_rows``) in its windows."""

    def __init__(self, config: dict, seed: int) -> None:
        super().__init__(published_shapes(config=config), seed)
        self._dim = config["dim"]
        self._rows = {name: (row * self._dim, value) for name, (row, value) in wired_rows(config).items()}

    def read(self, name, start, count, dtype):
        flat = super().read(name, start, count, dtype)
        if name in self._rows:
            row, value = self._rows[name]
            lo, hi = max(start, row), min(start + count, row + self._dim)
            if lo < hi:  # the wired row overlaps this window: zeros, one feature set
                flat = flat.clone()
                flat[lo - start : hi - start] = 0
                if lo <= row + _EOS_FEATURE < hi:
                    flat[row + _EOS_FEATURE - start] = value
        return flat


def write_hibiki_repo(dest: str | os.PathLike, *, seed: int = 0, mimi_path: str | os.PathLike | None = None,
                      codebooks: int = 8, layout: str = "pytorch", size: Size = "tiny") -> Path:
    """Write a synthetic Hibiki repo at ``dest`` (see the module docstring) and return it: tiny
    (moshi's own random init, seconds) or ``full`` (streamed from the pool, ~3.7 GB, a minute or two)."""
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = hibiki_config_json(codebooks=codebooks, size=size)
    if size == "full":
        source = _WiredPool(config, seed)
    else:
        with torch.no_grad():
            source = DictSource(to_published(hibiki_state(config, seed)))
    return write_repo_files(dest, config, source, layout, "bfloat16", f"synthetic-hibiki {size} seed={seed}",
                            mimi_path)


def ensure_synthetic_hibiki(seed: int = 0, *, mimi_path: str | os.PathLike | None = None) -> Path:
    """The tiny synthetic Hibiki repo in moshikit's cache, written on first use (seconds)."""
    from .core import ensure_synthetic_mimi, synthetic_dir

    dest = synthetic_dir() / f"seed{seed}" / "hibiki-tiny-pytorch"
    if not (dest / CONFIG_NAME).exists():
        write_hibiki_repo(dest, seed=seed, mimi_path=mimi_path or ensure_synthetic_mimi())
    return dest


def ensure_full_hibiki(seed: int = 0) -> Path:
    """The full-size synthetic Hibiki 1B repo in moshikit's cache, written on first use."""
    from .core import ensure_synthetic_mimi, synthetic_dir

    dest = synthetic_dir() / f"seed{seed}" / "hibiki-full-pytorch"
    if not (dest / CONFIG_NAME).exists():
        write_hibiki_repo(dest, seed=seed, mimi_path=ensure_synthetic_mimi(), size="full")
    return dest


__all__ = ["DESCRIPTIONS", "EOS_ID", "HIBIKI_MIMI_NAME", "HIBIKI_TOKENIZER_NAME", "MIMI_NAME",
           "ensure_full_hibiki", "ensure_synthetic_hibiki", "hibiki_config_json", "hibiki_state", "write_hibiki_repo"]
