"""moshikit's CPU engine (``-b cpu``) against moshi's own LMModel/LMGen on tiny models: the same
greedy text on scripted STT checkpoints, logits within a stated bound of fp32 on random
weights (streams restarted mid-batch, the KV cache grown and wrapped past the context),
``transcribe`` choosing it on a CPU, and models it cannot run refused with a hint."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moshikit import platform, stt  # noqa: E402
from moshikit.backends import cpu_engine  # noqa: E402
from moshikit.backends import cpu_kernels  # noqa: E402
from moshikit.backends.cpu_kernels import (ONE_PASS_FROM, Linear, full_range_exact, has_amx,  # noqa: E402
                                            onednn_int8, packed_bf16)
from moshikit.backends.cpu_step import CrossAttention, Step  # noqa: E402
from moshikit.cpu_precision import int8_supported  # noqa: E402
from moshikit.errors import BackendError  # noqa: E402
from moshikit.synthetic.stt import stt_config_json, write_stt_repo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_int8 = pytest.mark.skipif(not int8_supported(), reason="no int8 CPU engine in this torch")

#: Minimum SNR of the engine's text logits against moshi's in fp32 (teacher forced, random weights).
#: fp32: the same arithmetic in another order (fused kernels, one complex multiply for RoPE):
#: float32 rounding (2^-24, -144 dB an operation) over a few layers; measured 119-127 dB.
#: int8, two passes (batch < 8): the weights' 8-bit per-channel rounding (torch_int8: 32.8 dB),
#: plus the bf16 KV cache; measured 32.7 dB. One pass (batch >= 8): the activations' 8-bit grid
#: too (each about -35 dB of its matmul's output); measured 28.1 dB. bf16: 8-bit mantissas of
#: weights and KV cache; measured 41.7 dB. On CPUs without VNNI (AVX2 only: AMD Zen 3) fbgemm's
#: activations have 7 bits (``full_range_exact`` false: ``reduce_range``), twice the grid's step:
#: 6 dB less for one pass (measured 24.5 dB on a Zen 3); two passes carry the residual, same bound.
MIN_SNR_DB = {"fp32": 100.0, "int8": 30.0, "int8 one pass": 25.0 if full_range_exact() else 19.0, "bf16": 38.0}


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((x - ref) ** 2).sum(), 1e-30)))


def centred(x: np.ndarray) -> np.ndarray:
    """Logits less their mean per step (a shift common to all classes changes no decision)."""
    return x - x.mean(-1, keepdims=True)


@pytest.fixture(scope="module")
def random_repo(tmp_path_factory, mimi_weights):
    return write_stt_repo(tmp_path_factory.mktemp("engine") / "random", kind="random", mimi_path=mimi_weights)


def moshi_model(context: int | None = None):
    """A tiny random STT LMModel in fp32 (moshi's own init), optionally with a short context."""
    from moshi.models import loaders

    from moshikit.synthetic.lm import lm_config_of

    cfg = lm_config_of(stt_config_json())
    if context is not None:
        cfg["context"] = context
    torch.manual_seed(0)
    return loaders.get_moshi_lm(None, lm_kwargs=cfg, device="cpu", dtype=torch.float32).eval()


def tokens_seq(steps: int, batch: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(0, 64, size=(steps, batch, 1)),
                           rng.integers(0, 2048, size=(steps, batch, 32))], 2)


def moshi_logits(model, seq: np.ndarray) -> np.ndarray:
    out = []
    with torch.inference_mode(), model.streaming(seq.shape[1]):
        for t in range(seq.shape[0]):
            _, logits = model.forward_text(torch.from_numpy(seq[t])[:, :, None])
            out.append(logits[:, 0, 0].float())
    return centred(torch.stack(out).numpy())


def engine_logits(step: Step, seq: np.ndarray, pad: int = 0) -> np.ndarray:
    """The engine's logits for ``seq``, with ``pad`` more streams of other tokens beside it."""
    b = seq.shape[1]
    step.reset(b + pad)
    other = tokens_seq(seq.shape[0], pad, seed=9) if pad else None
    out = []
    for t in range(seq.shape[0]):
        x = seq[t] if not pad else np.concatenate([seq[t], other[t]])
        out.append(step(torch.from_numpy(x))[1][:b])
    return centred(torch.stack(out).numpy())


@pytest.mark.parametrize("kind, pad", [("fp32", 0), ("fp32", ONE_PASS_FROM), pytest.param("int8", 0, marks=needs_int8),
                                       pytest.param("int8 one pass", ONE_PASS_FROM, marks=needs_int8), ("bf16", 0)])
def test_logits_are_within_the_stated_bound_of_moshi_fp32(kind, pad):
    model = moshi_model()
    seq = tokens_seq(30, 2)
    ref = moshi_logits(model, seq)
    step = Step(model, kind.split()[0], torch.float32 if kind == "fp32" else torch.bfloat16)
    got = engine_logits(step, seq, pad)
    assert got.shape == ref.shape == (30, 2, 64)
    assert snr_db(ref, got) >= MIN_SNR_DB[kind]


def test_the_cache_grows_then_slides_as_moshi_context_does():
    """Past ``context`` positions a stream attends to the last ``context`` only (moshi's ring)."""
    model = moshi_model(context=70)  # the cache starts at 64 slots, grows to 70, then wraps
    seq = tokens_seq(100, 1)
    step = Step(model, "fp32")
    got = engine_logits(step, seq)
    assert step.kv[0].shape[3] == 70
    assert snr_db(moshi_logits(model, seq), got) >= MIN_SNR_DB["fp32"]
    assert int(step.lengths[0]) == 100


def test_a_cache_reserved_up_front_never_grows_and_computes_what_a_grown_one_does():
    """``reserve`` (servers, at start) allocates what growing would reach, so no step stops to grow.
    The capacity changes only the cache's strides, so the bound is fp32's against moshi, as above."""
    model = moshi_model(context=150)
    seq = tokens_seq(160, 1)  # past the context: the reserved cache wraps as the grown one does
    step = Step(model, "fp32")
    step.reset(1)
    step.reserve(10_000)  # the context at most
    assert step.kv[0].shape[3] == 150
    got = engine_logits(step, seq)  # the same batch: reset keeps the memory
    assert step.kv[0].shape[3] == 150
    assert snr_db(moshi_logits(model, seq), got) >= MIN_SNR_DB["fp32"]


def test_releasing_the_model_while_converting_changes_nothing_but_memory():
    """``release`` empties moshi's layers as they are converted (Moshi 7B then loads in ~15 GB, not
    ~22); the engine computes the same: the same kernels in the same order, so exactly equal."""
    seq = tokens_seq(12, 1)
    kept = engine_logits(Step(moshi_model(), "fp32"), seq)
    model = moshi_model()
    released = Step(model, "fp32", release=True)
    assert all(p.is_meta for p in model.transformer.layers.parameters())
    assert np.array_equal(engine_logits(released, seq), kept)


def test_a_restarted_stream_is_a_fresh_one_and_its_neighbours_go_on():
    model = moshi_model()
    step = Step(model, "fp32")
    seq = tokens_seq(24, 2)
    step.reset(2)
    out = []
    for t in range(24):
        if t == 10:  # stream 0 restarts; stream 1 has 10 frames behind it
            step.reset_slots(torch.tensor([True, False]))
        out.append(step(torch.from_numpy(seq[t]))[1])
    got = centred(torch.stack(out).numpy())
    fresh = engine_logits(Step(model, "fp32"), seq[10:, :1])
    alone = moshi_logits(model, seq[:, 1:])
    assert snr_db(fresh[:, 0], got[10:, 0]) >= MIN_SNR_DB["fp32"]
    assert snr_db(alone[:, 0], got[:, 1]) >= MIN_SNR_DB["fp32"]


def run_tokens(model, pcm: np.ndarray) -> tuple[list[int], object]:
    tokens: list[int] = []
    stream = stt.Stream(model, "x", [pcm], refine=False)
    feed = stream.feed
    stream.feed = lambda tok, pause: (tokens.append(tok), feed(tok, pause))[1]
    for _ in stt.run_streams(model, [stream], 1, chunk=5):
        pass
    return tokens, stream.finish()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory, mimi_weights, speech):
    """A scripted STT checkpoint, 4 s of audio, and moshi's LMGen (fp32) tokens and transcript."""
    script = [(8, 10), (14, 0), (20, 22), (30, 2)]
    repo = write_stt_repo(tmp_path_factory.mktemp("engine") / "scripted", kind="scripted", mimi_path=mimi_weights,
                          script=script, pause_from=26)
    pcm = np.resize(speech, 24000 * 4).astype(np.float32)
    return repo, pcm, run_tokens(stt.load_stt(str(repo), backend="torch", device="cpu", dtype="fp32"), pcm)


@pytest.mark.parametrize("dtype", ["fp32", pytest.param("int8", marks=needs_int8), "bf16"])
def test_greedy_text_is_moshi_lmgen_text_on_a_scripted_stt(scripted, dtype):
    repo, pcm, (ref_tokens, ref) = scripted
    model = stt.load_stt(str(repo), backend="cpu", dtype=dtype)
    assert (model.lm.info.backend, model.precision) == ("cpu", dtype)
    tokens, got = run_tokens(model, pcm)
    # The script's margins are wide by construction (a logit line per token, switching halfway
    # between steps), far beyond any precision here: the text is identical, token for token.
    assert len(tokens) > 40 and tokens == ref_tokens
    assert [(w.text, w.start, w.end) for w in got.words] == [(w.text, w.start, w.end) for w in ref.words]
    assert got.end_of_turn == ref.end_of_turn != []


def test_batched_streams_with_refill_give_each_file_the_text_it_gets_alone(random_repo, speech):
    model = stt.load_stt(str(random_repo), backend="cpu")
    clips = [np.resize(np.roll(speech, 7000 * i), 24000 * s).astype(np.float32) for i, s in enumerate((3, 1, 2))]

    def texts(batch: int) -> list[list[int]]:
        out: dict[str, list[int]] = {}
        streams = []
        for i, c in enumerate(clips):
            s = stt.Stream(model, str(i), [c], refine=False)
            out[str(i)] = []
            s.feed = (lambda f, o: lambda tok, pause: (o.append(tok), f(tok, pause))[1])(s.feed, out[str(i)])
            streams.append(s)
        for _ in stt.run_streams(model, streams, batch, chunk=5):
            pass
        return [out[str(i)] for i in range(len(clips))]

    alone, batched = texts(1), texts(2)  # batch 2: the 1 s file's slot is refilled with the third
    assert [len(t) for t in alone] == [len(t) for t in batched] and all(len(t) > 10 for t in alone)
    # fp32, other batch mates and a restarted slot: only float32 rounding differs (see MIN_SNR_DB).
    agree = np.mean([a == b for x, y in zip(alone, batched) for a, b in zip(x, y)])
    assert agree >= 0.95


def test_seeded_sampling_repeats(random_repo):
    from moshikit.backends.base import SamplingConfig

    lm = cpu_engine.load(random_repo, sampling=SamplingConfig(temp_text=1.0, top_k_text=20, seed=3))
    codes = np.random.default_rng(0).integers(0, 2048, size=(30, 2, 32))

    def run() -> list:
        lm.reset(2)
        return [lm.step(c)[:, 0].tolist() for c in codes]

    first = run()
    assert run() == first and len({t for step in first for t in step}) > 3


def test_transcribe_runs_on_the_engine_on_a_cpu_and_torch_stays_selectable(random_repo):
    assert platform.stt_lm(platform.Choice("torch", "cpu", "")).backend == "cpu"
    assert platform.stt_lm(platform.Choice("torch", "cuda", "")).backend == "torch"
    assert stt.load_stt(str(random_repo), device="cpu").lm.info.backend == "cpu"
    assert stt.load_stt(str(random_repo), backend="torch", device="cpu").lm.info.backend == "torch"


@needs_int8
def test_auto_precision_is_int8_from_a_real_size_checkpoint_for_every_command(random_repo, monkeypatch, mimi_weights):
    """``--dtype auto`` on the engine follows ``cpu_precision.choose`` whichever command loads it
    (translate, chat and serve load through the shared path without choosing; Hibiki ran in fp32,
    4x the bytes): int8 from a checkpoint of real size, fp32 for a small one."""
    from moshikit import cpu_precision
    from moshikit.synthetic.hibiki import write_hibiki_repo
    from moshikit.translate import load_translator

    assert cpu_engine.load(random_repo).info.precision == "fp32"  # a tiny checkpoint
    assert cpu_engine.engine_format("bf16", None) == "bf16"  # --dtype forces
    monkeypatch.setattr(cpu_precision, "INT8_MIN_BYTES", 1)  # every checkpoint is of real size
    assert cpu_engine.load(random_repo).info.precision == "int8"
    hibiki = write_hibiki_repo(random_repo.parent / "hibiki-auto", mimi_path=mimi_weights)
    assert load_translator(str(hibiki), backend="cpu").lm.info.precision == "int8"
    with pytest.raises(BackendError, match="int8, bf16 or fp32"):
        cpu_engine.engine_format("fp16")


def test_what_the_engine_cannot_run_is_refused_with_a_hint(tmp_path, mimi_weights, random_repo):
    from moshikit.synthetic.tts import write_tts_repo

    # Kyutai TTS runs on the engine through `speak -b cpu` (tests/backends/test_cpu_tts.py), not as a bare LM:
    # its conditions (a speaker, guidance strengths) come from the TTS state machine.
    tts = write_tts_repo(tmp_path / "tts", mimi_path=mimi_weights)
    with pytest.raises(BackendError, match="conditioned models of type 'tts'") as exc:
        cpu_engine.load(tts)
    assert "--backend torch" in exc.value.hint
    with pytest.raises(BackendError, match="CPU"):
        cpu_engine.load(random_repo, device="cuda")


@needs_int8
def test_int8_kernel_choice_follows_the_batch_and_rows_stay_independent():
    torch.manual_seed(0)
    fp = torch.nn.Linear(256, 384, bias=True)
    lin = Linear(fp, "int8")
    x = torch.randn(ONE_PASS_FROM, 256)
    x[0] *= 30.0  # a loud row beside quiet ones
    for batch, two in ((1, True), (ONE_PASS_FROM - 1, True), (ONE_PASS_FROM, False)):
        lin.set_batch(batch)
        assert lin.two_pass is two
    with torch.no_grad():
        ref = fp(x)
        full = lin(x)
        alone = torch.cat([lin(x[i : i + 1]) for i in range(len(x))])
    # One pass: rows are scaled each on its own, so a row's result does not depend on its
    # neighbours beyond float rounding; the bias is added once, after the row scales.
    assert torch.allclose(full, alone, rtol=1e-5, atol=1e-5)
    assert snr_db(ref.numpy(), full.numpy()) >= MIN_SNR_DB["int8 one pass"]  # 8-bit weights, 8- or 7-bit activations


def fake_flags(monkeypatch, add=frozenset(), remove=frozenset()) -> None:
    """This CPU's flags with ``add`` added and ``remove`` taken away, as the engine's kernel choices
    read them."""
    flags = frozenset((cpu_kernels.cpu_flags() | set(add)) - set(remove))
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: flags)


def fake_amx(monkeypatch, amx: bool) -> None:
    """This CPU's flags with AMX added or taken away."""
    if amx:
        fake_flags(monkeypatch, add={"amx_int8", "amx_bf16"})
    else:
        fake_flags(monkeypatch, remove={"amx_int8", "amx_bf16", "amx_tile"})


def fake_bf16_products(monkeypatch, native: bool) -> None:
    """This CPU's flags with bf16 products (AVX-512 BF16) added, or every bf16 kernel (AVX-512 BF16,
    AMX) taken away: an AVX2-only CPU's."""
    if native:
        fake_flags(monkeypatch, add={"avx512_bf16"})
    else:
        fake_flags(monkeypatch, remove={"avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})


@needs_int8
@pytest.mark.skipif(not onednn_int8(), reason="no exact 8-bit oneDNN int8 kernel on this CPU (fbgemm runs)")
@pytest.mark.parametrize("amx", [True, False])
def test_int8_runs_onednn_with_two_passes_below_eight_streams(monkeypatch, amx):
    """On VNNI/AMX CPUs the int8 layers run two passes below ONE_PASS_FROM streams (the
    residual's rows beside the rows), one pass from it; each row quantised alone in both. With
    AMX oneDNN's inner product runs both; without it (AMD EPYC), fbgemm's below ONE_PASS_FROM,
    until a batch that large first runs: oneDNN's weights then replace fbgemm's (one copy)."""
    fake_amx(monkeypatch, amx)
    torch.manual_seed(0)
    fp = torch.nn.Linear(256, 384, bias=True)
    lin = Linear(fp, "int8")
    assert (lin.onednn is not None) is amx and (lin.int8 is None) is amx
    x = torch.randn(ONE_PASS_FROM - 1, 256)
    x[0] *= 30.0
    with torch.no_grad():
        ref = fp(x)
        lin.set_batch(ONE_PASS_FROM - 1)
        two = lin(x)
        assert (lin.onednn is not None) is amx
        lin.set_batch(ONE_PASS_FROM)
        one = lin(x)
        assert lin.onednn is not None
        assert lin.int8 is None  # one copy of the weights
        lin.set_batch(ONE_PASS_FROM - 1)  # oneDNN's two passes from now on, whatever the CPU
        back = lin(x)
    assert snr_db(ref.numpy(), back.numpy()) >= 40.0
    # Two passes leave the weights' 8-bit rounding alone (torch_int8: ~33-42 dB here); one pass
    # adds the activations' 8-bit grid (~-38 dB of each product): a few dB lower.
    assert snr_db(ref.numpy(), two.numpy()) >= 40.0
    assert 25.0 <= snr_db(ref.numpy(), one.numpy()) < snr_db(ref.numpy(), two.numpy())


def test_packed_bf16_layers_multiply_as_plain_bf16_weights():
    """bf16 layers built with ``pack`` (the depth transformer's) keep their weights in oneDNN's own
    layout where PyTorch can (``packed_bf16``), laid out once, not on every call; the others stay
    plain on a CPU with AMX, and are laid out too without it. The product is plain bf16's either way."""
    torch.manual_seed(0)
    fp = torch.nn.Linear(320, 384, bias=True)
    packed, plain_layer = Linear(fp, "bf16", pack=True), Linear(fp, "bf16")
    assert packed.weight.is_mkldnn is packed_bf16()
    assert plain_layer.weight.is_mkldnn is (packed_bf16() and not has_amx())
    w = fp.weight.detach().bfloat16()
    for rows in (1, 5):
        x = torch.randn(rows, 320)
        with torch.no_grad():
            got = packed(x)
            plain = torch.nn.functional.linear(x.bfloat16(), w).float() + fp.bias.detach()
        # Both round the sum of the same bf16 products to bf16 (2^-8 of the absolute sum each),
        # in orders that may differ (fp32: 320 terms x 2^-24): two output roundings bound it.
        budget = (x.abs().bfloat16().float() @ w.abs().float().T) * (2 * 2.0**-8 + 320 * 2.0**-24)
        assert ((got - plain).abs() <= budget + 1e-6).all()


@pytest.mark.parametrize("amx", [True, False])
def test_attention_over_bf16_keys_matches_the_fused_kernel_on_every_cpu(monkeypatch, amx):
    """``attend``: PyTorch's fused attention, or without AMX two batched matmuls around a float32
    softmax; each stream sees only its own filled keys (the mask)."""
    fake_amx(monkeypatch, amx)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, n, 64, generator=g).bfloat16() for n in (1, 40, 40))
    mask = (torch.arange(40) < torch.tensor([40, 17, 1])[:, None])[:, None, None, :]
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), mask)
    got = cpu_kernels.attend(q, k, v, mask).float()
    # bf16 both ways: the output and the probabilities rounded to 8 bits (2^-9 of max |v| each),
    # and without AMX the scores too (|score| < ~5 here: ~1% on the probabilities): within 3%.
    assert (got - ref).abs().max() <= 0.03 * v.abs().max()
    torch.testing.assert_close(got[2, :, 0], v[2, :, 0].float(), rtol=0, atol=0)  # one key: itself


@pytest.mark.parametrize("native", [True, False])
def test_bf16_caches_only_where_the_cpu_multiplies_bf16(monkeypatch, random_repo, native):
    """Without AVX-512 BF16 or AMX (AVX2-only CPUs: AMD Zen 2 and 3) PyTorch multiplies bf16 in a
    generic loop: the engine's KV cache is float32 there, and its bf16 weights (the text head) are
    multiplied in float32 from ONE_PASS_FROM streams, their bf16 values kept; with bf16 products,
    bf16 throughout. fp32 weights keep everything in float32 on every CPU."""
    fake_bf16_products(monkeypatch, native)
    lm = cpu_engine.load(random_repo, dtype="fp32")
    lm.reset(2)
    assert lm.engine.kv[0].dtype == torch.float32
    lm = cpu_engine.load(random_repo, dtype="bf16")
    lm.reset(2)
    assert lm.engine.kv[0].dtype == (torch.bfloat16 if native else torch.float32)
    head = lm.engine.text_head
    if head.weight.is_mkldnn:  # laid out once for oneDNN: its bf16 kernel at every batch
        assert native
        return
    values = head.weight.float().clone()
    assert head.weight.dtype == torch.bfloat16
    lm.reset(ONE_PASS_FROM)
    assert head.weight.dtype == (torch.bfloat16 if native else torch.float32)
    assert torch.equal(head.weight.float(), values)  # the same bf16 values, exactly
    lm.reset(1)
    assert head.weight.dtype == torch.bfloat16


def test_a_conditions_keys_and_values_are_bf16_products_on_every_cpu(monkeypatch):
    """Kyutai TTS's cross-attention keys and values of its condition, computed once per stream in
    the checkpoint's bf16 as moshi computes them. Without bf16 products (AVX2-only CPUs) the same
    bf16 values are multiplied in float32 and the sums rounded to bf16: the bf16 product's values,
    up to what the two kernels' float32 sums (added in other orders) and their bf16 rounding allow."""
    torch.manual_seed(0)
    cross = CrossAttention.__new__(CrossAttention)
    torch.nn.Module.__init__(cross)
    cross.heads, cross.kv_weight = 4, (torch.randn(2 * 64, 64) * 0.1).bfloat16()
    src = torch.randn(3, 20, 64)
    kvs, products = {}, []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w: products.append(w.dtype) or linear(x, w))
    for native in (True, False):
        fake_bf16_products(monkeypatch, native)
        cross.set_source(src, None, torch.float32)
        kvs[native] = cross.kv
    assert products == [torch.bfloat16, torch.float32]  # no bf16 product where the CPU has no bf16 kernel
    assert kvs[False].shape == (2, 3, 4, 20, 16) and kvs[False].dtype == torch.float32
    assert torch.equal(kvs[False], kvs[False].bfloat16().float())  # rounded to bf16, as the bf16 product
    # The two float32 sums of 64 products differ by at most 64 * 2^-24 of the sum of the products'
    # magnitudes each (twice that apart); rounded to bf16 (8 significant bits) each moves by at most
    # half a step, 2^-8 of its magnitude.
    mag = linear(src.bfloat16().float().abs(), cross.kv_weight.float().abs())
    mag = mag.view(3, 20, 2, 4, 16).permute(2, 0, 3, 1, 4)
    bound = (kvs[True].abs() + kvs[False].abs()) * 2.0**-8 + mag * 2 * 64 * 2.0**-24
    assert bool(((kvs[False] - kvs[True]).abs() <= bound).all())
