"""encode/decode as a library: parity with moshi's MimiModel, batching, chunking, resume, checks."""

import tracemalloc

import numpy as np
import pytest
from deps import ONNX_IS_CORE
import soundfile as sf
import torch

from moshikit import codec as ops
from moshikit import filejobs
from moshikit.backends.base import CodecInfo
from moshikit.errors import TokenFileError
from moshikit.hub import Weights
from moshikit.platform import Choice
from moshikit.tokens import read_tokens


@pytest.fixture(scope="module")
def moshi_mimi(mimi_weights):
    """moshi's own MimiModel, loaded the way its README shows: the reference."""
    from moshi.models import loaders

    return loaders.get_mimi(str(mimi_weights), device="cpu", num_codebooks=8)


def reference_codes(mimi, pcm):
    with torch.inference_mode():
        return mimi.encode(torch.from_numpy(np.ascontiguousarray(pcm))[None, None]).numpy()[0]


def encode_one(tmp_path, codec, pcm, name="a", **opts):
    from conftest import _write_wav as write_wav

    src = write_wav(tmp_path / f"{name}.wav", pcm)
    jobs, failed = filejobs.plan([str(src)], str(tmp_path / "out"), ".mimi")
    (res,) = list(ops.encode_files(jobs, codec, ops.EncodeOptions(**opts)))
    assert res.status == "done", res.error
    return read_tokens(res.output)


def test_codes_follow_the_audio(moshi_mimi, speech):
    codes = reference_codes(moshi_mimi, speech[: 24000 * 4])
    assert codes.shape == (8, 50)
    # A fitted checkpoint: speech gives many distinct codes, silence gives others.
    assert len(np.unique(codes[0])) >= 40
    silence = reference_codes(moshi_mimi, np.zeros(24000 * 2, np.float32))
    assert len(np.unique(silence[0, -10:])) == 1  # steady input, steady code


def test_encode_matches_moshi_reference(tmp_path, moshi_mimi, torch_codec, speech):
    clip = speech[: 24000 * 6 + 777]
    t = encode_one(tmp_path, torch_codec, clip)
    want = reference_codes(moshi_mimi, clip)
    # Exact on some machines; elsewhere kernels of other shapes round differently and flip a
    # rare near-tie (1 of 2504 codes with AVX-512 here; 7 with AVX2 forced). A flip in codebook k
    # changes the residual the codebooks after it quantize, so the rest of that frame may follow;
    # frames stay independent (the encoder never sees codes). So: count frames, allow 1%.
    # Without the widened KV cache, chunks past 10 s lose context and far more flip.
    assert (t.codes[0][0] == want[0]).mean() >= 0.99
    assert (t.codes[0] == want).all(axis=0).mean() >= 0.99
    assert t.header.num_samples == len(clip)
    assert t.header.frames == -(-len(clip) // 1920)


def test_long_file_chunked_equals_whole_file(tmp_path, moshi_mimi, torch_codec, speech):
    # 25 s: three streaming chunks, and past the transformer's 10 s context.
    clip = np.concatenate([speech, speech[: 24000 * 10]])[: 24000 * 25]
    t = encode_one(tmp_path, torch_codec, clip)
    want = reference_codes(moshi_mimi, clip)
    # Exact on some machines; elsewhere kernels of other shapes round differently and flip a
    # rare near-tie (1 of 2504 codes with AVX-512 here; 7 with AVX2 forced). A flip in codebook k
    # changes the residual the codebooks after it quantize, so the rest of that frame may follow;
    # frames stay independent (the encoder never sees codes). So: count frames, allow 1%.
    # Without the widened KV cache, chunks past 10 s lose context and far more flip.
    assert (t.codes[0][0] == want[0]).mean() >= 0.99
    assert (t.codes[0] == want).all(axis=0).mean() >= 0.99


def test_batch_of_unequal_lengths_equals_alone(tmp_path, moshi_mimi, torch_codec, speech, write_wav, monkeypatch):
    clips = [speech[: 24000 * 2], speech[24000 * 3 : 24000 * 9 + 1000], speech[: 24000 * 7 + 5]]
    paths = [write_wav(tmp_path / f"in/{i}.wav", c) for i, c in enumerate(clips)]
    jobs, _ = filejobs.plan([str(tmp_path / "in")], str(tmp_path / "b"), ".mimi")
    monkeypatch.setattr(torch_codec.backend, "batch_gain", True)  # as on a GPU
    calls = []
    monkeypatch.setattr(torch_codec.backend, "encode", lambda pcm, f=torch_codec.backend.encode: calls.append(pcm.shape) or f(pcm))
    results = list(ops.encode_files(jobs, torch_codec, ops.EncodeOptions(batch_size=8)))
    assert calls == [(3, 24000 * 7 + 5)]  # one padded batch
    assert [r.status for r in results] == ["done"] * 3
    for p, clip in zip(paths, clips):
        alone = reference_codes(moshi_mimi, clip)
        got = read_tokens(tmp_path / "b" / (p.stem + ".mimi")).codes[0]
        # Batched kernels may round a rare near-tie the other way (1 of 608
        # with torch 2.9.1 here); zero padding that leaked into a clip would change many.
        assert (got[0] == alone[0]).mean() >= 0.98
        assert (got == alone).mean() >= 0.995


def test_stereo_split_encodes_each_channel(tmp_path, moshi_mimi, torch_codec, speech):
    stereo = np.stack([speech[: 24000 * 3], speech[24000 * 4 : 24000 * 7]])
    t = encode_one(tmp_path, torch_codec, stereo, channels="split")
    assert t.codes.shape == (2, 8, 38)
    np.testing.assert_array_equal(t.codes[1], reference_codes(moshi_mimi, stereo[1]))


def test_round_trip_length_and_mismatch_checks(tmp_path, moshi_mimi, torch_codec, speech):
    clip = speech[: 24000 * 3 + 123]
    t = encode_one(tmp_path, torch_codec, clip)
    jobs, _ = filejobs.plan([str(tmp_path / "out")], str(tmp_path / "dec"), ".wav", extensions=filejobs.TOKEN_EXTENSIONS)
    (res,) = list(ops.decode_files(jobs, lambda k: torch_codec, ops.DecodeOptions()))
    assert res.status == "done", res.error
    audio, sr = sf.read(res.output, dtype="float32")
    assert sr == 24000 and len(audio) == len(clip)
    # Same output as moshi's decode of the same codes (16-bit wav quantisation aside).
    with torch.inference_mode():
        ref = moshi_mimi.decode(torch.from_numpy(t.codes)).numpy()[0, 0, : len(clip)]
    assert np.abs(audio - np.clip(ref, -1, 1)).max() < 2e-4
    # Tokens made with other weights are refused unless forced.
    t.header.codec["sha256"] = "0" * 64
    with pytest.raises(TokenFileError, match="other Mimi weights"):
        ops.check_tokens(t, torch_codec, "x.mimi")
    ops.check_tokens(t, torch_codec, "x.mimi", force=True)
    t.header.num_codebooks = 4
    with pytest.raises(TokenFileError, match="4 codebooks"):
        ops.check_tokens(t, torch_codec, "x.mimi")


def test_resume_skips_finished_and_redoes_partial(tmp_path, torch_codec, speech, write_wav):
    for i in range(3):
        write_wav(tmp_path / f"in/{i}.wav", speech[24000 * i : 24000 * (i + 2)])
    jobs, _ = filejobs.plan([str(tmp_path / "in")], str(tmp_path / "o"), ".mimi")
    first = list(ops.encode_files(jobs[:2], torch_codec))
    assert [r.status for r in first] == ["done", "done"]
    # An interrupted write leaves only a hidden partial file and no output.
    (tmp_path / "o" / ".2.mimi.partial-999").write_bytes(b"half")
    done_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "o").glob("*.mimi")}
    again = list(ops.encode_files(jobs, torch_codec))
    assert [r.status for r in again] == ["skipped", "skipped", "done"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "o").glob("[01].mimi")} == done_before
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["0.mimi", "1.mimi", "2.mimi"]
    # A corrupt output counts as not done.
    (tmp_path / "o" / "1.mimi").write_bytes(b"junk")
    statuses = {r.source[-5:]: r.status for r in ops.encode_files(jobs, torch_codec)}
    assert statuses == {"0.wav": "skipped", "1.wav": "done", "2.wav": "skipped"}


class CountingCodec:
    """A stand-in codec that does no maths, to measure the pipeline's own memory."""

    batch_gain = False
    info = CodecInfo(backend="fake", device="cpu")

    def __init__(self):
        self.samples = 0

    def reset_stream(self, batch_size=1):
        pass

    def encode_step(self, pcm):
        self.samples += pcm.shape[-1]
        return np.full((pcm.shape[0], 8, pcm.shape[-1] // 1920), 7, np.int64)

    def decode_step(self, codes):
        return np.zeros((codes.shape[0], codes.shape[-1] * 1920), np.float32)

    encode = encode_step
    decode = decode_step


def test_an_hour_streams_with_flat_memory(tmp_path):
    hour = 3600 * 24000
    src = tmp_path / "hour.wav"
    with sf.SoundFile(src, "w", 24000, 1, subtype="PCM_16") as f:
        block = (0.1 * np.sin(np.arange(24000 * 60) / 10)).astype(np.float32)
        for _ in range(60):
            f.write(block)
    fake = CountingCodec()
    codec = ops.Codec(fake, Weights(src), Choice("fake", "cpu", "test"))
    jobs, _ = filejobs.plan([str(src)], str(tmp_path / "o"), ".mimi")
    tracemalloc.start()
    (res,) = list(ops.encode_files(jobs, codec))
    _, peak = tracemalloc.get_traced_memory()
    assert res.status == "done", res.error
    assert fake.samples == hour
    assert peak < 60e6, f"peak {peak / 1e6:.0f} MB while the audio is {hour * 4 / 1e6:.0f} MB as float32"
    tracemalloc.reset_peak()
    jobs, _ = filejobs.plan([res.output], str(tmp_path / "d"), ".wav", extensions=filejobs.TOKEN_EXTENSIONS)
    (dres,) = list(ops.decode_files(jobs, lambda k: codec, ops.DecodeOptions(force=True)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert dres.status == "done", dres.error
    assert sf.info(dres.output).frames == hour
    assert peak < 60e6


@pytest.fixture(scope="module")
def onnx_files_codec(mimi_weights):
    from moshikit.backends import registry

    if not registry.probe("codec", "onnx")[0]:
        if ONNX_IS_CORE:
            pytest.fail("onnxruntime is a core dependency on x86 and does not load")
        pytest.skip("onnxruntime not installed")
    codec = ops.load_codec("onnx", mimi_weight=mimi_weights)
    if codec.backend.parallel_streams < 2:
        pytest.skip("one core: files run one at a time")
    return codec


def test_parallel_files_equal_one_at_a_time(tmp_path, onnx_files_codec, speech, write_wav, monkeypatch):
    """On a multi-core CPU the onnx backend encodes several files at once, one thread
    each; every token file is byte-identical to encoding the files one by one."""
    import threading

    for i, seconds in enumerate((0.5, 12.5, 2.0, 3.3, 1.0)):
        write_wav(tmp_path / f"in/{i}.wav", np.resize(np.roll(speech, 9973 * i), int(24000 * seconds)))
    (tmp_path / "in" / "bad.wav").write_bytes(b"RIFF not really")
    backend = onnx_files_codec.backend
    threads = set()
    real_open = backend.open_encoder
    monkeypatch.setattr(backend, "open_encoder", lambda *a, **k: threads.add(threading.current_thread().name)
                        or real_open(*a, **k))
    jobs, _ = filejobs.plan([str(tmp_path / "in")], str(tmp_path / "par"), ".mimi")
    par = {r.source.rsplit("/", 1)[1]: r for r in ops.encode_files(jobs, onnx_files_codec)}
    assert len(threads) >= 2 and all(t.startswith("moshikit-encode") for t in threads)
    assert par["bad.wav"].status == "failed" and sum(r.status == "done" for r in par.values()) == 5
    monkeypatch.setattr(type(backend), "parallel_streams", property(lambda self: 1))
    jobs, _ = filejobs.plan([str(tmp_path / "in")], str(tmp_path / "seq"), ".mimi")
    seq = list(ops.encode_files(jobs, onnx_files_codec))
    assert [r.source for r in seq] == sorted(r.source for r in seq)  # one at a time keeps the order
    for i in range(5):
        par_file, seq_file = tmp_path / "par" / f"{i}.mimi", tmp_path / "seq" / f"{i}.mimi"
        assert read_tokens(par_file).header.frames == -(-int(24000 * (0.5, 12.5, 2.0, 3.3, 1.0)[i]) // 1920)
        # As the README says: byte-identical files (same onnx graph and thread count per stream).
        assert par_file.read_bytes() == seq_file.read_bytes()


def test_parallel_interrupted_then_resumed(tmp_path, onnx_files_codec, speech, write_wav):
    for i in range(6):
        write_wav(tmp_path / f"in/{i}.wav", speech[12000 * i : 12000 * i + 36000])
    jobs, _ = filejobs.plan([str(tmp_path / "in")], str(tmp_path / "o"), ".mimi")
    gen = ops.encode_files(jobs, onnx_files_codec)
    first = [next(gen), next(gen)]
    gen.close()  # as on Ctrl-C: running files finish, queued ones never start
    assert all(r.status == "done" for r in first)
    outs = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert all(not n.startswith(".") for n in outs) and 2 <= len(outs) < 6  # nothing half written
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "o").glob("*.mimi")}
    again = list(ops.encode_files(jobs, onnx_files_codec))
    assert sum(r.status == "skipped" for r in again) == len(outs)
    assert sum(r.status == "done" for r in again) == 6 - len(outs)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
