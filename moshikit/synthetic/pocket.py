"""Synthetic Pocket TTS checkpoints, laid out like Kyutai's published ones.

Pocket TTS (the ``pocket-tts`` package) reads a YAML config (``pocket_tts/config/english.yaml``)
naming one ``model.safetensors`` (the whole ``TTSModel`` state dict: ``flow_lm.*`` and
``mimi.*``), a ``tokenizer.json`` (HuggingFace ``tokenizers``) and, for its predefined
voices, one voice-state file per name (``embeddings/<name>.safetensors``, written by
``pocket_tts.export_model_state``). Published, these live in ``kyutai/pocket-tts`` (with
voice cloning, gated) and ``kyutai/pocket-tts-without-voice-cloning``, under
``languages/english/``. ``write_pocket_repo`` writes the same files under the same names:
a tokenizer trained on the fly, the model built by pocket_tts itself from the config (its own
initialisation, seeded), and voice states computed from the bundled speech sample.
``size="full"`` keeps the published dimensions (~100 M parameters: for ``bench tts``);
``"tiny"`` shrinks them for tests. Random weights: valid for mechanics and speed, never quality.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

from ..tts.pocket_config import LANGUAGE_DIR, TOKENIZER, WEIGHTS, import_pocket_tts, one_thread, write_config

CONFIG = "config.yaml"
#: Predefined voices written beside the synthetic model (names as in pocket-tts).
VOICES = ("alba", "marius", "javert")
SAMPLE_RATE = 24000

#: The published english.yaml (pocket-tts 4.0.1), without its weight paths.
FULL = {
    "default_temperature": 0.3,
    "replace_characters": {"’": "'", "‘": "'"},
    "flow_lm": {
        "insert_bos_before_voice": True, "dtype": "float32",
        "flow": {"depth": 6, "dim": 512},
        "transformer": {"d_model": 1024, "hidden_scale": 4, "max_period": 10000, "num_heads": 16, "num_layers": 6},
        "lookup_table": {"dim": 1024, "n_bins": 4000, "tokenizer": "tokenizers", "tokenizer_path": ""},
    },
    "mimi": {
        "dtype": "float32", "sample_rate": SAMPLE_RATE, "inner_dim": 32, "outer_dim": 512, "channels": 1,
        "frame_rate": 12.5,
        "seanet": {"dimension": 512, "channels": 1, "n_filters": 64, "n_residual_layers": 1, "ratios": [6, 5, 4],
                   "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "dilation_base": 2,
                   "pad_mode": "constant", "compress": 2},
        "transformer": {"d_model": 512, "num_heads": 8, "num_layers": 2, "layer_scale": 0.01, "context": 250,
                        "dim_feedforward": 2048, "input_dimension": 512, "output_dimensions": [512]},
        "quantizer": {"dimension": 32, "output_dimension": 512},
    },
}


def config_dict(size: str = "tiny", n_bins: int = 4000) -> dict:
    """The config of a synthetic model: the published one, shrunk for ``tiny``."""
    cfg = copy.deepcopy(FULL)
    cfg["flow_lm"]["lookup_table"]["n_bins"] = n_bins
    if size == "full":
        return cfg
    if size != "tiny":
        raise ValueError(f"unknown size {size!r}: tiny or full")
    flow = cfg["flow_lm"]
    flow["flow"] = {"depth": 1, "dim": 32}
    flow["transformer"] = {"d_model": 64, "hidden_scale": 2, "max_period": 10000, "num_heads": 2, "num_layers": 1}
    flow["lookup_table"]["dim"] = 64
    mimi = cfg["mimi"]
    mimi.update(inner_dim=8, outer_dim=32)
    mimi["seanet"].update(dimension=32, n_filters=4)
    mimi["transformer"].update(d_model=32, num_heads=2, num_layers=1, dim_feedforward=64, input_dimension=32,
                               output_dimensions=[32])
    mimi["quantizer"] = {"dimension": 8, "output_dimension": 32}
    return cfg


_CORPUS = """\
Hello world. I am Kyutai's Pocket TTS. I'm fast enough to run on small CPUs. I hope you'll like me.
The quick brown fox jumps over the lazy dog, and then it runs away into the forest.
How are you today? Fine, thanks! What time is it? It is half past seven in the evening.
Numbers like 1, 2, 3, 42 and 2026 appear in text; so do dates, prices ($5) and percentages (10%).
She said: "Please read this chapter aloud, slowly and clearly, for the children."
"""
_CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
          ".,;:!?'\"-()&%$@/+=*#")


def write_tokenizer(path: Path, vocab_size: int = 256) -> int:
    """A Unigram ``tokenizer.json`` with a SentencePiece-style pre-tokenizer (the published one is a
    SentencePiece model converted to this format), trained on the fly; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], unk_token="<unk>",
                                      initial_alphabet=list(_CHARS), show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines() * 20 + [" ".join(_CHARS)], trainer=trainer)
    # the corpus is small: unused pieces fill the vocabulary to the size asked (4000 as published)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<unused{i}>" for i in range(missing)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok.get_vocab_size()


def _build_model(cfg: dict, tokenizer: Path, seed: int):
    """pocket_tts builds the model from the config (no weights path: its own init), then every
    tensor keeps its (seeded) initial value; EOS never fires, so each sentence runs to its length bound."""
    import logging

    import torch

    import_pocket_tts()
    from pocket_tts import TTSModel

    with tempfile.TemporaryDirectory() as tmp:
        plain = copy.deepcopy(cfg)
        plain["flow_lm"]["lookup_table"]["tokenizer_path"] = str(tokenizer)
        import yaml

        yaml_path = Path(tmp) / "build.yaml"
        yaml_path.write_text(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True), encoding="utf-8")
        logging.getLogger("pocket_tts").setLevel(logging.ERROR)
        torch.manual_seed(seed)  # pocket_tts's own initialisation, seeded
        model = TTSModel.load_model(config=yaml_path)
    with torch.no_grad():
        # pocket_tts leaves the voice projection at zeros until weights are loaded
        w = model.flow_lm.speaker_proj_weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)) / w.shape[-1] ** 0.5)
        model.flow_lm.out_eos.bias.fill_(-1e4)
    return model


def write_pocket_repo(folder: str | os.PathLike, *, size: str = "tiny", seed: int = 0) -> Path:
    """Write a synthetic Pocket TTS model into ``folder``: ``config.yaml`` (pointing at the files
    beside it), ``languages/english/{model.safetensors,tokenizer.json}`` and
    ``languages/english/embeddings/<voice>.safetensors``. Returns the config path."""
    import numpy as np
    import safetensors.torch
    import torch

    import_pocket_tts()
    from pocket_tts import export_model_state

    from .core import speech_sample

    folder = Path(folder)
    n_bins = write_tokenizer(folder / TOKENIZER, 256 if size == "tiny" else 4000)
    cfg = config_dict(size, n_bins)
    model = _build_model(cfg, folder / TOKENIZER, seed)
    weights = folder / WEIGHTS
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    sample = speech_sample()
    emb = folder / LANGUAGE_DIR / "embeddings"
    emb.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(VOICES):
        start = i * 3 * SAMPLE_RATE
        clip = torch.from_numpy(np.ascontiguousarray(sample[start:start + 3 * SAMPLE_RATE]))[None]
        with one_thread():  # as moshikit computes a voice's state (same kernels, same bits)
            export_model_state(model.get_state_for_audio_prompt(clip), emb / f"{name}.safetensors")
    return write_config(folder / CONFIG, cfg, weights, folder / TOKENIZER)


def ensure_synthetic_pocket(size: str = "tiny", seed: int = 0) -> Path:
    """``--model synthetic -b pocket``: the synthetic Pocket TTS folder, built on first use (seconds)."""
    from .core import synthetic_dir

    folder = synthetic_dir() / f"pocket-{size}-seed{seed}"
    if not (folder / CONFIG).is_file():
        import sys

        print(f"moshikit: building the synthetic Pocket TTS checkpoint in {folder} (first use)", file=sys.stderr)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_pocket_repo(tmp, size=size, seed=seed)
        # the config names absolute paths: rewrite them for the final place, then move it there
        import yaml

        cfg = yaml.safe_load((tmp / CONFIG).read_text(encoding="utf-8"))
        write_config(tmp / CONFIG, {k: v for k, v in cfg.items() if k != "weights_path"}, folder / WEIGHTS,
                     folder / TOKENIZER)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder
