"""Synthetic checkpoints in the published Kyutai layouts.

Real weights cannot be downloaded everywhere (CI, air-gapped boxes), but the
loading code must stay the real one. These helpers write files with exactly
the published key names and config keys, filled with random weights, except
for the parts that must carry information: Mimi's quantizer is *fitted* to the
encoder's latents of real speech so that codes depend on the input.

Nothing measured with these weights is a quality figure: they are valid for
speed and mechanics only.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

#: File names as published in kyutai/moshiko-pytorch-bf16 and friends.
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
SYNTHETIC_REPO = "moshikit/synthetic-mimi"
# moshi's MimiModel names the attention projections differently from the
# published file; the published names are what rustymimi and moshi_mlx accept.
_CANONICAL_RENAMES = (
    (".self_attn.in_projs.0.weight", ".self_attn.in_proj_weight"),
    (".self_attn.out_projs.0.weight", ".self_attn.out_proj.weight"),
)


def sample_path() -> Path:
    """The bundled 15.6 s speech sample (espeak-ng, 24 kHz mono FLAC)."""
    return Path(str(resources.files("moshikit") / "data" / "sample.flac"))


def speech_sample() -> np.ndarray:
    """The bundled speech sample as float32 mono at 24 kHz."""
    import soundfile as sf

    pcm, sr = sf.read(sample_path(), dtype="float32", always_2d=False)
    assert sr == 24000
    return pcm


def _fitting_audio(seed: int) -> np.ndarray:
    """Speech plus simple variations (speed, gain, noise): several thousand frames' worth."""
    rng = np.random.default_rng(seed)
    base = speech_sample()
    clips = [base]
    for speed in (0.8, 0.9, 1.1, 1.25):
        n = int(len(base) / speed)
        clips.append(np.interp(np.arange(n) * speed, np.arange(len(base)), base).astype(np.float32))
    for gain in (0.3, 2.0):
        clips.append((base * gain).astype(np.float32))
    clips.append((base + 0.01 * rng.standard_normal(len(base))).astype(np.float32))
    return np.concatenate(clips)


def _canonical(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for old, new in _CANONICAL_RENAMES:
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value.contiguous()
    return out


def _fit_codebooks(proj: np.ndarray, n_q: int, bins: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Residual codebooks fitted to ``proj`` [N, D]: each entry is a data residual plus noise."""
    residual = proj.copy()
    books = []
    for _ in range(n_q):
        scale = residual.std(axis=0, keepdims=True) + 1e-8
        picks = residual[rng.integers(0, len(residual), bins)]
        book = (picks + 0.15 * scale * rng.standard_normal(picks.shape)).astype(np.float32)
        books.append(book)
        # Assign every frame to its nearest entry and keep the rest for the next level.
        d = (residual**2).sum(1, keepdims=True) - 2 * residual @ book.T + (book**2).sum(1)[None]
        residual = residual - book[d.argmin(1)]
    return books


def build_mimi_state(seed: int = 0) -> dict:
    """A Mimi state dict in the published layout, with a quantizer fitted to speech."""
    import torch
    from moshi.models import loaders

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=32)
    audio = _fitting_audio(seed)
    with torch.inference_mode():
        x = torch.from_numpy(audio)[None, None]
        latent = mimi._encode_to_unquantized_latent(x)[0].T.double().numpy()  # [N, 512]
    # Project onto the directions along which speech moves the latent most, scaled
    # so the first has unit variance: codes then follow the audio, not float noise.
    mean = latent.mean(0)
    _, s, vt = np.linalg.svd(latent - mean, full_matrices=False)
    sigma1 = s[0] / np.sqrt(len(latent))
    state = mimi.state_dict()
    dim, bins = 256, 2048
    for name, n_q, offset in (("rvq_first", 1, 0), ("rvq_rest", 31, 1)):
        # Give the two quantizers different directions, as trained ones have.
        directions = vt[offset * 8 : offset * 8 + dim]
        weight = directions / sigma1
        proj = latent @ weight.T
        state[f"quantizer.{name}.input_proj.weight"] = torch.from_numpy(weight[:, :, None].astype(np.float32))
        for i, book in enumerate(_fit_codebooks(proj, n_q, bins, rng)):
            prefix = f"quantizer.{name}.vq.layers.{i}._codebook."
            state[prefix + "embedding_sum"] = torch.from_numpy(book)
            state[prefix + "cluster_usage"] = torch.ones(bins)
            state[prefix + "_initialized"] = torch.ones(1)
    return _canonical(state)


def write_mimi(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a fitted synthetic Mimi checkpoint (fp32 safetensors, ~385 MB)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(build_mimi_state(seed), str(tmp), metadata={"format": "pt", "moshikit": "synthetic"})
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class SyntheticRepo:
    path: Path
    mimi: Path


def synthetic_dir() -> Path:
    """Where ``--model synthetic`` keeps its generated checkpoint."""
    from ..download.paths import moshikit_cache

    return moshikit_cache() / "synthetic"


def ensure_synthetic_mimi(seed: int = 0) -> Path:
    """The synthetic Mimi file, generated on first use (about 20 s on 2 cores)."""
    path = synthetic_dir() / f"seed{seed}" / MIMI_NAME
    if not path.exists():
        import sys

        print(f"moshikit: building the synthetic Mimi checkpoint in {path.parent} (first use, ~30 s)",
              file=sys.stderr)
        write_mimi(path, seed=seed)
    return path


def place_in_hf_cache(src_dir: str | os.PathLike, repo_id: str, cache_dir: str | os.PathLike,
                      revision: str = "main") -> Path:
    """Copy a directory into a Hugging Face hub cache as ``repo_id`` at ``revision``.

    Lays out ``models--{org}--{name}/{blobs,snapshots/<commit>,refs/<revision>}``
    the way ``huggingface_hub`` does, so ``hf_hub_download(..., local_files_only=True)``
    resolves it. Returns the snapshot directory.
    """
    import hashlib

    src_dir = Path(src_dir)
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode() + revision.encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in src_dir.rglob("*") if p.is_file()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        blob = repo_dir / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(src_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return snapshot


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
