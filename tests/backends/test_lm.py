"""The Moshi LM backends (moshi's PyTorch LMGen and moshi_mlx's LmGen) on a tiny
synthetic checkpoint laid out like the published repos."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from moshikit.backends.base import LMBackend, SamplingConfig
from moshikit.errors import ModelError
from moshikit.synthetic import lm as synthetic_lm

GREEDY = SamplingConfig(temp=0.0, temp_text=0.0)
STEPS = 30


def _mlx_available() -> bool:
    try:
        from moshikit.backends import mlx_lm

        mlx_lm.probe()
        return True
    except (ImportError, OSError):
        return False


needs_mlx = pytest.mark.skipif(not _mlx_available(), reason="mlx / moshi_mlx not importable here")


def _header(path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def _codes(steps: int, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2048, (steps, batch, 8))


def _run(lm, codes: np.ndarray) -> list:
    lm.reset(codes.shape[1])
    return [lm.step(c) for c in codes]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return synthetic_lm.write_moshi_repo(tmp_path_factory.mktemp("lm") / "moshiko-pytorch", seed=0)


@pytest.fixture(scope="module")
def repo_mlx(tmp_path_factory):
    return synthetic_lm.write_moshi_repo(tmp_path_factory.mktemp("lm") / "moshiko-mlx", seed=0, layout="mlx")


@pytest.fixture(scope="module")
def config(repo) -> dict:
    return json.loads((repo / "config.json").read_text())


@pytest.fixture(scope="module")
def torch_greedy(repo):
    from moshikit.backends import torch_lm

    return torch_lm.load(repo, device="cpu", sampling=GREEDY)


@pytest.fixture(scope="module")
def mlx_greedy(repo):
    from moshikit.backends import mlx_lm

    return mlx_lm.load(repo, device="cpu", sampling=GREEDY)


# --------------------------------------------------------------------------- the checkpoint


def test_repo_files_and_config(repo, config):
    assert sorted(p.name for p in repo.iterdir()) == ["config.json", "model.safetensors", "tokenizer_spm_32k_3.model"]
    assert config["moshi_name"] == "model.safetensors"
    assert config["mimi_name"] == "tokenizer-e351c8d8-checkpoint125.safetensors"
    assert config["tokenizer_name"] == "tokenizer_spm_32k_3.model"
    assert config["model_type"] == "moshi"
    assert config["lm_gen_config"] == synthetic_lm.LM_GEN_CONFIG
    assert {k: config[k] for k in synthetic_lm.TINY_OVERRIDES} == synthetic_lm.TINY_OVERRIDES


def test_checkpoint_info_accepts_repo(repo, config):
    from moshi.models import loaders

    info = loaders.CheckpointInfo.from_hf_repo(
        str(repo), moshi_weights=repo / config["moshi_name"], mimi_weights=repo / config["mimi_name"],
        tokenizer=repo / config["tokenizer_name"], config_path=repo / "config.json")
    assert info.model_type == "moshi"
    assert info.lm_gen_config == synthetic_lm.LM_GEN_CONFIG
    assert info.lm_config == synthetic_lm.lm_kwargs("tiny")
    assert len(info.get_text_tokenizer()) == config["text_card"]


def test_weights_use_published_names(repo):
    header = _header(repo / "model.safetensors")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert {k: tuple(v["shape"]) for k, v in tensors.items()} == synthetic_lm.published_shapes("tiny")
    assert {v["dtype"] for v in tensors.values()} == {"BF16"}
    # The published attention names (moshi's loader splits them), never the state-dict ones.
    assert "transformer.layers.0.self_attn.in_proj_weight" in tensors
    assert "transformer.layers.0.self_attn.out_proj.weight" in tensors
    assert tensors["depformer.layers.0.self_attn.in_proj_weight"]["shape"] == [8 * 3 * 128, 128]
    assert not [k for k in tensors if ".in_projs." in k or ".out_projs." in k]


def test_weights_load_strictly_into_lmmodel(repo):
    import torch
    from moshi.models import loaders

    # get_moshi_lm loads with strict=True: a missing or extra name fails here.
    lm = loaders.get_moshi_lm(repo / "model.safetensors", lm_kwargs=synthetic_lm.lm_kwargs("tiny"),
                              dtype=torch.float32)
    assert sum(p.numel() for p in lm.parameters()) == 17_936_384


def test_tokenizer_has_text_card_pieces(repo, config):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(str(repo / config["tokenizer_name"]))
    assert sp.get_piece_size() == config["text_card"] == 64
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]


def test_tokenizer_for_full_vocab(tmp_path):
    import sentencepiece as spm

    path = synthetic_lm.write_tokenizer(tmp_path / "t.model", 32000)
    assert spm.SentencePieceProcessor(str(path)).get_piece_size() == 32000


def test_mimi_is_linked_under_config_name(tmp_path):
    fake = tmp_path / "mimi.safetensors"
    fake.write_bytes(b"not really mimi")
    repo = synthetic_lm.write_moshi_repo(tmp_path / "repo", mimi_path=fake)
    assert (repo / synthetic_lm.MIMI_NAME).read_bytes() == b"not really mimi"


def test_ensure_synthetic_moshi_writes_once():
    first = synthetic_lm.ensure_synthetic_moshi()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert synthetic_lm.ensure_synthetic_moshi() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert (first / "config.json").is_file()


@needs_mlx
def test_full_size_layout_without_building_it():
    """The 7B's published names and shapes (meta device) and its MLX layout match moshi_mlx's Lm."""
    from mlx.utils import tree_flatten
    from moshi_mlx import models

    shapes = synthetic_lm.published_shapes("full")
    assert sum(int(np.prod(s)) for s in shapes.values()) == 7_687_729_152
    assert shapes["depformer.layers.0.self_attn.in_proj_weight"] == (8 * 3 * 1024, 1024)
    full = synthetic_lm.config_json("full")
    layout = {e.name: e.shape for e in synthetic_lm.mlx_layout(shapes, full)}
    lm = models.Lm(models.LmConfig.from_config_dict(full))  # lazy: nothing is allocated
    assert layout == {k: tuple(v.shape) for k, v in tree_flatten(lm.parameters())}


@needs_mlx
def test_mlx_layout_equals_moshi_mlx_conversion(repo, repo_mlx):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from moshi_mlx import models

    cfg = models.LmConfig.from_config_dict(json.loads((repo / "config.json").read_text()))
    converted, published = models.Lm(cfg), models.Lm(cfg)
    converted.load_pytorch_weights(str(repo / "model.safetensors"), cfg, strict=True)
    published.load_weights(str(repo_mlx / "model.safetensors"), strict=True)
    a, b = dict(tree_flatten(converted.parameters())), dict(tree_flatten(published.parameters()))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.array_equal(a[k], b[k]).item(), k


def test_pool_init_streams_both_layouts(tmp_path):
    """The writer used for the full model, on the tiny architecture."""
    import torch
    from safetensors.torch import load_file

    pt = synthetic_lm.write_moshi_repo(tmp_path / "pt", init="pool", seed=1)
    ml = synthetic_lm.write_moshi_repo(tmp_path / "mlx", init="pool", seed=1, layout="mlx")
    published = load_file(pt / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in published.items()} == synthetic_lm.published_shapes("tiny")
    assert torch.isfinite(published["text_linear.weight"].float()).all()
    expected = synthetic_lm.to_mlx(published, json.loads((pt / "config.json").read_text()))
    got = load_file(ml / "model.safetensors")
    assert got.keys() == expected.keys()
    for k in got:
        assert torch.equal(got[k], expected[k]), k


# --------------------------------------------------------------------------- resolution


def test_resolve_repo_forms(repo, tmp_path):
    from moshikit.backends.torch_lm import resolve_repo

    by_dir = resolve_repo(repo)
    assert by_dir.moshi_weights == repo / "model.safetensors"
    assert by_dir.tokenizer == repo / "tokenizer_spm_32k_3.model"
    assert by_dir.config["text_card"] == 64
    assert resolve_repo(repo / "config.json").moshi_weights == by_dir.moshi_weights
    assert resolve_repo(repo / "model.safetensors").config_path == repo / "config.json"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    assert resolve_repo(legacy).config is None  # a repo without config.json: the 7B defaults
    with pytest.raises(ModelError):
        resolve_repo(tmp_path / "nowhere" / "x" / "y")


def test_load_from_hf_cache_by_repo_id(repo):
    from moshikit.backends import torch_lm
    from moshikit.synthetic.core import place_in_hf_cache

    place_in_hf_cache(repo, "moshikit-tests/moshi-tiny", os.environ["HF_HUB_CACHE"])
    lm = torch_lm.load("moshikit-tests/moshi-tiny", device="cpu", sampling=GREEDY)
    assert lm.info.text_card == 64
    assert lm.repo.source == "moshikit-tests/moshi-tiny"


def test_sampling_defaults_come_from_lm_gen_config(torch_greedy, repo):
    from moshikit.backends.torch_lm import resolve_repo, sampling_from

    assert sampling_from(resolve_repo(repo), None) == SamplingConfig(**synthetic_lm.LM_GEN_CONFIG)
    assert torch_greedy.sampling == GREEDY


# --------------------------------------------------------------------------- the backends


def _check_outputs(lm, outs: list, batch: int) -> np.ndarray:
    info = lm.info
    delay = max(info.delays)
    assert all(o is None for o in outs[:delay])
    frames = outs[delay:]
    assert all(o is not None for o in frames)
    arr = np.stack(frames)
    assert arr.shape == (len(outs) - delay, batch, 1 + info.dep_q)
    assert arr.dtype == np.int64
    assert (arr[..., 0] >= 0).all() and (arr[..., 0] < info.text_card).all()
    assert (arr[..., 1:] >= 0).all() and (arr[..., 1:] < info.card).all()
    return arr


def _check_info(lm, backend: str) -> None:
    assert isinstance(lm, LMBackend)
    info = lm.info
    assert info.backend == backend and info.device == "cpu"
    assert (info.n_q, info.dep_q, info.text_card, info.card, info.context) == (16, 8, 64, 2048, 500)
    assert info.delays == (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
    assert lm.input_codebooks == 8


def test_torch_steps(torch_greedy):
    _check_info(torch_greedy, "torch")
    codes = _codes(STEPS, 2)
    a = _check_outputs(torch_greedy, _run(torch_greedy, codes), 2)
    # Greedy: the same inputs give the same outputs, after a reset, per batch row.
    np.testing.assert_array_equal(a, _check_outputs(torch_greedy, _run(torch_greedy, codes), 2))
    np.testing.assert_array_equal(a[:, 1:], np.stack(_run(torch_greedy, codes[:, 1:])[1:]))
    assert (a[:, 0] != a[:, 1]).any()  # the outputs follow the inputs
    torch_greedy.reset(2)
    with pytest.raises(ValueError, match=r"must be \[2, >=8\]"):
        torch_greedy.step(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="must lie in"):
        torch_greedy.step(np.full((2, 8), 2048))


def test_torch_seeded_sampling_repeats(repo):
    from moshikit.backends import torch_lm

    lm = torch_lm.load(repo, device="cpu", sampling=SamplingConfig(seed=7))
    codes = _codes(15, 1)
    first = np.stack(_run(lm, codes)[1:])
    import torch

    torch.manual_seed(1234)  # other users of the global generator do not matter
    torch.rand(10)
    np.testing.assert_array_equal(first, np.stack(_run(lm, codes)[1:]))


@needs_mlx
def test_mlx_steps(mlx_greedy, repo_mlx):
    from moshikit.backends import mlx_lm

    _check_info(mlx_greedy, "mlx")
    assert mlx_greedy.layout == "pytorch"
    codes = _codes(STEPS, 2)
    a = _check_outputs(mlx_greedy, _run(mlx_greedy, codes), 2)
    np.testing.assert_array_equal(a, _check_outputs(mlx_greedy, _run(mlx_greedy, codes), 2))
    np.testing.assert_array_equal(a[:, 1:], np.stack(_run(mlx_greedy, codes[:, 1:])[1:]))
    # The MLX-layout repo holds the same weights: same outputs.
    other = mlx_lm.load(repo_mlx, device="cpu", sampling=GREEDY)
    assert other.layout == "mlx"
    np.testing.assert_array_equal(a, np.stack(_run(other, codes)[1:]))


@needs_mlx
def test_mlx_token_buffer_rolls(mlx_greedy, monkeypatch):
    from moshikit.backends import mlx_lm

    codes = _codes(STEPS, 1, seed=3)
    long = np.stack(_run(mlx_greedy, codes)[1:])
    monkeypatch.setattr(mlx_lm, "BUFFER_STEPS", 8)
    np.testing.assert_array_equal(long, np.stack(_run(mlx_greedy, codes)[1:]))


@needs_mlx
def test_mlx_seeded_sampling_repeats(repo):
    import mlx.core as mx

    from moshikit.backends import mlx_lm

    lm = mlx_lm.load(repo, device="cpu", sampling=SamplingConfig(seed=7))
    codes = _codes(15, 1)
    first = np.stack(_run(lm, codes)[1:])
    mx.random.seed(1234)
    mx.random.uniform(shape=(3,))
    np.testing.assert_array_equal(first, np.stack(_run(lm, codes)[1:]))


@needs_mlx
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_mlx_greedy_parity(torch_greedy, mlx_greedy, seed):
    """Same fp32 weights, same inputs, greedy: the same text and audio tokens.

    Measured on this kind of machine: 100% of tokens agree over 200 frames for each of
    10 input seeds. In bf16 they part after a few frames (greedy on random weights
    has near-ties; one flipped token changes everything after it).
    """
    codes = _codes(STEPS, 2, seed)
    a = np.stack(_run(torch_greedy, codes)[1:])
    b = np.stack(_run(mlx_greedy, codes)[1:])
    np.testing.assert_array_equal(a, b)


@needs_mlx
def test_native_lmgen_reads_user_frame_one_call_later(torch_greedy, mlx_greedy):
    """Why mlx_lm writes the user frame one column back: moshi_mlx's own LmGen equals
    moshi's LMGen fed the previous frame. If this changes, mlx_lm's alignment must too."""
    import mlx.core as mx

    codes = _codes(STEPS, 1, seed=4)
    mlx_greedy.reset(1)
    gen, native = mlx_greedy._gen, []
    for c in codes:
        gen.step(mx.array(c.astype(np.int32)))
        native.append(np.array(gen.gen_sequence[:, :9, gen.step_idx - 2]))
    previous = np.concatenate([codes[:1], codes[:-1]])
    np.testing.assert_array_equal(np.stack(native[1:]), np.stack(_run(torch_greedy, previous)[1:]))


def test_sampling_overrides_go_over_the_checkpoints_own_config():
    from types import SimpleNamespace

    from moshikit.backends.base import SamplingConfig, SamplingOverrides
    from moshikit.backends.lm_repo import sampling_from

    repo = SimpleNamespace(lm_gen_config={"temp": 0.6, "temp_text": 0.5, "top_k": 100, "top_k_text": 10, "other": 1})
    assert sampling_from(repo, None) == SamplingConfig(temp=0.6, temp_text=0.5, top_k=100, top_k_text=10)
    assert not SamplingOverrides() and SamplingOverrides(seed=0)
    assert sampling_from(repo, SamplingOverrides(temp=0.0, seed=3)) == SamplingConfig(0.0, 0.5, 100, 10, 3)
    whole = SamplingConfig(temp=1.0)
    assert sampling_from(repo, whole) is whole  # a whole config is taken as it is


@pytest.mark.parametrize("backend", ["torch", pytest.param("mlx", marks=needs_mlx)])
def test_set_sampling_applies_from_the_next_stream(backend, repo):
    """``SamplingControl``, what serve's per-session sampling uses: after ``set_sampling`` a fresh
    stream samples as a model loaded with that setting, and back again."""
    import importlib

    from moshikit.backends.base import SamplingControl

    mod = importlib.import_module(f"moshikit.backends.{backend}_lm")
    hot = SamplingConfig(temp=1.0, temp_text=1.0, seed=7)
    lm = mod.load(repo, device="cpu", sampling=hot)
    assert isinstance(lm, SamplingControl)
    codes = _codes(15, 1)
    sampled = np.stack(_run(lm, codes)[1:])
    greedy = np.stack(_run(mod.load(repo, device="cpu", sampling=GREEDY), codes)[1:])
    assert not np.array_equal(sampled, greedy)
    lm.set_sampling(GREEDY)
    assert lm.sampling == GREEDY
    np.testing.assert_array_equal(np.stack(_run(lm, codes)[1:]), greedy)
    lm.set_sampling(hot)
    np.testing.assert_array_equal(np.stack(_run(lm, codes)[1:]), sampled)
