"""The synthetic Mimi is in the published layout and carries information."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from moshikit.synthetic.core import place_in_hf_cache


def test_published_key_layout(mimi_weights):
    with safe_open(str(mimi_weights), "np") as f:
        keys = set(f.keys())
        emb = f.get_tensor("quantizer.rvq_rest.vq.layers.30._codebook.embedding_sum")
        assert f.get_tensor("quantizer.rvq_first.vq.layers.0._codebook._initialized")[0] == 1
    assert "encoder_transformer.transformer.layers.0.self_attn.in_proj_weight" in keys
    assert "decoder_transformer.transformer.layers.7.self_attn.out_proj.weight" in keys
    assert not any("in_projs" in k or "out_projs" in k for k in keys)
    assert sum(k.endswith("embedding_sum") for k in keys) == 32
    assert emb.shape == (2048, 256) and emb.dtype == np.float32
    assert np.unique(emb, axis=0).shape[0] == 2048  # no duplicate entries


def test_loads_in_moshi_with_strict_keys(mimi_weights):
    from moshi.models import loaders

    mimi = loaders.get_mimi(str(mimi_weights), device="cpu", num_codebooks=32)  # load_state_dict is strict
    assert mimi.total_codebooks == 32


def test_hf_cache_placement_resolves_offline(tmp_path, mimi_weights):
    from huggingface_hub import hf_hub_download

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"mimi_name": "m.safetensors"}))
    (repo / "m.safetensors").write_bytes(b"x" * 10)
    cache = tmp_path / "cache"
    place_in_hf_cache(repo, "org/name", cache)
    got = hf_hub_download("org/name", "config.json", cache_dir=str(cache), local_files_only=True)
    assert json.loads(open(got).read())["mimi_name"] == "m.safetensors"
    assert open(hf_hub_download("org/name", "m.safetensors", cache_dir=str(cache)), "rb").read() == b"x" * 10


@pytest.mark.parametrize("start", [0, 5])
def test_distinct_inputs_distinct_codes(torch_codec, speech, start):
    a = torch_codec.backend.encode(speech[None, 24000 * start : 24000 * (start + 3)])
    b = torch_codec.backend.encode(speech[None, 24000 * (start + 6) : 24000 * (start + 9)])
    assert (a != b).mean() > 0.9
