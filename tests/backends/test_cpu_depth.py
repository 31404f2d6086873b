"""The CPU engine's depth transformer (``cpu_depth``) against moshi's own on a tiny random Moshi:
every codebook's logits within a stated bound of moshi's ``forward_depformer`` (teacher forced),
the engine's greedy text and audio tokens equal to moshi's ``LMGen`` step for step, seeded
sampling repeating, and ``chat``'s backend choice able to pick it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moshikit.backends import cpu_engine, torch_lm  # noqa: E402
from moshikit.backends.base import SamplingConfig  # noqa: E402
from moshikit.backends.cpu_depth import Depth  # noqa: E402
from moshikit.cpu_precision import int8_supported  # noqa: E402
from moshikit.synthetic import lm as synthetic_lm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_int8 = pytest.mark.skipif(not int8_supported(), reason="no int8 CPU engine in this torch")
GREEDY = SamplingConfig(temp=0.0, temp_text=0.0)

#: Minimum SNR of the depth transformer's logits against moshi's in fp32 (teacher forced, random
#: weights). fp32: the same arithmetic in another order (every codebook's input projection in one
#: matmul, fused attention over the frame's codebooks): float32 rounding (-144 dB an operation)
#: over two layers; measured 138 dB. int8: the weights' 8-bit per-channel rounding, as the temporal
#: transformer's bound (30 dB; measured 45.5 dB here: two layers, activations in two passes at
#: batch 3). bf16: 8-bit mantissas of weights and keys/values (38 dB; measured 48.5 dB).
MIN_SNR_DB = {"fp32": 100.0, "int8": 30.0, "bf16": 38.0}


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((x - ref) ** 2).sum(), 1e-30)))


def centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(-1, keepdims=True)


@pytest.fixture(scope="module")
def model():
    """A tiny random Moshi LMModel in fp32 (moshi's own init), as the synthetic checkpoint's config."""
    from moshi.models import loaders

    cfg = dict(loaders._lm_kwargs, **synthetic_lm.TINY_OVERRIDES)
    torch.manual_seed(0)
    return loaders.get_moshi_lm(None, lm_kwargs=cfg, device="cpu", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return synthetic_lm.write_moshi_repo(tmp_path_factory.mktemp("lm") / "moshiko-pytorch", seed=0)


def moshi_depth_logits(model, out: torch.Tensor, given: torch.Tensor) -> np.ndarray:
    """moshi's forward_depformer for every codebook, the tokens before each taken from ``given``."""
    b = out.shape[0]
    logits = []
    with torch.inference_mode(), model.depformer.streaming(b):
        for k in range(model.dep_q):
            x = model.forward_depformer(k, given[:, k, None, None], out[:, None])
            logits.append(x[:, 0, 0].float())
    return torch.stack(logits, dim=1).numpy()


def assert_same_steps(ref, eng, codes: np.ndarray) -> int:
    """Step both LMs over ``codes`` [T, B, K]: the same steps give tokens, and the same tokens.
    Returns how many steps gave tokens."""
    steps = 0
    for t, c in enumerate(codes):
        a, b = ref.step(c), eng.step(c)
        assert (a is None) == (b is None), t
        if a is not None:
            np.testing.assert_array_equal(b, a, err_msg=f"step {t}")
            steps += 1
    return steps


@pytest.mark.parametrize("kind", ["fp32", pytest.param("int8", marks=needs_int8), "bf16"])
def test_depth_logits_are_within_the_stated_bound_of_moshi(model, kind):
    rng = np.random.default_rng(3)
    b = 3
    out = torch.from_numpy(rng.standard_normal((b, model.dim)).astype(np.float32))
    given = torch.from_numpy(np.concatenate([rng.integers(0, model.text_card, (b, 1)),
                                             rng.integers(0, model.card, (b, model.dep_q))], 1))
    ref = centred(moshi_depth_logits(model, out, given))
    depth = Depth(model, kind)
    with torch.inference_mode():
        got = centred(depth.logits(out, given).numpy())
    assert got.shape == ref.shape == (b, model.dep_q, model.card)
    assert snr_db(ref, got) >= MIN_SNR_DB[kind]


def test_greedy_tokens_are_moshi_lmgen_tokens(repo):
    """Text and audio, step for step, over a batch of 2 (fp32 both: the logits agree to ~1e-6
    relative while the random model's top two logits are ~1e-2 apart, so argmax cannot flip
    unless two logits tie to 1e-6, which these seeds do not)."""
    codes = np.random.default_rng(0).integers(0, 2048, (24, 2, 8))
    ref = torch_lm.load(repo, device="cpu", sampling=GREEDY)
    eng = cpu_engine.load(repo, device="cpu", dtype="fp32", sampling=GREEDY)
    assert eng.info.dep_q == ref.info.dep_q == 8 and eng.input_codebooks == 8
    ref.reset(2)
    eng.reset(2)
    assert_same_steps(ref, eng, codes) > 0


def test_seeded_sampling_repeats_and_differs_from_greedy(repo):
    codes = np.random.default_rng(1).integers(0, 2048, (12, 1, 8))
    hot = SamplingConfig(seed=5)

    def run(sampling):
        lm = cpu_engine.load(repo, device="cpu", dtype="fp32", sampling=sampling)
        lm.reset(1)
        return np.stack([x for x in (lm.step(c) for c in codes) if x is not None])

    first, again = run(hot), run(hot)
    np.testing.assert_array_equal(first, again)
    assert (first != run(GREEDY)).any()


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_hibiki_greedy_tokens_are_moshi_lmgen_tokens(tmp_path_factory, mimi_weights, cfg):
    """Hibiki (its description conditions summed into the input; with guidance, the unconditioned
    half of a doubled batch mixed into text and audio logits) and its end-of-input step: the engine
    in fp32 gives moshi's LMGen tokens step for step (the same reasoning on ties as above)."""
    from moshikit.synthetic.hibiki import write_hibiki_repo

    repo = write_hibiki_repo(tmp_path_factory.mktemp("hibiki") / "hibiki", mimi_path=mimi_weights)
    ref = torch_lm.load(repo, device="cpu", sampling=GREEDY)
    eng = cpu_engine.load(repo, device="cpu", dtype="fp32", sampling=GREEDY)
    k = eng.input_codebooks
    codes = np.random.default_rng(2).integers(0, 2048, (16, 2, k))
    for lm in (ref, eng):
        lm.set_guidance(cfg)
        lm.reset(2)
    steps = assert_same_steps(ref, eng, codes)
    for t in range(3):
        np.testing.assert_array_equal(eng.step_end_of_input(), ref.step_end_of_input(), err_msg=f"end {t}")
    assert steps >= 8
