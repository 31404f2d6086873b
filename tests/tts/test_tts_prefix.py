"""Models conditioned on an audio prefix (the tts-0.75b-en-public kind): the voice is any audio file,
and moshikit's stream equals moshi's own simple_generate on it."""

from __future__ import annotations

import numpy as np
import pytest

from moshikit.errors import UsageError
from moshikit.tts import Settings, chunks, generate, load_tts, resolve_voice


@pytest.fixture(scope="module")
def public(tmp_path_factory, mimi_weights, one_torch_thread):
    from moshikit.synthetic.tts import write_public_repo

    repo = write_public_repo(tmp_path_factory.mktemp("pub") / "tts-public", mimi_path=mimi_weights)
    return load_tts(str(repo), backend="torch")  # moshi's own model: the tests' reference


def test_audio_prefix_voice_equals_moshi(public, tmp_path, write_wav):
    import torch

    sample = write_wav(tmp_path / "me.wav", (0.1 * np.sin(np.arange(36000) / 9)).astype(np.float32))
    assert not public.multi_speaker
    voice = resolve_voice(public, str(sample))
    assert voice.kind == "audio"
    pcm: list = []
    speech = generate(public, chunks(["Hello there."]), [voice], Settings(seed=4, cfg=2.0), on_pcm=pcm.append)
    ours = np.concatenate(pcm)
    torch.manual_seed(4)
    theirs = public.tts.simple_generate("Hello there.", f"file://{sample}", cfg_coef=2.0, show_progress=False)[0]
    # moshi drops two more frames at the start ("a little click") and stops at the last word.
    np.testing.assert_allclose(ours[2 * 1920: 2 * 1920 + theirs.numel()], theirs.numpy(), atol=1e-6)
    assert [w.text for w in speech.words] == ["Hello", "there."] and speech.words[0].start >= 0
    with pytest.raises(UsageError, match="takes its voice from an audio sample, not an embedding"):
        from moshikit.synthetic.tts import write_voice

        resolve_voice(public, str(write_voice(tmp_path / "v.safetensors", 0)))
