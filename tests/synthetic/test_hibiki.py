"""The synthetic Hibiki repo has the published layout and loads through moshi's own loaders as Hibiki."""

import json

import pytest
import sentencepiece
from safetensors import safe_open

from moshikit import hub
from moshikit.synthetic.hibiki import (DESCRIPTIONS, EOS_ID, HIBIKI_MIMI_NAME, HIBIKI_TOKENIZER_NAME,
                                               write_hibiki_repo)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mimi_weights):
    return write_hibiki_repo(tmp_path_factory.mktemp("hibiki") / "repo", mimi_path=mimi_weights)


def test_published_layout(repo):
    config = json.loads((repo / "config.json").read_text())
    assert config["model_type"] == "hibiki"
    assert (config["tokenizer_name"], config["mimi_name"], config["moshi_name"]) == (
        HIBIKI_TOKENIZER_NAME, HIBIKI_MIMI_NAME, "model.safetensors")
    assert config["conditioners"]["description"]["type"] == "lut"
    assert config["conditioners"]["description"]["lut"]["possible_values"] == DESCRIPTIONS
    assert config["fuser"]["sum"] == ["description"]
    assert config["lm_gen_config"]["temp_text"] == 0.4
    assert (config["n_q"], config["dep_q"]) == (16, 8)
    assert config["delays"] == [0, 0, 2, 2, 2, 2, 2, 2, 2, 0, 2, 2, 2, 2, 2, 2, 2]
    for name in (HIBIKI_TOKENIZER_NAME, HIBIKI_MIMI_NAME, "model.safetensors"):
        assert (repo / name).is_file(), name
    with safe_open(str(repo / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "condition_provider.conditioners.description.embed.weight" in keys
    assert "transformer.layers.0.self_attn.in_proj_weight" in keys  # the published attention names
    sp = sentencepiece.SentencePieceProcessor(str(repo / HIBIKI_TOKENIZER_NAME))
    assert sp.get_piece_size() == config["text_card"] and sp.eos_id() == EOS_ID


def test_moshi_loads_it_as_hibiki(repo):
    import torch
    from moshi.models import loaders

    info = loaders.CheckpointInfo.from_hf_repo("x", repo / "model.safetensors", repo / HIBIKI_MIMI_NAME,
                                               repo / HIBIKI_TOKENIZER_NAME, repo / "config.json")
    assert info.model_type == "hibiki"
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    assert set(lm.condition_provider.conditioners) == {"description"}
    # moshi's Hibiki loader reads EOS on the input side as padding.
    assert torch.equal(lm.text_emb.weight[EOS_ID], lm.text_emb.weight[3])


def test_a_resolver_source(mimi_weights):
    path = hub.resolve_model("synthetic", kind="hibiki").path
    assert json.loads((path / "config.json").read_text())["model_type"] == "hibiki"
    # Named outright, whatever the command's kind (serve asks for a Moshi model).
    assert hub.resolve_model("synthetic-hibiki", kind="moshi").path == path
