"""The int8 (-q8) Moshi checkpoints: their scales stay float32 whatever the model's dtype
(moshi 0.2.13's loader casts them and QLinear then refuses to run), and the Mimi and
tokenizer their config.json names in another repo (``hf://kyutai/<voice>-pytorch-bf16/...``)
are found there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hubserver import HubServer, go_offline, patch_hub

from moshikit.backends import lm_repo, torch_lm
from moshikit.synthetic import lm as synthetic_lm, q8 as synthetic_q8

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BF16_REPO = "kyutai/moshiko-pytorch-bf16"


@pytest.fixture(scope="module")
def float_repo(tmp_path_factory):
    return synthetic_lm.write_moshi_repo(tmp_path_factory.mktemp("lm") / "moshiko-pytorch", seed=0)


@pytest.fixture(scope="module")
def q8_repo(float_repo, tmp_path_factory):
    return synthetic_q8.write_q8_repo(float_repo, tmp_path_factory.mktemp("lm") / "moshiko-pytorch-q8")


def _bitsandbytes_runs_here() -> bool:
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from bitsandbytes import functional as F

        cb, scb, _ = F.int8_vectorwise_quant(torch.ones(4, 4, dtype=torch.float16))
        st = bitsandbytes.MatmulLtState()
        st.CB, st.SCB, st.has_fp16_weights = cb, scb, False
        bitsandbytes.matmul(torch.ones(2, 4, dtype=torch.float16), cb, state=st)
        return True
    except Exception:  # noqa: BLE001 - not installed, or no kernel for this machine
        return False


def test_q8_loads_with_float32_scales(q8_repo):
    import torch

    lm = torch_lm.load(q8_repo, device="cpu", dtype="bf16")
    params = dict(lm.model.named_parameters())
    scales = {n: p.dtype for n, p in params.items() if n.endswith("_scb")}
    assert scales and set(scales.values()) == {torch.float32}
    assert params["transformer.layers.0.gating.linear_in.weight"].dtype == torch.int8
    assert params["text_emb.weight"].dtype == torch.bfloat16
    assert not any(p.is_meta for p in params.values())
    # The scales are the file's, bit for bit (a bf16 round trip would change them).
    from safetensors.torch import load_file

    saved = load_file(str(q8_repo / synthetic_q8.Q8_NAME))
    name = next(iter(scales))
    assert torch.equal(params[name].detach(), saved[name])


@pytest.mark.skipif(not _bitsandbytes_runs_here(), reason="bitsandbytes has no int8 matmul on this machine")
def test_q8_steps_in_bf16(q8_repo):
    lm = torch_lm.load(q8_repo, device="cpu", dtype="bf16")
    lm.reset(1)
    outs = [lm.step(np.full((1, 8), 5, np.int64)) for _ in range(4)]
    assert outs[0] is None and outs[-1] is not None  # moshi's delay, then text + 8 audio codes
    assert outs[-1].shape == (1, 9) and 0 <= outs[-1][0, 1:].min() and outs[-1][0, 1:].max() < 2048


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    server = HubServer().start()
    patch_hub(monkeypatch, server, tmp_path / "hub")
    yield server
    from huggingface_hub.utils import reset_sessions

    server.stop()
    reset_sessions()


def test_hf_references_resolve_to_the_other_repo(hub, float_repo, tmp_path, monkeypatch):
    """As published: the q8 repo holds config.json and model.q8.safetensors; its config names
    the Mimi and tokenizer as files of the bf16 repo."""
    q8 = synthetic_q8.write_q8_repo(float_repo, tmp_path / "q8", other_repo=BF16_REPO)
    config = json.loads((q8 / "config.json").read_text())
    assert config["mimi_name"].startswith(f"hf://{BF16_REPO}/")
    assert not list(q8.glob("*.model"))
    tok = next(float_repo.glob("*.model"))
    # The bf16 repo's Mimi: only its bytes are compared here (a stand-in keeps 385 MB off the fake hub)
    mimi_name, mimi_bytes = Path(config["mimi_name"]).name, b"a stand-in for the bf16 repo's Mimi file"
    hub.add(BF16_REPO, {tok.name: tok.read_bytes(), mimi_name: mimi_bytes})
    hub.add("kyutai/moshiko-pytorch-q8", {"config.json": (q8 / "config.json").read_bytes(),
                                          synthetic_q8.Q8_NAME: (q8 / synthetic_q8.Q8_NAME).read_bytes()})

    local = lm_repo.resolve_repo(q8)  # a local copy of the q8 repo
    assert local.tokenizer.read_bytes() == tok.read_bytes()
    assert local.moshi_weights == q8 / synthetic_q8.Q8_NAME
    remote = lm_repo.resolve_repo("kyutai/moshiko-pytorch-q8")
    assert remote.tokenizer.read_bytes() == tok.read_bytes()
    assert remote.moshi_weights.read_bytes() == (q8 / synthetic_q8.Q8_NAME).read_bytes()
    assert Path(remote.mimi_weights).name == mimi_name and remote.mimi_weights.read_bytes() == mimi_bytes

    go_offline(monkeypatch)  # what was fetched is served from the cache
    assert lm_repo.resolve_repo("kyutai/moshiko-pytorch-q8").tokenizer.read_bytes() == tok.read_bytes()
    lm = torch_lm.load("kyutai/moshiko-pytorch-q8", device="cpu", dtype="bf16")
    assert lm.info.n_q == 16


def test_a_missing_referenced_file_is_one_line(hub, float_repo, tmp_path):
    q8 = synthetic_q8.write_q8_repo(float_repo, tmp_path / "q8", other_repo="kyutai/nowhere-pytorch-bf16")
    from moshikit.errors import ModelError

    with pytest.raises(ModelError, match="from kyutai/nowhere-pytorch-bf16") as e:
        lm_repo.resolve_repo(q8)
    assert "\n" not in str(e.value)
    assert lm_repo.split_ref("hf://a/b/c/d.model") == ("a/b", "c/d.model")
    with pytest.raises(ModelError):
        lm_repo.split_ref("hf://a/b")


def test_download_and_resolve_follow_hf_references(hub, monkeypatch):
    """`moshikit download moshiko` on a 16 GB GPU picks the q8 repo: the Mimi and tokenizer its
    config.json names in the bf16 repo are fetched from there, and commands find them."""
    from moshikit import catalog
    from moshikit import download as dl
    from moshikit.hub import resolve_model

    cuda16 = catalog.platform_from_spec("cuda:16")
    mimi_name, tok_name = catalog.MIMI_FILE, catalog.MOSHI_TOKENIZER
    mimi_bytes, tok_bytes, weights = b"mimi" * 1000, b"spm" * 300, b"q8" * 5000
    hub.add(BF16_REPO, {mimi_name: mimi_bytes, tok_name: tok_bytes, "model.safetensors": b"bf16" * 100})
    config = {"moshi_name": "model.q8.safetensors", "quantize": True,
              "mimi_name": f"hf://{BF16_REPO}/{mimi_name}", "tokenizer_name": f"hf://{BF16_REPO}/{tok_name}"}
    hub.add("kyutai/moshiko-pytorch-q8", {"config.json": json.dumps(config).encode(),
                                          "model.q8.safetensors": weights, "README.md": b"# card\n"})
    p = dl.plan("moshiko", platform=cuda16)
    assert p.repo == "kyutai/moshiko-pytorch-q8"
    by_name = {f.name: f for f in p.files}
    assert by_name[config["tokenizer_name"]].size == len(tok_bytes)
    assert by_name[config["mimi_name"]].other_repo == BF16_REPO
    d = dl.download(p)
    got = {r.name: r.path for r in d.files}
    assert got[config["tokenizer_name"]].read_bytes() == tok_bytes
    assert got[config["mimi_name"]].read_bytes() == mimi_bytes
    assert got["model.q8.safetensors"].read_bytes() == weights
    assert d.path == got["model.q8.safetensors"].parent  # the q8 repo's snapshot
    assert not any(q["path"].endswith("model.safetensors") and "bf16" in q["path"] for q in hub.requests
                   if q["method"] == "GET")  # only the two referenced files of the bf16 repo

    go_offline(monkeypatch)
    r = resolve_model("moshiko", platform=cuda16, kind="moshi")
    assert r.source == "cache"
    assert r.tokenizer.read_bytes() == tok_bytes and r.mimi_weights.read_bytes() == mimi_bytes
    assert r.moshi_weights.read_bytes() == weights
    again = dl.plan("moshiko", platform=cuda16)  # offline: from the cache
    assert again.complete
