import json

import pytest

from moshikit.errors import ModelError
from moshikit.hub import file_sha256, resolve_mimi


def test_local_dir_uses_config_mimi_name(tmp_path, mimi_weights):
    (tmp_path / "config.json").write_text(json.dumps({"mimi_name": "mine.safetensors"}))
    (tmp_path / "mine.safetensors").symlink_to(mimi_weights)
    w = resolve_mimi(model=str(tmp_path))
    assert w.path.name == "mine.safetensors" and len(w.sha256) == 64


def test_local_dir_without_mimi(tmp_path):
    with pytest.raises(ModelError, match="no Mimi weights"):
        resolve_mimi(model=str(tmp_path))


def test_not_a_mimi_checkpoint(tmp_path):
    from safetensors.numpy import save_file
    import numpy as np

    p = tmp_path / "lm.safetensors"
    save_file({"text_emb.weight": np.zeros((2, 2), np.float32)}, str(p))
    with pytest.raises(ModelError, match="not a Mimi checkpoint \\(no tensor"):
        resolve_mimi(p)


def test_offline_missing_repo_names_it():
    with pytest.raises(ModelError) as e:
        resolve_mimi(model="kyutai/not-downloaded")
    assert "kyutai/not-downloaded" in str(e.value) and "--mimi-weight" in e.value.hint


def test_sha256_of_a_blob_is_its_name(tmp_path):
    blob = tmp_path / "blobs" / ("a" * 64)
    blob.parent.mkdir()
    blob.write_bytes(b"whatever")
    assert file_sha256(blob) == "a" * 64
    plain = tmp_path / "f"
    plain.write_bytes(b"abc")
    assert file_sha256(plain) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
