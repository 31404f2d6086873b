"""Synthetic Kyutai speech-to-text checkpoints, laid out like ``kyutai/stt-1b-en_fr``.

A Kyutai STT repo is a Moshi-style LM that generates no audio (``dep_q`` 0), listens
to all 32 Mimi codebooks (``n_q`` 32, ``delays`` all 0) and whose text stream runs
``stt_config.audio_delay_seconds`` behind the audio; the 1B model adds four
"extra heads" that predict pauses. ``write_stt_repo`` writes the same files under the
same names (config.json with ``model_type: "stt"``, ``stt_config``, ``lm_gen_config``;
``model.safetensors``; ``tokenizer_en_fr_audio_8000.model``; the Mimi file) at a tiny
size.

Two kinds of weights:

* ``random``: moshi's own random init. The text it emits depends on the audio, which
  is what a test of batching needs (a stream that leaked into another would change
  its words).
* ``scripted``: weights built so that greedy decoding emits *chosen* text tokens at
  *chosen* frames whatever the audio, so timestamp logic can be checked exactly.
  How: every layer but the first attention is zeroed; that attention has zero
  queries and keys (so it averages uniformly over the steps seen) and its values read
  one feature that only the initial token's embedding has. After ``t + 1`` steps the
  residual stream therefore carries ``s = c / (t + 1)`` next to a constant feature,
  and the text head's logits are lines ``a_j * s + b_j``: with slopes falling and
  intercepts set at the switch points, token ``j`` wins exactly on its interval of
  steps. The pause head (extra head 2) switches on the same way at a chosen step.
  Written in float32, as bf16 cannot hold the intercepts precisely enough.

Random weights: valid for mechanics and speed, never for quality.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .core import MIMI_NAME
from .lm import CONFIG_NAME, MOSHI_NAME, lm_kwargs, random_state, to_published, write_repo_files
from .tensors import DictSource

#: File names as published in kyutai/stt-1b-en_fr.
STT_TOKENIZER_NAME = "tokenizer_en_fr_audio_8000.model"
STT_MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"

#: The stt-1b-en_fr values of the keys that make a checkpoint speech-to-text.
STT_CONFIG = {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0}
STT_LM_GEN_CONFIG = {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50}

Kind = Literal["random", "scripted"]


def stt_config_json(*, delay: float = 0.5, prefix: float = 0.0, extra_heads: int = 4) -> dict:
    """config.json of a tiny STT repo: the published keys with tiny LM sizes."""
    lm = lm_kwargs("tiny")
    lm.update(n_q=32, dep_q=0, delays=[0] * 33, extra_heads_num_heads=extra_heads, extra_heads_dim=6)
    return {
        "moshi_name": MOSHI_NAME,
        "mimi_name": STT_MIMI_NAME,
        "tokenizer_name": STT_TOKENIZER_NAME,
        "model_type": "stt",
        "stt_config": {"audio_delay_seconds": delay, "audio_silence_prefix_seconds": prefix},
        "lm_gen_config": dict(STT_LM_GEN_CONFIG),
        **lm,
    }


def scripted_state(config: dict, script: Sequence[tuple[int, int]], *, pause_from: int | None = None,
                   default: int = 3) -> dict:
    """State dict whose greedy text output at step ``t`` follows ``script``.

    ``script``: ``(first step, token)`` pairs with increasing steps (step 1 or later);
    before the first pair the output is ``default``. Each token holds until the next
    pair's step. With ``pause_from``, extra head 2's first class (the pause
    probability) is above 0.5 from that step on and below before.
    """
    import torch

    state = random_state(config, 0)
    for key in state:
        state[key].zero_()
    for key in state:
        if key.endswith(".alpha"):
            state[key].fill_(1.0)
    dim, text_card = config["dim"], config["text_card"]
    d_init, d_sig, d_const = 0, 1, 2
    # Embeddings: the initial text token (id text_card) marks step 0; every other token
    # is the same constant; audio embeddings stay zero, so the audio does not matter.
    state["text_emb.weight"][:, d_const] = 1.0
    state["text_emb.weight"][text_card] = 0.0
    state["text_emb.weight"][text_card, d_init] = 1.0
    # Layer 0 attention: q = k = 0 (uniform weights); head 0's first value channel reads
    # the initial-token feature; the output projection writes it to the signal feature.
    state["transformer.layers.0.self_attn.in_projs.0.weight"][2 * dim + 0, d_init] = 1.0
    state["transformer.layers.0.self_attn.out_projs.0.weight"][d_sig, 0] = 1.0
    c = float(np.sqrt(dim))  # RMSNorm makes the initial embedding sqrt(dim) in d_init

    def signal(step: float) -> float:  # the signal feature after step `step` (steps count from 0)
        return c / (step + 1.0)

    steps = [0] + [int(s) for s, _ in script]
    tokens = [default] + [int(t) for _, t in script]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("script steps must increase and start at 1 or later")
    if len(set(tokens)) != len(tokens):
        raise ValueError("each token may appear once in a script (an interval each)")
    # Lines a_j * s + b_j: slopes fall with j; line j overtakes j-1 halfway between steps.
    slopes = np.arange(len(tokens), 0, -1, dtype=np.float64)
    intercepts = np.zeros(len(tokens))
    for j in range(1, len(tokens)):
        switch = signal(steps[j] - 0.5)
        intercepts[j] = intercepts[j - 1] + (slopes[j - 1] - slopes[j]) * switch
    w = state["text_linear.weight"]
    w[:, d_const] = -1e4  # tokens not in the script never win
    for tok, a, b in zip(tokens, slopes, intercepts):
        w[tok, d_sig] = float(a)
        w[tok, d_const] = float(b)
    if "extra_heads.2.weight" in state:
        head = state["extra_heads.2.weight"]
        if pause_from is not None:  # class 0 logit = k * (switch - s): positive once s falls below
            k = 40.0 / (signal(pause_from - 1) - signal(pause_from))
            head[0, d_sig] = -k
            head[0, d_const] = k * signal(pause_from - 0.5)
        else:
            head[0, d_const] = -20.0
    return {k: v.to(torch.float32) for k, v in state.items()}


def write_stt_repo(dest: str | os.PathLike, *, kind: Kind = "random", seed: int = 0,
                   mimi_path: str | os.PathLike | None = None, delay: float = 0.5, prefix: float = 0.0,
                   script: Sequence[tuple[int, int]] = (), pause_from: int | None = None,
                   extra_heads: int = 4, layout: str = "pytorch") -> Path:
    """Write a tiny synthetic STT repo at ``dest`` (see the module docstring) and return it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = stt_config_json(delay=delay, prefix=prefix, extra_heads=extra_heads)
    if kind == "random":
        state = random_state(config, seed)
        dtype = "bfloat16"
    elif kind == "scripted":
        state = scripted_state(config, script, pause_from=pause_from)
        dtype = "float32"
    else:
        raise ValueError(f"kind must be 'random' or 'scripted', not {kind!r}")
    import torch

    with torch.no_grad():
        source = DictSource(to_published(state))
    return write_repo_files(dest, config, source, layout, dtype, f"synthetic-stt {kind}", mimi_path)


def ensure_synthetic_stt(seed: int = 0, *, layout: str = "pytorch",
                         mimi_path: str | os.PathLike | None = None) -> Path:
    """The tiny random-weight STT repo in moshikit's cache, written on first use (seconds)."""
    from .core import ensure_synthetic_mimi, synthetic_dir

    dest = synthetic_dir() / f"seed{seed}" / f"stt-tiny-{layout}"
    if not (dest / CONFIG_NAME).exists():
        write_stt_repo(dest, kind="random", seed=seed, layout=layout,
                       mimi_path=mimi_path or ensure_synthetic_mimi())
    return dest


# ---------------------------------------------------------------- full-size architectures

#: The LM part of the published config.json of each Kyutai STT model (``n_q`` 32, ``dep_q`` 0,
#: ``delays`` all 0, RMSNorm in fp32, SiLU gating, RoPE with max_period 1e5, FFN 2048 x 4.125).
#: Sources read on 2026-12-03: the HF config.json keys quoted for kyutai/stt-1b-en_fr (dim 2048,
#: 16 layers, 16 heads, hidden_scale 4.125, context 750, max_period 100000, text_card 8000),
#: Kyutai's Rust ``Config::stt_2_6b`` (48 layers, 32 heads, 8448 = 2048 x 4.125 feed-forward,
#: context 375, 4000 text tokens), transformers' KyutaiSpeechToTextConfig (the 2.6b defaults:
#: hidden 2048, 48 layers, 32 heads, ffn 11264 = 2 x 5632, vocab 4001) and its 1b converter
#: (vocab 8001, 16 layers, 16 heads of 128), and stack-facts (delays, extra heads, tokenizers).
_STT_LM_COMMON = {
    "card": 2048, "n_q": 32, "dep_q": 0, "delays": [0] * 33, "existing_text_padding_id": 3,
    "dim": 2048, "hidden_scale": 4.125, "causal": True, "layer_scale": None, "max_period": 100000.0,
    "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
    "depformer_dim": 1024, "depformer_num_heads": 16, "depformer_num_layers": 6,
    "depformer_dim_feedforward": 4224, "depformer_multi_linear": True, "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "depformer_context": 8, "depformer_max_period": 10000,
    "depformer_gating": "silu", "depformer_causal": True, "depformer_layer_scale": None,
}

FULL_STT = {
    "stt": {  # kyutai/stt-1b-en_fr: ~1.0 B parameters
        "repo": "kyutai/stt-1b-en_fr", "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
        "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
        "lm": {"num_heads": 16, "num_layers": 16, "context": 750, "text_card": 8000,
               "extra_heads_num_heads": 4, "extra_heads_dim": 6},
    },
    "stt-en": {  # kyutai/stt-2.6b-en: ~2.6 B parameters
        "repo": "kyutai/stt-2.6b-en", "tokenizer_name": "tokenizer_en_audio_4000.model",
        "stt_config": {"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0},
        "lm": {"num_heads": 32, "num_layers": 48, "context": 375, "text_card": 4000},
    },
}


def full_stt_config_json(name: str = "stt") -> dict:
    """config.json of the published STT model ``name`` (``stt`` or ``stt-en``), full size."""
    if name not in FULL_STT:
        raise ValueError(f"full-size synthetic STT models: {', '.join(FULL_STT)}, not {name!r}")
    spec = FULL_STT[name]
    return {
        "moshi_name": MOSHI_NAME, "mimi_name": STT_MIMI_NAME, "tokenizer_name": spec["tokenizer_name"],
        "model_type": "stt", "stt_config": dict(spec["stt_config"]), "lm_gen_config": dict(STT_LM_GEN_CONFIG),
        **_STT_LM_COMMON, **spec["lm"],
    }


def write_full_stt_repo(dest: str | os.PathLike, name: str = "stt", *, seed: int = 0,
                        mimi_path: str | os.PathLike | None = None, dtype: str = "bfloat16") -> Path:
    """A full-size random-weight STT repo (the published architecture of ``name``), its tensors
    streamed to disk from a shared random pool (never all in memory): ~2 GB (stt) or ~5 GB (stt-en)
    in bf16, a minute or two. Random weights: valid for speed and mechanics, never for quality."""
    from .lm import published_shapes
    from .tensors import PoolSource

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = full_stt_config_json(name)
    source = PoolSource(published_shapes(config=config), seed)
    return write_repo_files(dest, config, source, "pytorch", dtype, f"synthetic-stt full {name} seed={seed}",
                            mimi_path)


def ensure_full_stt(name: str = "stt", seed: int = 0) -> Path:
    """The full-size synthetic STT repo ``name`` in moshikit's cache, written on first use."""
    from .core import ensure_synthetic_mimi, synthetic_dir

    dest = synthetic_dir() / f"{name}-full-pytorch"
    if not (dest / CONFIG_NAME).exists():
        write_full_stt_repo(dest, name, seed=seed, mimi_path=ensure_synthetic_mimi())
    return dest


__all__ = ["FULL_STT", "STT_CONFIG", "ensure_full_stt", "full_stt_config_json", "write_full_stt_repo", "STT_MIMI_NAME", "STT_TOKENIZER_NAME", "ensure_synthetic_stt", "scripted_state",
           "stt_config_json", "write_stt_repo", "MIMI_NAME"]
