"""8-bit weights on a CPU keep the output: tokens of a scripted STT, logits of random weights,
and a stream's result does not depend on its batch mates."""

from __future__ import annotations

import numpy as np
import pytest

import torch  # noqa: E402  (a core dependency)

from moshikit import cpu_precision, stt  # noqa: E402
from moshikit.backends import torch_int8, torch_lm  # noqa: E402
from moshikit.backends.torch_int8 import Int8Linear  # noqa: E402
from moshikit.cpu_precision import int8_supported  # noqa: E402
from moshikit.synthetic.stt import write_stt_repo  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not int8_supported(), reason="no int8 CPU engine in this torch")]


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((x - ref) ** 2).sum(), 1e-30)))


def test_int8_linear_is_close_and_rows_do_not_depend_on_batch_mates():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 384, bias=False)
    q = Int8Linear(lin)
    x = torch.randn(5, 256)
    x[0] *= 30.0  # a loud row next to quiet ones
    x[3] = 0.0
    with torch.no_grad():
        ref, out = lin(x), q(x)
        alone = torch.cat([q(x[i : i + 1]) for i in range(5)])
    assert torch.equal(out, alone)  # bit-identical whatever shares the batch
    for i in (0, 1, 2, 4):
        assert snr_db(ref[i].numpy(), out[i].numpy()) > 30
    assert torch.count_nonzero(out[3]) == 0
    assert q.weight.numel() == 0  # no fp32 copy of the weights is kept


@pytest.fixture(scope="module")
def random_repo(tmp_path_factory, mimi_weights):
    return write_stt_repo(tmp_path_factory.mktemp("int8") / "random", kind="random", mimi_path=mimi_weights)


def _logits(lm, seq: np.ndarray) -> np.ndarray:
    """Text logits of every step of ``seq`` [T, B, 1 + K] (text token, then audio codes), fed to
    the model as they are (teacher forcing: both precisions see the same history), centred per
    step (a shift common to all classes changes no decision)."""
    lm.close()
    out = []
    with torch.inference_mode(), lm.model.streaming(seq.shape[1]):
        for t in range(seq.shape[0]):
            _, logits = lm.model.forward_text(torch.from_numpy(seq[t])[:, :, None])
            out.append(logits.float())
    x = torch.cat(out).numpy()
    return x - x.mean(-1, keepdims=True)


def test_the_compiled_arithmetic_is_the_eager_one(monkeypatch):
    """The layer's activations run as one TorchScript call (``torch_int8.scripted``); the same
    function run from Python, call by call, gives the same bits (same kernels, same order, one
    process), for both passes, any leading shape, and bf16 input."""
    torch.manual_seed(1)
    q = Int8Linear(torch.nn.Linear(64, 96, bias=False))
    with torch.no_grad():
        for x in (torch.randn(1, 64), torch.randn(2, 3, 64), torch.randn(4, 64).bfloat16()):
            compiled = q(x), q.one_pass(x)
            monkeypatch.setattr(torch_int8, "EAGER", True)
            eager = q(x), q.one_pass(x)
            monkeypatch.setattr(torch_int8, "EAGER", False)
            assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
            assert compiled[0].shape == (*x.shape[:-1], 96) and compiled[0].dtype == x.dtype
    assert isinstance(torch_int8.scripted(torch_int8._two_pass), torch.jit.ScriptFunction)


def test_random_weights_logits_within_30_db_of_fp32(random_repo):
    ref = torch_lm.load(random_repo, device="cpu", dtype="fp32", sampling=None)
    q8 = torch_lm.load(random_repo, device="cpu", dtype="int8", sampling=None)
    assert (ref.info.precision, q8.info.precision) == ("fp32", "int8")
    rng = np.random.default_rng(1)
    seq = np.concatenate([rng.integers(0, 64, size=(40, 2, 1)), rng.integers(0, 2048, size=(40, 2, 32))], 2)
    lr, lq = _logits(ref, seq), _logits(q8, seq)
    assert lr.shape == lq.shape == (80, 1, 1, 64)
    assert snr_db(lr, lq) >= 30.0  # measured 32.8 dB on the Xeon
    # bf16 keeps 8 bits of mantissa (~48 dB for one rounding); a few layers of matmuls and norms
    # add their errors up: the same 30 dB bound (measured 34.7 dB on the Xeon).
    bf = torch_lm.load(random_repo, device="cpu", dtype="bf16", sampling=None)
    assert bf.info.precision == "bf16"
    assert snr_db(lr, _logits(bf, seq)) >= 30.0


def test_scripted_stt_text_equals_fp32_in_int8(tmp_path, mimi_weights, speech):
    script = [(8, 10), (14, 0), (20, 22), (30, 2)]
    repo = write_stt_repo(tmp_path / "scripted", kind="scripted", mimi_path=mimi_weights, script=script,
                          pause_from=26)
    pcm = np.resize(speech, 24000 * 4).astype(np.float32)
    got = {}
    for dtype in ("fp32", "int8"):
        model = stt.load_stt(str(repo), backend="torch", device="cpu", dtype=dtype)
        assert model.precision == dtype and model.describe()["precision"] == dtype
        tokens: list[int] = []
        stream = stt.Stream(model, "x", [pcm], refine=False)
        orig = stream.feed
        stream.feed = lambda tok, pause: (tokens.append(tok), orig(tok, pause))[1]
        for _ in stt.run_streams(model, [stream], 1, chunk=5):
            pass
        got[dtype] = (tokens, stream.finish())
    (t32, tr32), (t8, tr8) = got["fp32"], got["int8"]
    assert len(t32) == len(t8) > 40
    assert np.mean(np.equal(t32, t8)) >= 0.99
    assert [(w.text, w.start) for w in tr8.words] == [(w.text, w.start) for w in tr32.words]
    assert tr8.end_of_turn == tr32.end_of_turn != []


def test_auto_precision_is_int8_for_large_checkpoints_on_a_cpu_only(tmp_path):
    big = tmp_path / "model.safetensors"
    with open(big, "wb") as f:
        f.truncate(cpu_precision.INT8_MIN_BYTES)  # sparse: no disk used
    small = tmp_path / "tiny.safetensors"
    small.write_bytes(b"x" * 1000)
    assert cpu_precision.choose(None, "cpu", big).dtype == "int8"
    assert "int8" in cpu_precision.choose("auto", "cpu", big).reason
    assert cpu_precision.choose(None, "cpu", small).dtype is None  # tiny models: fp32 as before
    assert cpu_precision.choose(None, "cuda", big).dtype is None
    assert cpu_precision.choose(None, "cpu", big, backend="mlx").dtype is None
    assert cpu_precision.choose("fp32", "cpu", big).dtype == "fp32"  # --dtype forces
    # `-b cpu` with no --device resolves to device "auto": the CPU engine is on the CPU all the same
    # (it ran fp32 there before, so `transcribe -b cpu` and `bench stt -b cpu` read 4x the bytes).
    assert cpu_precision.choose(None, "auto", big, backend="cpu").dtype == "int8"
    assert cpu_precision.choose(None, "auto", big, backend="torch").dtype is None  # torch may pick a GPU


def test_default_transcribe_precision_of_a_tiny_checkpoint_is_unchanged(random_repo):
    model = stt.load_stt(str(random_repo), backend="torch", device="cpu")
    assert model.precision == "fp32"


def test_int8_is_refused_off_the_cpu(random_repo):
    from moshikit.errors import BackendError

    with pytest.raises(BackendError, match="CPU only"):
        torch_lm.TorchLM(torch_lm.resolve_repo(random_repo), device="meta", dtype="int8")


def test_info_says_which_precision_transcribe_uses_on_this_cpu(capsys, monkeypatch):
    import json

    from moshikit.cli.app import main

    monkeypatch.setattr(cpu_precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni", "amx_int8"}))
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    if data["platform"]["cuda"] or data["platform"]["apple_silicon"]:
        pytest.skip("a GPU machine: transcribe runs there")
    p = data["cpu_precision"]
    assert p["kernels"] == ["AMX int8", "AVX-512 VNNI", "AVX2"] and p["int8_kernels"] is True
    assert p["transcribe"].startswith("int8 weights for checkpoints of 200 MB")


def test_a_onednn_cap_takes_the_flags_above_it_away():
    """``ONEDNN_MAX_CPU_ISA`` (the test command's passes on other kernel sets) caps the flags the
    engine's kernel choices read as it caps oneDNN's own kernels: an AVX2 cap leaves an AVX2 CPU."""
    xeon = frozenset({"avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "amx_tile"})
    assert cpu_precision.capped(xeon, "AVX2") == {"avx2"}
    assert cpu_precision.capped(xeon, "AVX512_CORE_BF16") == {"avx2", "avx_vnni", "avx512f", "avx512_vnni",
                                                              "avx512_bf16"}
    assert cpu_precision.capped(xeon, "avx512_core") == {"avx2", "avx_vnni", "avx512f"}
    assert cpu_precision.capped(xeon, None) == cpu_precision.capped(xeon, "ALL") == xeon
