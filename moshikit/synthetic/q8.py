"""A tiny int8 (``"quantize": true``) Moshi checkpoint, laid out like the published
``kyutai/<voice>-pytorch-q8`` repos: ``model.q8.safetensors`` holding moshi's ``QLinear``
tensors (``*.weight`` int8, ``*.weight_scb`` float32 scales) and a config.json that says
``"quantize": true``. Made from a float synthetic repo the way moshi's export script makes
the published ones (``replace_linear_with_qlinear`` over the loaded model)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

Q8_NAME = "model.q8.safetensors"


def write_q8_repo(src: str | os.PathLike, dest: str | os.PathLike, *, other_repo: str | None = None) -> Path:
    """Quantize the float repo ``src`` into ``dest``. With ``other_repo`` the config names its
    Mimi and tokenizer as ``hf://<other_repo>/<file>`` (as the published q8 configs do) and
    ``dest`` holds neither."""
    import torch
    from moshi.models import loaders
    from moshi.utils.quantize import replace_linear_with_qlinear
    from safetensors.torch import save_file

    from ..backends.lm_repo import resolve_repo
    from ..backends.torch_lm import checkpoint_info

    src, dest = Path(src), Path(dest)
    repo = resolve_repo(src)
    info = checkpoint_info(repo)
    model = loaders.get_moshi_lm(str(repo.moshi_weights), lm_kwargs=info.lm_config, device="cpu",
                                 dtype=torch.float32)
    replace_linear_with_qlinear(model)
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dest / Q8_NAME))
    config = dict(repo.config or {})
    config.update(quantize=True, moshi_name=Q8_NAME)
    mimi, tok = Path(repo.mimi_weights), Path(repo.tokenizer)
    if other_repo:
        config.update(mimi_name=f"hf://{other_repo}/{mimi.name}", tokenizer_name=f"hf://{other_repo}/{tok.name}")
    else:
        config.update(mimi_name=mimi.name, tokenizer_name=tok.name)
        for f in (mimi, tok):
            if f.is_file():
                shutil.copyfile(f, dest / f.name)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest
