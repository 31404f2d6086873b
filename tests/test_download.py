"""Downloads through the real huggingface_hub client against a Hub look-alike on loopback."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from hubserver import HubServer, go_offline, patch_hub

from moshikit import catalog
from moshikit import download as dl
from moshikit import hubcache
from moshikit.errors import ModelError, UsageError
from moshikit.hub import resolve_mimi, resolve_model

CUDA_16 = catalog.platform_from_spec("cuda:16")
CPU = catalog.platform_from_spec("cpu:32")
MIMI = catalog.MIMI_FILE


def tiny_mimi() -> bytes:
    """A few-kB safetensors file with the tensors check_mimi looks for."""
    import numpy as np
    from safetensors.numpy import save

    keys = ("encoder.model.0.conv.conv.weight", "decoder.model.0.conv.conv.weight",
            "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum",
            "quantizer.rvq_rest.vq.layers.0._codebook.embedding_sum")
    return save({k: np.full((4, 4), i, np.float32) for i, k in enumerate(keys)})


def moshi_repo(weights_name: str = "model.q8.safetensors", size: int = 600_000) -> dict[str, bytes]:
    return {
        weights_name: os.urandom(size),
        MIMI: tiny_mimi(),
        "tokenizer_spm_32k_3.model": b"spm" * 300,
        "config.json": b'{"moshi_name": "%s", "quantize": true}' % weights_name.encode(),
        "README.md": b"# a model card, not needed to run\n",
    }


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    server = HubServer().start()
    patch_hub(monkeypatch, server, tmp_path / "hub")
    yield server
    from huggingface_hub.utils import reset_sessions

    server.stop()
    reset_sessions()  # the next sessions are made after monkeypatch restores offline mode


def blob_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("blobs/*") if p.is_file())


def test_full_download_with_progress_and_checks(hub, tmp_path):
    files = moshi_repo()
    commit = hub.add("kyutai/moshika-pytorch-q8", files)
    p = dl.plan("moshika", platform=CUDA_16)
    assert (p.repo, p.commit, p.exact, p.complete) == ("kyutai/moshika-pytorch-q8", commit, True, False)
    assert [f.name for f in p.files] == ["model.q8.safetensors", MIMI, "tokenizer_spm_32k_3.model", "config.json"]
    assert p.files[0].sha256 == hashlib.sha256(files["model.q8.safetensors"]).hexdigest()
    assert p.total_size == p.missing_size == sum(len(files[f.name]) for f in p.files)
    events = []
    got = dl.download(p, on_progress=events.append)
    snap = tmp_path / "hub" / "models--kyutai--moshika-pytorch-q8" / "snapshots" / commit
    assert got.path == snap
    for f in got.files:
        assert f.path == snap / f.name and f.path.read_bytes() == files[f.name] and f.downloaded
    assert [f.check for f in got.files] == ["sha256", "sha256", "sha256", "git-sha1"]
    assert not (snap / "README.md").exists()  # only what a run needs
    assert events[0].phase == "start" and events[-1].phase == "done" and events[-1].done == p.total_size
    assert {e.file for e in events if e.phase == "done"} == {f.name for f in p.files}
    # The standard cache layout: huggingface_hub (and so moshi, moshi_mlx) find the files offline.
    from huggingface_hub import hf_hub_download

    assert hf_hub_download("kyutai/moshika-pytorch-q8", MIMI, local_files_only=True,
                           cache_dir=tmp_path / "hub") == str(snap / MIMI)
    # A second run finds everything cached and downloads nothing.
    before = len(hub.gets("/lfs/"))
    again = dl.download(dl.plan("moshika", platform=CUDA_16))
    assert not any(f.downloaded for f in again.files) and len(hub.gets("/lfs/")) == before


def test_cut_download_resumes_and_leaves_no_corrupt_file(hub, tmp_path):
    files = moshi_repo(size=1_500_000)
    hub.add("kyutai/moshika-pytorch-q8", files)
    sha = hashlib.sha256(files["model.q8.safetensors"]).hexdigest()
    hub.cut[sha] = 700_000
    p = dl.plan("moshika", platform=CUDA_16)
    with pytest.raises(ModelError, match="connection lost while downloading .*model.q8.safetensors") as e:
        dl.download(p)
    assert "resume" in e.value.hint
    blobs = tmp_path / "hub" / "models--kyutai--moshika-pytorch-q8" / "blobs"
    partial = blobs / f"{sha}.incomplete"
    assert partial.is_file() and 0 < partial.stat().st_size <= 700_000
    assert not (blobs / sha).exists()  # nothing half-written under the final name
    assert not list((blobs.parent / "snapshots").rglob("model.q8.safetensors"))
    p = dl.plan("moshika", platform=CUDA_16)
    assert p.files[0].partial == partial.stat().st_size
    assert p.missing_size == p.total_size - p.files[0].partial
    events = []
    got = dl.download(p, on_progress=events.append)
    kept = got.files[0].resumed_from
    assert kept == p.files[0].partial and got.files[0].check == "sha256"
    assert got.files[0].path.read_bytes() == files["model.q8.safetensors"]
    assert hub.gets(f"/lfs/{sha}")[-1]["range"] == f"bytes={kept}-"
    assert events[0].resumed_from == kept and not partial.exists()


def test_corrupt_transfer_is_caught_and_removed(hub, tmp_path):
    files = moshi_repo()
    hub.add("kyutai/moshika-pytorch-q8", files)
    sha = hashlib.sha256(files["model.q8.safetensors"]).hexdigest()
    bad = bytearray(files["model.q8.safetensors"])
    bad[1000] ^= 0xFF
    hub.blobs[sha] = bytes(bad)  # the CDN serves different bytes under the same hash
    with pytest.raises(ModelError, match="downloaded file is corrupt \\(sha256"):
        dl.download(dl.plan("moshika", platform=CUDA_16))
    assert not any(p.name == sha for p in blob_files(tmp_path / "hub"))


def test_offline_is_served_from_cache(hub, monkeypatch):
    hub.add("kyutai/moshika-pytorch-q8", moshi_repo())
    online = dl.download(dl.plan("moshika", platform=CUDA_16))
    go_offline(monkeypatch)
    n = len(hub.requests)
    p = dl.plan("moshika", platform=CUDA_16)
    assert p.complete and not p.exact
    got = dl.download(p)
    assert got.path == online.path and not any(f.downloaded for f in got.files)
    r = resolve_model("moshika", platform=CUDA_16)
    assert r.source == "cache" and r.path == online.path
    assert r.moshi_weights.name == "model.q8.safetensors" and r.mimi_weights.name == MIMI
    assert r.tokenizer.name == "tokenizer_spm_32k_3.model" and r.config["quantize"] is True
    assert resolve_mimi(model="moshika").path == online.path / MIMI
    assert len(hub.requests) == n  # nothing asked of the network


def test_offline_and_missing_names_the_fix(hub, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(ModelError) as e:
        resolve_model("stt", platform=CPU)
    msg = str(e.value)
    assert "\n" not in msg and "stt (kyutai/stt-1b-en_fr)" in msg and "`moshikit download stt`" in msg
    with pytest.raises(ModelError, match="`moshikit download moshika --variant q8 --revision v2`"):
        resolve_model("moshika", variant="q8", revision="v2", platform=CUDA_16)
    with pytest.raises(ModelError, match="`moshikit download mimi`") as e:
        resolve_mimi()
    assert "--mimi-weight" in e.value.hint
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        dl.download(dl.plan("moshika", platform=CUDA_16))
    assert hub.requests == []


def test_missing_file_wrong_revision_unknown_repo(hub):
    stt = {"config.json": b"{}", "model.safetensors": b"w" * 1000, catalog.STT_MIMI_FILE: b"m" * 100}
    hub.add("kyutai/stt-1b-en_fr", stt)  # no tokenizer_en_fr_audio_8000.model
    with pytest.raises(ModelError, match="kyutai/stt-1b-en_fr@main has no file tokenizer_en_fr_audio_8000.model"):
        dl.plan("stt", platform=CPU)
    with pytest.raises(ModelError, match="has no file nope.bin"):
        dl.plan("kyutai/stt-1b-en_fr", files=["nope.bin"])
    with pytest.raises(ModelError, match="kyutai/stt-1b-en_fr has no revision 'v9'"):
        dl.plan("stt", revision="v9", platform=CPU)
    with pytest.raises(ModelError, match="someone/nothing: no such repository"):
        dl.plan("someone/nothing")
    with pytest.raises(ModelError, match="has no revision 'v9'"):
        resolve_model("kyutai/stt-1b-en_fr", revision="v9", files=["config.json"])


def test_revisions_and_repos_outside_the_catalog(hub, tmp_path):
    config = b'{"moshi_name": "lm.safetensors", "mimi_name": "codec.safetensors"}'
    v1 = hub.add("someone/tiny-moshi", {"config.json": config,
                                        "lm.safetensors": b"a" * 5000, "codec.safetensors": tiny_mimi(),
                                        "tokenizer_spm_32k_3.model": b"t" * 10}, revision="v1")
    main = hub.add("someone/tiny-moshi", {"config.json": b"{}", "model.safetensors": b"b" * 5000,
                                          "tokenizer_spm_32k_3.model": b"t" * 10, MIMI: tiny_mimi()})
    old = dl.download(dl.plan("someone/tiny-moshi", revision="v1"))
    assert old.plan.commit == v1 and old.path.name == v1 and old.plan.entry is None
    r = resolve_model("someone/tiny-moshi", revision="v1")  # from the cache: config.json names the files
    assert r.source == "cache" and r.moshi_weights.name == "lm.safetensors"
    assert r.mimi_weights.name == "codec.safetensors"
    r = resolve_model("someone/tiny-moshi", kind="moshi")  # main is not cached: fetched
    assert r.source == "hub" and r.path.name == main and r.moshi_weights.read_bytes() == b"b" * 5000
    assert not (r.path / "README.md").exists()
    w = resolve_mimi(model="someone/tiny-moshi", revision="v1")
    assert w.path.name == "codec.safetensors" and w.repo == "someone/tiny-moshi"


def test_hf_token_is_sent(hub, monkeypatch):
    hub.add("kyutai/moshika-pytorch-q8", moshi_repo())
    hub.private["kyutai/moshika-pytorch-q8"] = "hf_secret"
    with pytest.raises(ModelError, match="no such repository on the hub \\(or it is private: set HF_TOKEN\\)"):
        dl.plan("moshika", platform=CUDA_16)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    dl.download(dl.plan("moshika", platform=CUDA_16))
    assert hub.requests[-1]["authorization"] == "Bearer hf_secret"


def test_no_network_disk_full_read_only_cache(hub, monkeypatch, tmp_path):
    hub.add("kyutai/moshika-pytorch-q8", moshi_repo())
    p = dl.plan("moshika", platform=CUDA_16)
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(ModelError, match="not enough disk space .* 1.0 kB free"):
        dl.download(p)
    monkeypatch.undo()
    patch_hub(monkeypatch, hub, tmp_path / "file" / "hub")
    (tmp_path / "file").write_text("a file where the cache should be")
    with pytest.raises(ModelError, match="cannot write to the Hugging Face cache") as e:
        dl.download(dl.plan("moshika", platform=CUDA_16))
    assert "HF_HUB_CACHE" in e.value.hint
    patch_hub(monkeypatch, hub, tmp_path / "hub")
    hub.stop()
    with pytest.raises(ModelError, match="cannot reach the hub at http://127.0.0.1"):
        dl.plan("moshika", platform=CUDA_16)
    with pytest.raises(ModelError, match="not in the Hugging Face cache and the hub cannot be reached") as e:
        resolve_mimi(model="kyutai/moshika-pytorch-q8")
    assert "moshikit download kyutai/moshika-pytorch-q8 --file" in str(e.value)
    with pytest.raises(ModelError, match="moshika \\(kyutai/moshika-pytorch-q8\\) is not in the Hugging Face cache "
                                         "and the hub cannot be reached: run `moshikit download moshika`"):
        resolve_model("moshika", platform=CUDA_16)


def test_listing_removal_and_shared_mimi(hub, tmp_path):
    bf16 = {"model.safetensors": os.urandom(300_000), MIMI: tiny_mimi(), "tokenizer_spm_32k_3.model": b"s" * 100}
    hub.add("kyutai/moshiko-pytorch-bf16", bf16)
    hub.add("kyutai/moshika-pytorch-q8", moshi_repo())
    mimi = dl.download(dl.plan("mimi"))
    assert mimi.result_path.name == MIMI and [f.name for f in mimi.files] == [MIMI]
    # Every model uses this Mimi: a command given `--model stt` finds it when nothing of stt is cached.
    w = resolve_mimi(model="stt")
    assert w.path == mimi.result_path and w.repo == "kyutai/moshiko-pytorch-bf16"
    rows = {r.entry.id: r for r in hubcache.list_models(CUDA_16)}
    assert rows["mimi:fp32"].state == "cached" and rows["mimi:fp32"].size_on_disk == len(bf16[MIMI])
    assert rows["moshiko:pytorch-bf16"].state == "partial"
    assert rows["moshika:pytorch-q8"].state == "absent" and rows["moshika:pytorch-q8"].picked
    assert rows["mimi:fp32"].picked and not rows["moshika:pytorch-bf16"].picked
    dl.download(dl.plan("moshika", platform=CUDA_16))
    dl.download(dl.plan("moshiko", variant="bf16", platform=CUDA_16))
    rows = {r.entry.id: r for r in hubcache.list_models(CUDA_16)}
    assert rows["moshiko:pytorch-bf16"].state == "cached"
    assert rows["moshika:pytorch-q8"].size_on_disk == sum(len(v) for k, v in moshi_repo().items() if k != "README.md")
    # Mimi alone: only its file goes; Moshiko keeps the rest.
    r = hubcache.plan_removal(["mimi"])
    assert r.freed == len(bf16[MIMI]) and r.targets[0].files == (MIMI,)
    assert hubcache.remove(r) == r.freed
    rows = {r.entry.id: r for r in hubcache.list_models(CUDA_16)}
    assert rows["mimi:fp32"].state == "absent" and rows["moshiko:pytorch-bf16"].state == "partial"
    # A whole voice: every cached variant, with its partial files.
    r = hubcache.plan_removal(["moshiko"])
    assert [t.repo for t in r.targets] == ["kyutai/moshiko-pytorch-bf16"] and r.targets[0].files is None
    blobs = len(bf16["model.safetensors"]) + len(bf16["tokenizer_spm_32k_3.model"])
    assert blobs <= r.freed < blobs + 1000  # the blobs, plus refs/main
    hubcache.remove(r)
    assert not (tmp_path / "hub" / "models--kyutai--moshiko-pytorch-bf16").exists()
    assert (tmp_path / "hub" / "models--kyutai--moshika-pytorch-q8").exists()
    with pytest.raises(ModelError, match="nothing of moshiko is in the Hugging Face cache"):
        hubcache.plan_removal(["moshiko"])
    with pytest.raises(UsageError, match="local path"):
        hubcache.plan_removal([str(tmp_path)])


def test_verify_catches_a_corrupted_cached_file(hub, tmp_path):
    files = moshi_repo()
    hub.add("kyutai/moshika-pytorch-q8", files)
    got = dl.download(dl.plan("moshika", platform=CUDA_16))
    checks = hubcache.verify_cached()
    assert len(checks) == 4 and all(c.ok for c in checks)
    assert {c.algorithm for c in checks} == {"sha256", "git-sha1"}
    blob = Path(os.path.realpath(got.files[0].path))
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as fh:
        fh.seek(10)
        fh.write(b"\0\0\0\0")
    seen = io.StringIO()
    checks = hubcache.verify_cached(["moshika"], on_file=lambda name, size: seen.write(name + "\n"))
    bad = [c for c in checks if not c.ok]
    assert [c.file for c in bad] == ["model.q8.safetensors"] and "corrupt" in bad[0].problem
    assert "model.q8.safetensors" in seen.getvalue()
    # --force fetches it again.
    fixed = dl.download(dl.plan("moshika", platform=CUDA_16), force=True)
    assert fixed.files[0].path.read_bytes() == files["model.q8.safetensors"]
    assert all(c.ok for c in hubcache.verify_cached(["kyutai/moshika-pytorch-q8"]))


def test_local_paths_win(tmp_path):
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text('{"moshi_name": "lm.safetensors"}')
    (d / "lm.safetensors").write_bytes(b"x")
    (d / "tokenizer_spm_32k_3.model").write_bytes(b"t")
    r = resolve_model(str(d))
    assert r.source == "local" and r.moshi_weights == d / "lm.safetensors" and r.config_path == d / "config.json"
    assert r.tokenizer == d / "tokenizer_spm_32k_3.model"
    f = resolve_model(str(d / "lm.safetensors"))
    assert f.files == {"lm.safetensors": d / "lm.safetensors"} and f.path == d
    with pytest.raises(ModelError, match="no such file or directory"):
        resolve_model(str(tmp_path / "nope" / "x.safetensors"))
    with pytest.raises(ModelError, match="unknown model 'moshka'") as e:
        resolve_model("moshka")
    assert e.value.hint == "did you mean moshika, moshiko?"
    with pytest.raises(ModelError, match="stt is a speech-to-text model; this command needs a Moshi dialogue"):
        resolve_model("stt", kind="moshi", platform=CPU)
    with pytest.raises(ModelError, match="mimi is a Mimi codec model; this command needs a speech-to-text model"):
        resolve_model("mimi", kind="stt", platform=CPU)
    with pytest.raises(UsageError, match="local path"):
        dl.plan(str(d))


def test_disk_full_while_writing(hub, monkeypatch):
    import errno

    from huggingface_hub import file_download

    hub.add("kyutai/moshika-pytorch-q8", moshi_repo())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_download, "http_get", full)
    with pytest.raises(ModelError, match="disk full while writing model.q8.safetensors") as e:
        dl.download(dl.plan("moshika", platform=CUDA_16))
    assert "resumes" in e.value.hint


def test_config_json_names_win_over_the_catalog(hub):
    """The MLX STT file names are assumed in the catalog; the repo's config.json corrects them."""
    config = (b'{"model_type": "stt", "moshi_name": "model.safetensors", "mimi_name": "mimi-other.safetensors",'
              b' "tokenizer_name": "tok.model"}')
    hub.add("kyutai/stt-1b-en_fr-mlx", {"config.json": config, "model.safetensors": b"w" * 100,
                                        "mimi-other.safetensors": b"m" * 10, "tok.model": b"t"})
    apple = catalog.platform_from_spec("apple:16")
    p = dl.plan("stt", platform=apple)
    assert sorted(f.name for f in p.files) == ["config.json", "mimi-other.safetensors", "model.safetensors",
                                              "tok.model"]
    dl.download(p)
    r = resolve_model("stt", platform=apple, kind="stt")
    assert r.source == "cache" and r.mimi_weights.name == "mimi-other.safetensors" and r.tokenizer.name == "tok.model"
