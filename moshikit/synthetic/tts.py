"""Synthetic Kyutai text-to-speech checkpoints, laid out like ``kyutai/tts-1.6b-en_fr``.

A Kyutai TTS repo is a Moshi-style LM that reads text and writes audio (``dep_q`` =
``n_q``, text and semantic codebook undelayed, the acoustic codebooks two steps
behind), conditioned on a speaker (the ``speaker_wavs`` tensor conditioner, fused by
cross-attention) and on two lookup tables summed into the input (``control``, always
``"ok"``, and ``cfg``, the classifier-free-guidance strength it was distilled for).
Its text stream runs with a second, look-ahead stream muxed in
(``demux_second_stream``, ``tts_config.second_stream_ahead``) and the audio runs
``tts_config.audio_delay`` seconds behind the text. ``model_id`` (``sig``, ``epoch``)
names the voice files that fit it: ``<voice>.<sig>@<epoch>.safetensors`` in the
``kyutai/tts-voices`` repo, each holding one ``speaker_wavs`` tensor ``[1, D, T]``.

``write_tts_repo`` writes the same files under the same names (config.json,
``dsm_tts_<sig>@<epoch>.safetensors``, ``tokenizer_spm_8k_en_fr_audio.model``
trained on the fly with exactly ``text_card`` pieces, the Mimi file) at a tiny size,
and ``write_voices`` a voices folder in the tts-voices layout (the source ``.wav``
beside its embedding). Random weights: valid for mechanics and speed, never quality.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .core import MIMI_NAME
from .lm import CONFIG_NAME, lm_kwargs, random_model, to_published, write_repo_files
from .tensors import DictSource

#: Names as published in kyutai/tts-1.6b-en_fr.
TTS_TOKENIZER_NAME = "tokenizer_spm_8k_en_fr_audio.model"
#: The synthetic model's id: voice files for it end in ``.synthetic@0.safetensors``.
MODEL_ID = {"sig": "synthetic", "epoch": 0}
#: Voices written beside the synthetic model (names as in kyutai/tts-voices).
VOICES = ("expresso/ex03-ex01_happy_001_channel1_334s.wav", "expresso/ex04-ex02_narration_001_channel1_674s.wav",
          "vctk/p225_023.wav", "unmute-prod-website/default_voice.wav")
DEFAULT_VOICE = VOICES[0]
#: The published generation settings and CFG values the 1.6B model was distilled for.
TTS_LM_GEN_CONFIG = {"temp": 0.6, "temp_text": 0.6, "top_k": 250, "top_k_text": 50}
CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
SPEAKER_DIM = 32  # the published speaker embedding is 512 wide


def tts_config_json(*, n_q: int = 8, model_id: dict | None = None) -> dict:
    """config.json of a tiny TTS repo: the published keys (tts-1.6b-en_fr) with tiny sizes."""
    model_id = dict(model_id or MODEL_ID)
    lm = lm_kwargs("tiny")
    dim = lm["dim"]
    lm.update(
        n_q=n_q, dep_q=n_q, delays=[0, 0] + [2] * (n_q - 1), text_card=192, existing_text_padding_id=3,
        depformer_low_rank_embeddings=32, depformer_pos_emb="none", depformer_weights_per_step=True,
        depformer_weights_per_step_schedule=list(range(min(n_q, 4))) + [4] * max(0, n_q - 4),
        demux_second_stream=True, text_card_out=None, cross_attention=True, num_layers=2, depformer_num_layers=1,
        conditioners={
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": SPEAKER_DIM}},
            "cfg": {"type": "lut", "lut": {"n_bins": len(CFG_VALUES), "dim": 16, "tokenizer": "noop",
                                           "possible_values": list(CFG_VALUES)}},
            "control": {"type": "lut", "lut": {"dim": dim, "n_bins": 1, "tokenizer": "noop",
                                               "possible_values": ["ok"]}},
        },
        fuser={"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1, "sum": ["control", "cfg"],
               "prepend": [], "cross": ["speaker_wavs"]},
    )
    return {
        "moshi_name": f"dsm_tts_{model_id['sig']}@{model_id['epoch']}.safetensors",
        "mimi_name": MIMI_NAME,
        "tokenizer_name": TTS_TOKENIZER_NAME,
        "model_type": "tts",
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
        "model_id": model_id,
        "lm_gen_config": dict(TTS_LM_GEN_CONFIG),
        **lm,
    }


#: Characters the tiny tokenizer must cover (the real one covers English and French text).
TOKENIZER_CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   ".,;:!?'\"-()&%$€@/+=*#’“”«»àâäçéèêëîïôöùûüÿœæÀÂÇÉÈÊÎÔÙÛŒ")
TTS_CORPUS = """\
Hello, how are you doing today? I am fine, thank you.
The quick brown fox jumps over the lazy dog.
Bonjour, comment allez-vous ? Très bien, merci beaucoup.
It is a small model that only exists for tests, and it speaks noise.
Please tell me a story about the sea and the wind.
Le petit chat dort sur la chaise, près de la fenêtre.
"""


def _random_state(config: dict, seed: int) -> dict:
    import torch

    model = random_model(config, seed)
    with torch.no_grad():
        _fit_text_head(model, config, seed)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit_text_head(model, config: dict, seed: int, steps: int = 40) -> None:
    """Make the text head choose between "next word" (id 0) and "pad" (id 3) as a trained one does.

    With random weights the head's input barely changes from step to step (it points along one
    direction, the constant conditioning), so random rows for ids 0 and 3 would decide the same way
    forever and --speed (a bonus on the pad logit) would change nothing. So: run the LM for a few
    steps on random text, take the mean direction ``m`` of the head's input and its main direction
    of variation ``p``, and set rows 0 and 3 to ``a m +/- b p`` (every other row near 0): both ids
    beat the rest, and which of them wins follows the input, with a margin of a few logits.
    """
    import torch
    from moshi.conditioners import ConditionAttributes, TensorCondition
    from moshi.models.lm import LMGen

    g = torch.Generator().manual_seed(seed + 1)
    text_card = config["text_card"]
    voice = torch.randn(1, 5 * 10, SPEAKER_DIM, generator=g)
    attrs = ConditionAttributes(text={"control": "ok", "cfg": "2.0"},
                                tensor={"speaker_wavs": TensorCondition(voice, torch.ones(1, 50, dtype=torch.bool))})
    tensors = model.condition_provider.prepare_and_provide([attrs])
    seen: list = []
    hook = model.text_linear.register_forward_hook(
        lambda mod, inp, out: seen.append(inp[0].reshape(-1, inp[0].shape[-1])))
    fed = torch.randint(0, text_card, (steps,), generator=g)

    def feed(tokens, i=[0]):
        tokens[:] = fed[i[0] % steps]
        i[0] += 1

    gen = LMGen(model, temp=0.6, temp_text=0.6, condition_tensors=tensors, on_text_hook=feed)
    with gen.streaming(1):
        for _ in range(steps):
            gen.step(torch.full((1, 0, 1), -1, dtype=torch.long))
    hook.remove()
    h = torch.cat(seen).float()
    mean = h.mean(0)
    m = mean / mean.norm()
    _, _, v = torch.pca_lowrank(h - mean, q=2)
    p = v[:, 0] - (v[:, 0] @ m) * m
    p = p / p.norm()
    spread = float((h @ p).std()) or 1.0
    w = model.text_linear.weight
    w.mul_(0.01)
    a = 8.0 / float((h @ m).mean())
    b = 1.5 / spread
    w[0] = a * m + b * p
    w[3] = a * m - b * p


def voice_suffix(config: dict) -> str:
    mid = config["model_id"]
    return f".{mid['sig']}@{mid['epoch']}.safetensors"


def write_voice(path: str | os.PathLike, seed: int, *, dim: int = SPEAKER_DIM, frames: int = 10) -> Path:
    """One voice embedding file as in kyutai/tts-voices: ``{"speaker_wavs": [1, dim, frames]}``."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"speaker_wavs": torch.randn(1, dim, frames, generator=g)}, str(path))
    return path


def write_voices(dest: str | os.PathLike, config: dict, names=VOICES) -> Path:
    """A voices folder in the kyutai/tts-voices layout: ``<name>`` (a short wav) and
    ``<name><sig>@<epoch>.safetensors`` (its embedding for this model)."""
    from ..audio import AudioWriter

    dest = Path(dest)
    for i, name in enumerate(names):
        dim = config["conditioners"]["speaker_wavs"]["tensor"]["dim"]
        write_voice(dest / (name + voice_suffix(config)), seed=1000 + i, dim=dim)
        t = np.arange(24000, dtype=np.float32) / 24000
        with AudioWriter(dest / name, 24000, 1, "wav") as w:
            w.write((0.1 * np.sin(2 * np.pi * (150 + 40 * i) * t))[None].astype(np.float32))
    return dest


def write_tts_repo(dest: str | os.PathLike, *, seed: int = 0, mimi_path: str | os.PathLike | None = None,
                   n_q: int = 8, voices: bool = True) -> Path:
    """Write a tiny random-weight TTS repo at ``dest`` (and its voices in ``dest/voices``)."""
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = tts_config_json(n_q=n_q)
    state = _random_state(config, seed)
    with torch.no_grad():
        source = DictSource(to_published(state))
    write_repo_files(dest, config, source, "pytorch", "float32", f"synthetic-tts seed={seed}", mimi_path,
                     corpus=TTS_CORPUS, chars=TOKENIZER_CHARS)
    if voices:
        write_voices(dest / "voices", config)
    return dest


def write_public_repo(dest: str | os.PathLike, *, seed: int = 0, mimi_path: str | os.PathLike | None = None,
                      n_q: int = 8) -> Path:
    """A tiny repo shaped like ``kyutai/tts-0.75b-en-public`` as far as its published facts go: no
    speaker conditioning (an empty condition provider, no cross-attention), so the voice is an audio
    prefix, and no CFG distillation (CFG runs at inference). Its exact config.json was not available
    here: the keys beyond these are the 1.6B model's."""
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = tts_config_json(n_q=n_q, model_id={"sig": "public", "epoch": 0})
    config["conditioners"] = {}
    config.pop("fuser")
    config["cross_attention"] = False
    with torch.no_grad():
        source = DictSource(to_published(random_model(config, seed).state_dict()))
    write_repo_files(dest, config, source, "pytorch", "float32", f"synthetic-tts-public seed={seed}", mimi_path,
                     corpus=TTS_CORPUS, chars=TOKENIZER_CHARS)
    return dest


#: The LM part of kyutai/tts-1.6b-en_fr's config.json, from public readers of that file (read on
#: 2026-12-03): a 16-layer, 16-head, 2048-wide backbone (FFN 2048 x 4.125, context 500, RoPE,
#: RMSNorm f32, SiLU gating), a 4-layer 1024-wide depformer with per-step weights shared by a
#: schedule (11 distinct), rank-128 codebook embeddings, 32 codebooks, 8000 text tokens, a
#: 512-wide speaker embedding read by cross-attention, the cfg and control LUTs summed in. The
#: published schedule's exact values were not available: the first ten codebooks get their own
#: weights, the rest share the eleventh (the count of distinct weights, which sets the size, is
#: the published one).
FULL_TTS_LM = {
    "card": 2048, "n_q": 32, "dep_q": 32, "delays": [0, 0] + [2] * 31, "dim": 2048, "text_card": 8000,
    "existing_text_padding_id": 3, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 500, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 1024, "depformer_num_heads": 16,
    "depformer_num_layers": 4, "depformer_dim_feedforward": 3072, "depformer_multi_linear": True,
    "depformer_pos_emb": "none", "depformer_weights_per_step": True, "depformer_low_rank_embeddings": 128,
    "depformer_weights_per_step_schedule": list(range(10)) + [10] * 22, "demux_second_stream": True,
    "text_card_out": None, "cross_attention": True,
}
FULL_SPEAKER_DIM = 512


def full_tts_config_json() -> dict:
    """config.json of kyutai/tts-1.6b-en_fr at full size (see ``FULL_TTS_LM``)."""
    config = tts_config_json(n_q=32)
    config.update(FULL_TTS_LM)
    config["conditioners"]["speaker_wavs"]["tensor"]["dim"] = FULL_SPEAKER_DIM
    config["conditioners"]["control"]["lut"]["dim"] = FULL_TTS_LM["dim"]
    return config


def ensure_full_tts(seed: int = 0) -> Path:
    """A full-size random-weight kyutai/tts-1.6b-en_fr layout in moshikit's cache (~3.7 GB in bf16,
    streamed to disk from a random pool, a minute or two), with its voices. Random weights never
    take the next word as a trained model does: runs on it are capped in steps (speed only)."""
    from .core import ensure_synthetic_mimi, synthetic_dir
    from .lm import published_shapes
    from .tensors import PoolSource

    dest = synthetic_dir() / f"seed{seed}" / "tts-full-pytorch-v2"  # -v2: cross-attention under published names
    if not (dest / CONFIG_NAME).exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        config = full_tts_config_json()
        source = PoolSource(published_shapes(config=config), seed)
        write_repo_files(tmp, config, source, "pytorch", "bfloat16", f"synthetic-tts full seed={seed}",
                         ensure_synthetic_mimi(), corpus=TTS_CORPUS, chars=TOKENIZER_CHARS)
        write_voices(tmp / "voices", config)
        tmp.rename(dest)
    return dest


def ensure_synthetic_tts(seed: int = 0, *, mimi_path: str | os.PathLike | None = None) -> Path:
    """The tiny TTS repo in moshikit's cache, written on first use (seconds; Mimi aside)."""
    from .core import ensure_synthetic_mimi, synthetic_dir

    # "-v2": cross-attention weights under their published names (older caches had the state-dict names)
    dest = synthetic_dir() / f"seed{seed}" / "tts-tiny-pytorch-v2"
    if not (dest / CONFIG_NAME).exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        write_tts_repo(tmp, seed=seed, mimi_path=mimi_path or ensure_synthetic_mimi())
        try:
            tmp.rename(dest)
        except OSError:  # another process wrote it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return dest


__all__ = ["CFG_VALUES", "DEFAULT_VOICE", "FULL_TTS_LM", "ensure_full_tts", "full_tts_config_json", "MODEL_ID", "TTS_TOKENIZER_NAME", "VOICES", "ensure_synthetic_tts",
           "write_public_repo",
           "tts_config_json", "voice_suffix", "write_tts_repo", "write_voice", "write_voices"]
