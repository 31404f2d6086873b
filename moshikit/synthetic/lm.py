"""Synthetic Moshi LM checkpoints laid out like the published Hugging Face repos.

``write_moshi_repo(dest)`` writes a directory shaped like ``kyutai/moshiko-pytorch-bf16``:

* ``model.safetensors``: the LM's tensors under the names the *published* file
  uses. Those are moshi's training names, not ``LMModel.state_dict()``'s: each
  attention stores one ``self_attn.in_proj_weight`` and one ``self_attn.out_proj.weight``
  (for the depth transformer, the per-codebook weights stacked along dim 0);
  ``StreamingMultiheadAttention._load_hook`` splits them into ``in_projs.{i}`` /
  ``out_projs.{i}`` on load. Everything else is named as in the state dict.
* ``config.json``: ``moshi_name``, ``mimi_name``, ``tokenizer_name``, ``model_type``,
  ``lm_gen_config`` and the ``LMModel`` keyword arguments, as read by
  ``moshi.models.loaders.CheckpointInfo`` and ``moshi_mlx.models.LmConfig.from_config_dict``.
* ``tokenizer_spm_32k_3.model``: a SentencePiece model trained on the spot with
  exactly ``text_card`` pieces (the id range the LM can emit).
* the Mimi file named in ``config.json`` when ``mimi_path`` is given.

With ``layout="mlx"`` the same weights are written in the layout of the MLX repos
(``kyutai/moshiko-mlx-bf16``): the names of ``moshi_mlx.models.Lm``'s parameters,
as produced by Kyutai's ``scripts/import_mlx.py`` and loaded by
``Lm.load_weights(file, strict=True)``.

Sizes: ``tiny`` (the 18 M-parameter test model, built with moshi's own random
init in about a second) and ``full`` (the real 7.7 B Moshi architecture of
``moshi.models.loaders._lm_kwargs``; its tensors are streamed to disk from a
shared pool of random values, never held in memory all at once: ~15 GB in bf16).

Random weights: valid for speed and mechanics, never for quality.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .core import MIMI_NAME
from .tensors import DictSource, PoolSource, TensorItem, TensorSource, write_safetensors

#: File names as published in kyutai/moshiko-pytorch-bf16 / kyutai/moshiko-mlx-bf16.
MOSHI_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
CONFIG_NAME = "config.json"

Size = Literal["tiny", "full"]
Layout = Literal["pytorch", "mlx"]

#: Overrides of ``loaders._lm_kwargs`` for the tiny test model (~18 M parameters).
TINY_OVERRIDES = {
    "dim": 256,
    "num_heads": 4,
    "num_layers": 4,
    "depformer_dim": 128,
    "depformer_dim_feedforward": 256,
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
    "text_card": 64,
    "context": 500,
}

#: LMGen's own defaults (what moshi's server uses for Moshi), recorded in config.json.
LM_GEN_CONFIG = {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25}

# Name pairs (StreamingMultiheadAttention's state-dict name, published name). The TTS models'
# cross-attention is published under the same names (moshi_mlx's loader reads only those).
_ATTN_RENAMES = ((".self_attn.in_projs.", ".self_attn.in_proj_weight"),
                 (".self_attn.out_projs.", ".self_attn.out_proj.weight"),
                 (".cross_attention.in_projs.", ".cross_attention.in_proj_weight"),
                 (".cross_attention.out_projs.", ".cross_attention.out_proj.weight"))



# --------------------------------------------------------------------------- configs


def lm_kwargs(size: Size = "tiny") -> dict:
    """The ``LMModel`` keyword arguments (the LM part of config.json) for ``size``."""
    from moshi.models import loaders

    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    cfg = json.loads(json.dumps(loaders._lm_kwargs))  # deep copy, JSON-safe
    if size == "tiny":
        cfg.update(TINY_OVERRIDES)
    return cfg


def config_json(size: Size = "tiny", *, lm_gen_config: dict | None = None) -> dict:
    """The config.json of a Moshi repo of ``size`` (file-name keys first, then the LM kwargs)."""
    return {
        "moshi_name": MOSHI_NAME,
        "mimi_name": MIMI_NAME,
        "tokenizer_name": TOKENIZER_NAME,
        "model_type": "moshi",
        "lm_gen_config": dict(LM_GEN_CONFIG if lm_gen_config is None else lm_gen_config),
        **lm_kwargs(size),
    }


def lm_config_of(config: dict) -> dict:
    """The LM kwargs of a config.json (what CheckpointInfo keeps after popping the rest)."""
    drop = {"moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
            "lm_gen_config", "tts_config", "stt_config", "model_id"}
    return {k: v for k, v in config.items() if k not in drop}


# --------------------------------------------------------------------------- key layouts


def published_name(state_dict_name: str) -> tuple[str, int | None]:
    """Map an ``LMModel.state_dict()`` name to its published name.

    Returns ``(name, i)``: ``i`` is the per-step index of a ``in_projs.{i}`` /
    ``out_projs.{i}`` weight (stacked along dim 0 in the published tensor), else None.
    """
    for inner, outer in _ATTN_RENAMES:
        if inner in state_dict_name and state_dict_name.endswith(".weight"):
            head, tail = state_dict_name.split(inner, 1)
            return head + outer, int(tail.split(".", 1)[0])
    return state_dict_name, None


def to_published(state: dict) -> dict:
    """An ``LMModel.state_dict()`` renamed to the published layout (torch tensors)."""
    import torch

    out: dict = {}
    stacks: dict[str, dict[int, object]] = {}
    for key, value in state.items():
        name, idx = published_name(key)
        if idx is None:
            out[name] = value
        else:
            stacks.setdefault(name, {})[idx] = value
    for name, parts in stacks.items():
        out[name] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return out


def published_shapes(size: Size = "tiny", config: dict | None = None) -> dict[str, tuple[int, ...]]:
    """``{published name: shape}`` of the LM, from a model built on the ``meta`` device (instant)."""
    import torch
    from moshi.models import loaders

    cfg = lm_config_of(config) if config is not None else lm_kwargs(size)
    model = loaders.get_moshi_lm(None, lm_kwargs=cfg, device="meta", dtype=torch.bfloat16)
    shapes: dict[str, list[int]] = {}
    for key, value in model.state_dict().items():
        name, idx = published_name(key)
        shape = list(value.shape)
        if idx is not None and name in shapes:
            shapes[name][0] += shape[0]
        else:
            shapes[name] = shape
    return {k: tuple(v) for k, v in shapes.items()}


@dataclass(frozen=True)
class _MlxEntry:
    """One MLX tensor: rows ``[chunk * n / chunks, (chunk + 1) * n / chunks)`` of a published
    tensor, reshaped (``alpha`` [1, 1, D] -> [D])."""

    name: str
    source: str
    shape: tuple[int, ...]
    chunk: int = 0
    chunks: int = 1


def mlx_layout(shapes: dict[str, tuple[int, ...]], config: dict) -> list[_MlxEntry]:
    """How the MLX repo's tensors derive from the published PyTorch ones.

    Mirrors Kyutai's ``scripts/import_mlx.py`` and ``moshi_mlx.models.Lm.load_pytorch_weights``.
    """
    lm = lm_config_of(config)
    n_q, dep_q = lm["n_q"], lm["dep_q"]
    schedule = lm.get("depformer_weights_per_step_schedule")
    chunks = (max(schedule) + 1) if schedule else dep_q
    out: list[_MlxEntry] = []

    def add(name: str, source: str, chunk: int = 0, n_chunks: int = 1) -> None:
        shape = shapes[source]
        if source.endswith(".alpha"):
            shape = shape[-1:]
        else:
            shape = (shape[0] // n_chunks, *shape[1:])
        out.append(_MlxEntry(name, source, tuple(shape), chunk, n_chunks))

    for name in ("text_emb.weight", "text_linear.weight", "text_emb.out1.weight", "text_emb.out2.weight"):
        if name in shapes:
            add(name, name)
    add("out_norm.weight", "out_norm.alpha")
    for i in range(n_q):
        add(f"audio_embs.{i}.weight", f"emb.{i}.weight")
    for key in sorted(shapes):
        if key.startswith("transformer."):
            add(key.replace(".alpha", ".weight").replace(".in_proj_weight", ".in_proj.weight"), key)
        elif key.startswith(("condition_provider.", "extra_heads.")):
            add(key, key)
    for s in range(dep_q):
        w = schedule[s] if schedule else s
        p = f"depformer.slices.{s}"
        add(f"{p}.linear_in.weight", f"depformer_in.{w}.weight")
        add(f"{p}.linear_out.weight", f"linears.{s}.weight")
        emb = "depformer_text_emb" if s == 0 else f"depformer_emb.{s - 1}"
        add(f"{p}.emb.weight", f"{emb}.weight")
        for sub in ("low_rank", "out1", "out2"):
            if f"{emb}.{sub}.weight" in shapes:
                add(f"{p}.emb.{sub}.weight", f"{emb}.{sub}.weight")
        for layer in range(lm["depformer_num_layers"]):
            src, dst = f"depformer.layers.{layer}", f"{p}.transformer.layers.{layer}"
            add(f"{dst}.norm1.weight", f"{src}.norm1.alpha")
            add(f"{dst}.norm2.weight", f"{src}.norm2.alpha")
            add(f"{dst}.gating.linear_in.weight", f"{src}.gating.{w}.linear_in.weight")
            add(f"{dst}.gating.linear_out.weight", f"{src}.gating.{w}.linear_out.weight")
            add(f"{dst}.self_attn.in_proj.weight", f"{src}.self_attn.in_proj_weight", w, chunks)
            add(f"{dst}.self_attn.out_proj.weight", f"{src}.self_attn.out_proj.weight", w, chunks)
    return out


def to_mlx(published: dict, config: dict) -> dict:
    """Published (PyTorch-layout) tensors converted to the MLX repo layout (torch tensors)."""
    shapes = {k: tuple(v.shape) for k, v in published.items()}
    out = {}
    for e in mlx_layout(shapes, config):
        t = published[e.source]
        if e.source.endswith(".alpha"):
            t = t.reshape(-1)
        elif e.chunks > 1:
            t = t.chunk(e.chunks, dim=0)[e.chunk]
        out[e.name] = t.contiguous()
    return out


# --------------------------------------------------------------------------- tokenizer

_CORPUS = """\
hello how are you doing today
i am fine thank you and you
the quick brown fox jumps over the lazy dog
moshi listens and speaks at the same time
we talk about the weather the news and some music
what is your name and where do you live
it is a small model that only exists for tests
please tell me a story about the sea and the wind
yes no maybe i do not know let me think
good morning good evening good night see you soon
"""


def write_tokenizer(path: str | os.PathLike, vocab_size: int, *, corpus: str = _CORPUS, chars: str = "") -> Path:
    """Train a SentencePiece BPE model with exactly ``vocab_size`` pieces on ``corpus`` (covering
    every character of ``chars``) and write it: the one tokenizer of every synthetic checkpoint.

    Ids 0-3 are ``<unk> <s> </s> <pad>`` as in Kyutai's tokenizers (moshi treats 0 and 3
    as padding). Vocabularies larger than the tiny corpus supports are filled with
    user-defined pieces ``<extra_N>``, so any ``text_card`` (32000 for Moshi) works.
    """
    import sentencepiece as spm

    lines = corpus.splitlines() * 20 + ([" ".join(chars)] if chars else [])

    def train(extra: list[str]) -> bytes:
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, required_chars=chars, unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1,
            hard_vocab_limit=False, user_defined_symbols=extra, minloglevel=2)
        return out.getvalue()

    proto = train([])
    n = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    if n < vocab_size:
        proto = train([f"<extra_{i}>" for i in range(vocab_size - n)])
    n = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    if n != vocab_size:
        raise RuntimeError(f"trained tokenizer has {n} pieces, wanted {vocab_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto)
    return path


# --------------------------------------------------------------------------- repos


def random_model(config: dict, seed: int):
    """moshi's own random init of the LM of ``config`` (fp32, CPU), seeded: the one random-init
    loader of every synthetic checkpoint built from a model."""
    import torch
    from moshi.models import loaders

    torch.manual_seed(seed)
    return loaders.get_moshi_lm(None, lm_kwargs=lm_config_of(config), device="cpu", dtype=torch.float32)


def random_state(config: dict, seed: int) -> dict:
    """``random_model``'s state dict (its own tensors, detached)."""
    return {k: v.detach().clone() for k, v in random_model(config, seed).state_dict().items()}


def _items(source: TensorSource, config: dict, layout: Layout, dtype: str) -> list[TensorItem]:
    import torch

    tdtype = getattr(torch, dtype)
    if layout == "pytorch":
        return [TensorItem(name, shape, lambda s, c, name=name: source.read(name, s, c, tdtype))
                for name, shape in sorted(source.shapes.items())]
    if layout != "mlx":
        raise ValueError(f"layout must be 'pytorch' or 'mlx', not {layout!r}")
    items = []
    for e in mlx_layout(source.shapes, config):
        base = 0
        if e.chunks > 1:
            base = e.chunk * int(np.prod(e.shape))
        items.append(TensorItem(e.name, e.shape,
                           lambda s, c, src=e.source, base=base: source.read(src, base + s, c, tdtype)))
    return sorted(items, key=lambda it: it.name)


def _place(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_moshi_repo(dest: str | os.PathLike, *, size: Size = "tiny", seed: int = 0,
                     mimi_path: str | os.PathLike | None = None, layout: Layout = "pytorch",
                     dtype: str = "bfloat16", init: Literal["model", "pool"] | None = None) -> Path:
    """Write a synthetic Moshi repo directory at ``dest`` and return it.

    ``layout="pytorch"`` mirrors kyutai/moshiko-pytorch-bf16, ``layout="mlx"`` mirrors
    kyutai/moshiko-mlx-bf16; for one ``size``, ``seed`` and ``init`` both hold the same
    values. ``mimi_path`` (e.g. from ``synthetic.write_mimi``) is hard-linked (else
    copied) in under the name config.json gives. ``init``: ``"model"`` runs moshi's
    own random init (the default for ``tiny``), ``"pool"`` streams values from a
    shared random pool without building the model (the default, and the only
    practical choice, for ``full``: ~15 GB in bf16, never in tests).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = config_json(size)
    init = init or ("model" if size == "tiny" else "pool")
    if init == "model":
        source = DictSource(to_published(random_state(config, seed)))
    elif init == "pool":
        source = PoolSource(published_shapes(config=config), seed)
    else:
        raise ValueError(f"init must be 'model' or 'pool', not {init!r}")
    return write_repo_files(dest, config, source, layout, dtype, f"synthetic-lm {size} seed={seed}", mimi_path)


def write_repo_files(dest: Path, config: dict, source: TensorSource, layout: Layout, dtype: str, label: str,
                     mimi_path: str | os.PathLike | None, *, corpus: str = _CORPUS, chars: str = "") -> Path:
    """The files of a published LM repo: weights (in ``layout``), tokenizer (``write_tokenizer`` of
    ``corpus`` and ``chars``), Mimi, config.json."""
    fmt = "pt" if layout == "pytorch" else "mlx"
    write_safetensors(dest / config["moshi_name"], _items(source, config, layout, dtype), dtype,
                       {"format": fmt, "moshikit": label})
    write_tokenizer(dest / config["tokenizer_name"], config["text_card"], corpus=corpus, chars=chars)
    if mimi_path is not None:
        _place(Path(mimi_path), dest / config["mimi_name"])
    (dest / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return dest


def ensure_synthetic_moshi(seed: int = 0, *, layout: Layout = "pytorch",
                           mimi_path: str | os.PathLike | None = None) -> Path:
    """The tiny synthetic Moshi repo in moshikit's cache, written on first use (seconds)."""
    from .core import synthetic_dir

    dest = synthetic_dir() / f"seed{seed}" / f"moshi-tiny-{layout}"
    if not (dest / CONFIG_NAME).exists():
        write_moshi_repo(dest, size="tiny", seed=seed, layout=layout, mimi_path=mimi_path)
    elif mimi_path is not None and not (dest / MIMI_NAME).exists():
        _place(Path(mimi_path), dest / MIMI_NAME)
    return dest
