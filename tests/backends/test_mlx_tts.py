"""Kyutai TTS on MLX (moshi_mlx) on the tiny synthetic checkpoint: equal to moshi_mlx's own
TTSModel.generate (Kyutai's scripts/tts_mlx.py way), equal to the torch backend when greedy, and
the options speak relies on (seed, speed, max_steps, codes, audio prefix, lazy text).

MLX runs on the CPU here (``device="cpu"``, float32), so the equalities hold wherever the test
runs. Its Mimi decodes at ~1.3 s per 80 ms frame on a 2-core x86 CPU, so most tests skip the
decoder (``Settings(decode=False)``) and the one that decodes stops after a few frames.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("moshi_mlx.models.tts")

from moshikit.backends import mlx_tts, mlx_tts_engine, registry  # noqa: E402
from moshikit.backends.base import TTSBackend  # noqa: E402
from moshikit.errors import UsageError  # noqa: E402
from moshikit.tts import Settings, chunks, load_tts  # noqa: E402
from moshikit.tts.model import padding_bonus  # noqa: E402
from moshikit.tts.text import words_as_they_come  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "Hi there. Yes! Ça va?"


@pytest.fixture(scope="module")
def mlx_model(mimi_weights):
    return load_tts("synthetic", backend="mlx", device="cpu")


@pytest.fixture(scope="module")
def voice(mlx_model):
    return mlx_model.resolve_voice(None)


def codes_of(speech) -> np.ndarray:
    return np.stack(speech.codes, axis=-1)


def kyutai_reference(text: str, voice_path, seed: int, cfg: float = 2.0, temp: float = 0.6):
    """moshi_mlx's TTSModel.generate on a freshly loaded copy of the checkpoint, loaded and driven as
    Kyutai's scripts/tts_mlx.py does (moshi_mlx's own Mimi; final_padding as moshi's torch default)."""
    import mlx.core as mx
    import sentencepiece
    from moshi_mlx import models
    from moshi_mlx.models.tts import TTSModel

    from moshikit.tts.model import resolve_tts_checkpoint

    ckpt = resolve_tts_checkpoint("synthetic")
    lm_config = models.LmConfig.from_config_dict(ckpt.config)
    lm = models.Lm(lm_config)
    lm.load_pytorch_weights(str(ckpt.files["moshi_name"]), lm_config, strict=True)
    mimi = models.mimi.Mimi(models.mimi_202407(32))
    mimi.load_pytorch_weights(str(ckpt.files["mimi_name"]), strict=True)
    tokenizer = sentencepiece.SentencePieceProcessor(str(ckpt.files["tokenizer_name"]))
    tts = TTSModel(lm, mimi, tokenizer, temp=temp, cfg_coef=1, max_padding=8, initial_padding=2, final_padding=4,
                   raw_config=ckpt.config)
    entries = tts.prepare_script([text], padding_between=1)
    attributes = tts.make_condition_attributes([voice_path], cfg)
    mx.random.seed(seed)
    result = tts.generate([entries], [attributes])
    return np.array(mx.concatenate(result.frames, axis=-1))[0], result


def test_it_is_a_registered_tts_backend(mlx_model):
    assert registry.probe("tts", "mlx")[0]
    assert isinstance(mlx_model, TTSBackend)
    assert (mlx_model.backend, mlx_model.n_q, mlx_model.sample_rate, mlx_model.multi_speaker) == ("mlx", 8, 24000, True)
    assert mlx_model.describe()["device"] == "cpu" and mlx_model.synthetic
    torch_model = load_tts("synthetic", backend="torch")
    assert mlx_model.path == torch_model.path  # the same checkpoint, resolved by the same code
    assert mlx_model.list_voices() == torch_model.list_voices()
    assert mlx_tts.voices("synthetic")[1] == mlx_model.list_voices()[0]
    assert mlx_model.cfg_values == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    mlx_model.check_text("Hello there.")
    with pytest.raises(UsageError, match="characters this model cannot speak: '日' '本'"):
        mlx_model.check_text("Hello 日本")


def test_the_default_on_apple_silicon():
    from dataclasses import replace

    from moshikit import platform

    here = platform.detect()
    assert platform.default_tts(replace(here, apple_silicon=True, cuda=[])).backend == "mlx"
    # Elsewhere without a GPU, a Kyutai TTS --model runs on moshikit's CPU engine.
    assert platform.default_tts(replace(here, apple_silicon=False, cuda=[]), model="tts").backend == "cpu"


def test_equals_moshi_mlx_tts_generate(mlx_model, voice):
    """Cut into sentences and fed lazily, the stream is exactly moshi_mlx's generate on the whole text."""
    ref_codes, ref = kyutai_reference(TEXT, voice.path, seed=7)
    words: list = []
    speech = mlx_model.generate(chunks([TEXT]), [voice], Settings(seed=7, keep_codes=True, decode=False),
                                on_word=lambda w, t: words.append((w, t)))
    np.testing.assert_array_equal(codes_of(speech), ref_codes)
    assert [(w.text, round(w.start * 12.5)) for w in speech.words] == ref.all_transcripts[0]
    assert [(w, round(t * 12.5)) for w, t in words] == ref.all_transcripts[0]
    assert speech.ended and speech.frames == ref_codes.shape[1]


@pytest.mark.parametrize("text,cfg,speed", [("Hello, how are you doing today?", 2.0, 1.0),
                                            ("The quick brown fox jumps over the lazy dog.", 3.0, 0.7)])
def test_greedy_equals_the_torch_backend(mlx_model, voice, text, cfg, speed):
    """temp=0: same text tokens (hence word timings) and same codes as moshi's torch TTSModel path.
    Measured here: 100% of codes and every word time, on these texts and two others."""
    torch_model = load_tts("synthetic", backend="torch")
    settings = Settings(temp=0.0, cfg=cfg, padding_bonus=padding_bonus(speed), keep_codes=True, decode=False)
    ours = mlx_model.generate(chunks([text]), [voice], settings)
    theirs = torch_model.generate(chunks([text]), [torch_model.resolve_voice(None)], settings)
    assert ours.steps == theirs.steps
    np.testing.assert_array_equal(codes_of(ours), codes_of(theirs))
    assert [(w.text, w.start, w.end) for w in ours.words] == [(w.text, w.start, w.end) for w in theirs.words]


def test_seed_repeats_and_other_seeds_differ(mlx_model, voice):
    runs = [mlx_model.generate(chunks(["Hello there."]), [voice], Settings(seed=s, keep_codes=True, decode=False))
            for s in (1, 1, 2)]
    a, b, c = (codes_of(r) for r in runs)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or (a != c).any()


def test_speed_and_cfg(mlx_model, voice):
    text = "Hello world, this is a test of speed, said the model."
    steps = {s: mlx_model.generate(chunks([text]), [voice], Settings(seed=3, padding_bonus=padding_bonus(s),
                                                                     decode=False)).steps for s in (0.5, 2.0)}
    assert steps[2.0] < steps[0.5]
    with pytest.raises(UsageError, match="--cfg 2.2: this model was trained for 1, 1.5, 2"):
        mlx_model.generate(chunks([text]), [voice], Settings(cfg=2.2))
    with pytest.raises(UsageError, match="nothing to say"):
        mlx_model.generate(chunks([" "]), [voice], Settings())


def test_max_steps_and_a_small_token_ring(mlx_model, voice, monkeypatch):
    """LmGen's token buffer is a ring: a tiny one gives the same codes (flat memory for any length)."""
    text = "One two three four five six seven eight nine ten."
    whole = mlx_model.generate(chunks([text]), [voice], Settings(seed=5, keep_codes=True, decode=False))
    monkeypatch.setattr(mlx_tts_engine, "BUFFER_STEPS", 8)
    ringed = mlx_model.generate(chunks([text]), [voice], Settings(seed=5, keep_codes=True, decode=False))
    assert whole.steps > 3 * 8
    np.testing.assert_array_equal(codes_of(ringed), codes_of(whole))
    cut = mlx_model.generate(chunks([text]), [voice], Settings(seed=5, max_steps=30, keep_codes=True, decode=False))
    assert not cut.ended and cut.steps == 30 and len(cut.codes) == 30 - 1 - 2 - mlx_model.delay_steps + 1


def test_text_is_pulled_as_the_model_needs_it(mlx_model, voice):
    """Words are read a few at a time (the model's look-ahead), not all before the first step."""
    pulled: list[int] = []
    spoken: list = []

    def source():
        for i, chunk in enumerate(words_as_they_come(["one two three four five six seven eight. "])):
            pulled.append(len(spoken))
            yield chunk

    mlx_model.generate(source(), [voice], Settings(seed=0, decode=False), on_word=lambda w, t: spoken.append(w))
    assert pulled[0] == 0 and pulled[-1] >= 4  # the last word was pulled after the model spoke four


def test_streams_decoded_frames_as_torch_mimi_decodes_them(mlx_model, voice, mimi_weights):
    """on_pcm gets one 1920-sample frame per code frame, as soon as it is decoded; the MLX Mimi's audio
    is moshi's torch Mimi's for the same codes (moshikit's causal-mask fix)."""
    pcm: list = []
    speech = mlx_model.generate(chunks(["Hi."]), [voice], Settings(seed=2, max_steps=24, keep_codes=True),
                                on_pcm=pcm.append)
    assert len(pcm) == speech.frames == len(speech.codes) >= 4 and {p.shape for p in pcm} == {(1920,)}
    assert speech.first_audio is not None and speech.samples == 1920 * len(pcm)
    from moshikit.backends import torch_codec

    codec = torch_codec.load(mimi_weights, device="cpu")
    codec.reset_stream(1)
    ref = np.clip(codec.decode_step(codes_of(speech)[None]), -1, 1)[0]
    got = np.concatenate(pcm)
    assert 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()) > 30


@pytest.fixture(scope="module")
def public(tmp_path_factory, mimi_weights, write_wav):
    """(mlx model, torch model, voice sample) of a tiny 0.75B-public-like checkpoint."""
    from moshikit.synthetic.tts import write_public_repo

    path = write_public_repo(tmp_path_factory.mktemp("pub") / "tts-public", mimi_path=mimi_weights)
    sample = write_wav(tmp_path_factory.mktemp("v") / "me.wav", (0.1 * np.sin(np.arange(24000) / 9)).astype(np.float32))
    return load_tts(str(path), backend="mlx", device="cpu"), load_tts(str(path), backend="torch"), str(sample)


def greedy_pair(public, cfg: float):
    ours_model, torch_model, sample = public
    settings = Settings(temp=0.0, cfg=cfg, keep_codes=True, decode=False)
    ours = ours_model.generate(chunks(["Hello there."]), [ours_model.resolve_voice(sample)], settings)
    theirs = torch_model.generate(chunks(["Hello there."]), [torch_model.resolve_voice(sample)], settings)
    np.testing.assert_array_equal(codes_of(ours), codes_of(theirs))
    assert [w.text for w in ours.words] == ["Hello", "there."]
    assert [(w.start, w.end) for w in ours.words] == [(w.start, w.end) for w in theirs.words]
    return ours


def test_audio_prefix_model(public):
    """The 0.75B-public kind: the voice is an audio prefix encoded by the MLX Mimi; greedy, the codes and
    word times equal torch's."""
    assert not public[0].multi_speaker and not public[0].cfg_values
    assert public[0].resolve_voice(public[2]).kind == "audio"
    greedy_pair(public, 1.0)


@pytest.mark.slow  # ~35 s on a loaded 2-core CPU (guidance doubles the batch)
def test_audio_prefix_guidance_is_moshis(public):
    """CFG at inference as moshi runs it (no text in the null half, the prefix masked): greedy, the codes
    equal torch's at --cfg 2, and guidance changes them."""
    guided = greedy_pair(public, 2.0)
    plain = greedy_pair(public, 1.0)
    assert len(plain.codes) != len(guided.codes) or (codes_of(plain) != codes_of(guided)).any()


def test_fewer_codebooks_as_torch(mimi_weights):
    """n_q=4 (moshi's TTSModel n_q): only the first codebooks are generated, the rest fed as zeros;
    greedy, the codes equal torch's."""
    settings = Settings(temp=0.0, keep_codes=True, decode=False)
    ours_model = mlx_tts.load("synthetic", device="cpu", n_q=4)
    from moshikit.backends import torch_tts

    torch_model = torch_tts.load("synthetic", device="cpu", n_q=4)
    assert ours_model.n_q == torch_model.n_q == 4
    ours = ours_model.generate(chunks(["Hello there."]), [ours_model.resolve_voice(None)], settings)
    theirs = torch_model.generate(chunks(["Hello there."]), [torch_model.resolve_voice(None)], settings)
    assert codes_of(ours).shape[0] == 4
    np.testing.assert_array_equal(codes_of(ours), codes_of(theirs))
    with pytest.raises(UsageError, match="--codebooks 9: this model generates 1 to 8 codebooks"):
        mlx_tts.load("synthetic", device="cpu", n_q=9)


@pytest.mark.slow  # ~80 s on a loaded 2-core CPU (MLX's Mimi)
def test_bench_tts_has_an_mlx_row(tmp_path, capsys):
    import json

    from moshikit.cli.app import main

    out = tmp_path / "tts.json"
    code = main(["bench", "tts", "--synthetic", "-b", "mlx", "--no-reference", "--words", "1", "--repeats", "1",
                 "--json", str(out)])
    assert code in (0, None), capsys.readouterr().err
    rows = json.loads(out.read_text())["rows"]
    assert {(r["name"], r["task"]) for r in rows} == {("moshikit speak -b mlx", "speak 1 words"),
                                                      ("moshikit speak -b mlx", "time to first audio")}
    assert all(r["params"]["device"] == "cpu" and r["stats"]["p50"] > 0 for r in rows)
