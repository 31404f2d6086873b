"""moshikit translate gives the tokens of Kyutai's own ``moshi.run_inference`` (its InferenceState,
driven as its main() drives it, at batch size 1) on the same checkpoint, input and seed."""

import numpy as np
import pytest

from moshikit import translate
from moshikit.synthetic.hibiki import HIBIKI_MIMI_NAME, HIBIKI_TOKENIZER_NAME, write_hibiki_repo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mimi_weights):
    return write_hibiki_repo(tmp_path_factory.mktemp("hibiki") / "repo", mimi_path=mimi_weights, seed=3)


def kyutai(repo, pcm, seed, cfg):
    """run_inference's InferenceState at batch 1; the audio codes it decodes are recorded."""
    import torch
    from moshi import run_inference
    from moshi.models import loaders

    info = loaders.CheckpointInfo.from_hf_repo("x", repo / "model.safetensors", repo / HIBIKI_MIMI_NAME,
                                               repo / HIBIKI_TOKENIZER_NAME, repo / "config.json")
    mimi = info.get_mimi(device="cpu")
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    state = run_inference.InferenceState(info, mimi, info.get_text_tokenizer(), lm, 1, cfg, "cpu",
                                         **info.lm_gen_config)
    codes = []
    decode = mimi.decode
    mimi.decode = lambda c: (codes.append(c[0].clone()), decode(c))[1]
    torch.manual_seed(seed)
    with torch.no_grad():
        [(text, audio)] = state.run(torch.from_numpy(pcm)[None, None])
    mimi.decode = decode
    return text.tolist(), [c[:, 0].numpy() for c in codes], audio[0].numpy()


@pytest.mark.parametrize("cfg", [1.0, pytest.param(3.0, marks=pytest.mark.slow)])
def test_tokens_equal_run_inference(repo, cfg, speech, tmp_path, write_wav):
    seed = 11
    pcm = np.ascontiguousarray(speech[1920 * 4 : 1920 * 12], np.float32)  # whole frames: run_inference drops a partial one
    want_text, want_codes, want_audio = kyutai(repo, pcm, seed, cfg)
    tr = translate.load_translator(str(repo), backend="torch", device="cpu", dtype="float32", codec_backend="torch",
                                   cfg=cfg, seed=seed)
    audio = []
    got = translate.translate_stream(tr, [pcm], opts=translate.TranslateOptions(keep_tokens=True),
                                     write=lambda original, translation: audio.append(translation))
    assert want_text[-1] == tr.eos_id  # the end of input was signalled and answered, in both
    assert got.tokens == want_text
    assert len(got.codes) == len(want_codes)
    for a, b in zip(got.codes, want_codes):
        np.testing.assert_array_equal(a, b)
    audio = np.concatenate(audio)
    assert round(got.output_seconds * 24000) == audio.size == want_audio.size
    np.testing.assert_allclose(audio, want_audio, atol=1e-4)
