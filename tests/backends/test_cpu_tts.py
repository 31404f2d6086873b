"""Kyutai TTS on moshikit's CPU engine (``speak -b cpu``) against moshi's own model on the tiny
synthetic checkpoint: the step's logits (cross-attention to the speaker, the demuxed text
stream, the low-rank depth embeddings) within a stated bound of moshi's fp32, the same speech as
``-b torch`` in fp32, guidance at inference on an audio-prefix model, int8 end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moshikit.backends.cpu_lmgen import Engine  # noqa: E402
from moshikit.cli.app import main  # noqa: E402
from moshikit.cpu_precision import int8_supported  # noqa: E402
from moshikit.tts import Settings, chunks, generate, load_tts, resolve_voice  # noqa: E402
from moshikit.tts.engine import generate_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_int8 = pytest.mark.skipif(not int8_supported(), reason="no int8 CPU engine in this torch")

#: Minimum SNR against moshi's fp32 logits, teacher forced, random weights (text logits; depth logits).
#: fp32: the same arithmetic in another order (the demuxed and low-rank embeddings as tables
#: computed once, fused projections): float32 rounding (-144 dB an operation) over 2 layers and
#: a depth layer; measured 140 and 131 dB. int8 (two passes, bf16 KV cache and tables): the
#: weights' 8-bit per-channel rounding (torch_int8: 32.8 dB a matmul), as for the STT models;
#: measured 60.6 and 38.8 dB (the synthetic text head is fitted to two strong rows, which
#: rounding barely moves). bf16: 8-bit mantissas of weights, tables and KV cache; measured 56.1
#: and 45.3 dB (one thread, AVX-512 VNNI, no AMX).
MIN_SNR_DB = {"fp32": 100.0, "int8": 30.0, "bf16": 38.0}
TEXT = "Hi there. Yes! Ça va?"


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((x - ref) ** 2).sum(), 1e-30)))


def centred(x: np.ndarray) -> np.ndarray:
    """Logits less their mean per step (a shift common to all classes changes no decision)."""
    return x - x.mean(-1, keepdims=True)


@pytest.fixture(scope="module")
def cpu_model(tts_model):
    return load_tts("synthetic", backend="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def voice(tts_model):
    return resolve_voice(tts_model, None)


def conditions(lm, batch: int):
    """moshi's conditions for ``batch`` rows, each with a speaker of its own: (summed [B, 1, dim], cross [B, T, dim])."""
    from moshi.conditioners import ConditionAttributes, TensorCondition

    g = torch.Generator().manual_seed(0)
    attributes = [ConditionAttributes(text={"control": "ok", "cfg": "2.0"}, tensor={"speaker_wavs": TensorCondition(
        torch.randn(1, 10, 32, generator=g), torch.ones(1, 10, dtype=torch.bool))}) for _ in range(batch)]
    tensors = lm.condition_provider.prepare_and_provide(attributes)
    return lm.fuser.get_sum(tensors), lm.fuser.get_cross(tensors)


@pytest.mark.parametrize("kind", ["fp32", pytest.param("int8", marks=needs_int8), "bf16"])
def test_step_and_depth_logits_are_within_the_stated_bound_of_moshi_fp32(tts_model, kind):
    lm = tts_model.tts.lm
    b, steps, n = 2, 20, lm.text_emb.num_embeddings
    summed, cross = conditions(lm, b)
    engine = Engine(lm, kind, torch.float32 if kind == "fp32" else torch.bfloat16)
    engine.step.reset(b)
    engine.step.set_cross(cross)
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, n * n, (steps, b), generator=g)  # both text streams muxed (the look-ahead one too)
    text[3, 0], text[5, 1] = -1, n - 1  # a zero (moshi's guidance input) and a missing second stream
    audio = torch.randint(0, lm.card, (steps, b, lm.n_q), generator=g)
    ref, got, dep_ref, dep_got = [], [], [], []
    with torch.inference_mode(), lm.streaming(b):
        for t in range(steps):
            tokens = torch.cat([text[t][:, None], audio[t]], 1)
            out, logits = lm.forward_text(tokens[:, :, None], summed, cross)
            ours, our_logits = engine.step(tokens, None, summed[:, 0])
            ref.append(logits[:, 0, 0])
            got.append(our_logits)
            given = tokens.clamp(min=0)  # the depth transformer's inputs: the frame's text, then its audio
            with lm.depformer.streaming(b):
                dep_ref.append(torch.stack([lm.forward_depformer(k, given[:, k:k + 1, None], out)[:, 0, 0]
                                            for k in range(lm.dep_q)], 1))
            dep_got.append(engine.depth.logits(ours, given))
    ref, got = centred(torch.stack(ref).numpy()), centred(torch.stack(got).numpy())
    dep_ref, dep_got = centred(torch.stack(dep_ref).numpy()), centred(torch.stack(dep_got).numpy())
    assert got.shape == ref.shape == (steps, b, lm.text_card) and dep_got.shape == dep_ref.shape
    assert snr_db(ref, got) >= MIN_SNR_DB[kind]
    assert snr_db(dep_ref, dep_got) >= MIN_SNR_DB[kind]


def codes_of(speech) -> np.ndarray:
    return np.stack(speech.codes, axis=-1)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean()) if a.shape == b.shape else 0.0


def top_k_by_token(probs: torch.Tensor, k: int) -> torch.Tensor:
    """moshi's ``sample_top_k`` (the ``k`` most likely tokens, drawn by exponential race) with each
    candidate's random draw tied to its token instead of to its rank: the same distribution."""
    kth = torch.topk(probs, min(k, probs.shape[-1]), dim=-1).values[..., -1:]
    race = probs / torch.empty_like(probs).exponential_(1)
    return torch.where(probs >= kth, race, torch.zeros_like(race)).argmax(-1, keepdim=True)


@pytest.fixture
def rank_free_sampling(monkeypatch):
    """Both backends draw with ``top_k_by_token``. moshi's own ``sample_top_k`` sorts the candidates
    and hands out the random draws by rank: two candidates whose probabilities tie within float32
    rounding swap ranks between two kernel sets and take each other's draws, and from that token on
    the two streams part. On random weights ties are common (250 near-flat candidates): one such
    swap in 336 draws parted the streams on an AMD EPYC, not on an Intel Xeon. Drawn by token, a
    token changes only where two candidates' races tie within rounding (~1e-6 relative a draw)."""
    import moshi.utils.sampling

    monkeypatch.setattr(moshi.utils.sampling, "sample_top_k", top_k_by_token)


@pytest.mark.parametrize("temp", [0.0, 0.6])
def test_speech_is_torchs_in_fp32(tts_model, cpu_model, voice, temp, rank_free_sampling):
    """The same words and audio tokens as ``-b torch``, greedy and sampled with the same seed
    (tokens are drawn by moshi's sample_token from the same generator, in the same order). Not
    asserted bit for bit: the logits differ by float32 rounding (MIN_SNR_DB fp32), so a token
    decided by a near tie could flip (see ``rank_free_sampling``); measured: every token equal, on an
    Intel Xeon (AMX) and an AMD EPYC (Zen 4)."""
    settings = Settings(seed=7, temp=temp, keep_codes=True, decode=False)
    theirs = generate(tts_model, chunks([TEXT]), [voice], settings)
    ours = generate(cpu_model, chunks([TEXT]), [voice], settings)
    assert cpu_model.backend == "cpu" and cpu_model.describe()["dtype"] == "fp32"
    assert [w.text for w in ours.words] == [w.text for w in theirs.words] == ["Hi", "there.", "Yes!", "Ça", "va?"]
    assert agreement(codes_of(ours), codes_of(theirs)) >= 0.95


def test_audio_is_moshis_mimi_decoding_of_the_codes(tts_model, cpu_model, voice):
    """The cpu backend decodes with the onnx codec's decoder graph (``open_decoder``), not moshi's
    Mimi: its audio is Mimi's streaming decode of the same codes, within the onnx codec's bound
    (tests/backends/test_onnx_codec.py: float32 convolutions in another order, > 60 dB; measured
    138 dB)."""
    assert cpu_model.open_decoder is not None and tts_model.open_decoder is None
    frames = []
    speech = generate(cpu_model, chunks([TEXT]), [voice], Settings(seed=7, temp=0.0, keep_codes=True),
                      on_pcm=frames.append)
    codes = torch.from_numpy(codes_of(speech))[None]  # [1, K, T]
    mimi = tts_model.tts.mimi
    with torch.no_grad(), mimi.streaming(1):
        want = np.concatenate([mimi.decode(codes[..., t:t + 1])[0, 0].numpy() for t in range(codes.shape[-1])])
    got = np.concatenate(frames)
    assert got.shape == want.shape and len(frames) == codes.shape[-1] > 5
    assert snr_db(np.clip(want, -1, 1), got) > 60


def test_a_batch_of_two_voices_is_torchs(tts_model, cpu_model, rank_free_sampling):
    """Rows with speakers of their own (cross-attention keys and values per stream)."""
    voices = [[resolve_voice(tts_model, None)], [resolve_voice(tts_model, "vctk/p225_023.wav")]]
    texts = [["Hello there."], ["The quick brown fox."]]
    settings = Settings(seed=3, temp=0.0, keep_codes=True, decode=False)
    theirs = generate_batch(tts_model, [chunks(t) for t in texts], voices, settings)
    ours = generate_batch(cpu_model, [chunks(t) for t in texts], voices, settings)
    for a, b in zip(ours, theirs):
        assert [w.text for w in a.words] == [w.text for w in b.words]
        assert agreement(codes_of(a), codes_of(b)) >= 0.95  # as test_speech_is_torchs_in_fp32
    assert agreement(codes_of(ours[0])[:, :10], codes_of(ours[1])[:, :10]) < 0.9  # the voices differ


def test_guidance_at_inference_on_an_audio_prefix_model(tmp_path, mimi_weights, write_wav, rank_free_sampling):
    """The public model's kind: no speaker (no cross-attention), the voice an audio prefix, and
    classifier-free guidance run at inference over a doubled batch (cfg_is_masked_until,
    cfg_is_no_text): as ``-b torch`` (bound as test_speech_is_torchs_in_fp32)."""
    from moshikit.synthetic.tts import write_public_repo

    repo = str(write_public_repo(tmp_path / "tts-public", mimi_path=mimi_weights))
    sample = write_wav(tmp_path / "me.wav", (0.1 * np.sin(np.arange(24000) / 9)).astype(np.float32))
    settings = Settings(seed=4, cfg=2.0, temp=0.0, keep_codes=True, decode=False)
    runs = []
    for backend in ("torch", "cpu"):
        model = load_tts(repo, backend=backend, dtype="fp32")
        runs.append(generate(model, chunks(["Hello there."]), [resolve_voice(model, str(sample))], settings))
    ours, theirs = runs[1], runs[0]
    assert [w.text for w in ours.words] == [w.text for w in theirs.words] == ["Hello", "there."]
    assert agreement(codes_of(ours), codes_of(theirs)) >= 0.95


@needs_int8
def test_speak_on_the_cpu_backend_in_int8(capsys, tmp_path, tts_model):
    """``speak -b cpu --dtype int8`` end to end: a wav, the words, the backend named in the words file."""
    import soundfile as sf

    wav, words = tmp_path / "hi.wav", tmp_path / "hi.json"
    code = main(["speak", "-m", "synthetic", "-b", "cpu", "--dtype", "int8", "Hi there.", "-o", str(wav),
                 "--words", str(words), "--seed", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    audio, rate = sf.read(wav)
    assert rate == 24000 and audio.size / 24000 == pytest.approx(summary["audio_seconds"], abs=1e-3)
    doc = json.loads(words.read_text())
    assert doc["model"]["backend"] == "cpu"
    assert [w["word"] for w in doc["words"]] == ["Hi", "there."]


def test_what_the_cpu_backend_cannot_do_is_refused(capsys, tmp_path):
    wav = tmp_path / "hi.wav"
    for option, message in ((["--dtype", "fp16"], "int8, bf16 or fp32"), (["--device", "cuda"], "runs on the CPU")):
        code = main(["speak", "-m", "synthetic", "-b", "cpu", *option, "hi", "-o", str(wav)])
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert code != 0 and len(lines) == 1 and message in lines[0]
    assert not list(tmp_path.iterdir())
