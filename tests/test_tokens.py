import json
import struct
import zlib

import numpy as np
import pytest

from moshikit.errors import TokenFileError
from moshikit.tokens import (MAGIC, TokenHeader, decode_mimi_bytes, encode_mimi_bytes, pack_codes, read_tokens,
                             unpack_codes, write_tokens)


def header_for(codes, **kw):
    c, k, f = codes.shape
    return TokenHeader(num_codebooks=k, frames=f, channels=c, num_samples=f * 1920, **kw)


@pytest.mark.parametrize("shape,card", [((1, 8, 50), 2048), ((2, 32, 7), 2048), ((1, 1, 1), 2048),
                                        ((1, 3, 5), 1024), ((1, 8, 0), 2048)])
def test_pack_roundtrip(shape, card):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, card, size=shape)
    bits = TokenHeader(num_codebooks=1, frames=0, cardinality=card).bits
    data = pack_codes(codes, bits)
    assert len(data) == (codes.size * bits + 7) // 8
    np.testing.assert_array_equal(unpack_codes(data, shape, bits), codes)


def test_extreme_values_and_bit_order():
    codes = np.array([[[0, 2047], [2047, 0]]])  # K=2, F=2 -> frame-major: 0, 2047, 2047, 0
    data = pack_codes(codes, 11)
    bits = "".join(f"{b:08b}" for b in data)[:44]
    assert bits == "00000000000" + "11111111111" * 2 + "00000000000"


def test_code_too_large_is_refused():
    with pytest.raises(TokenFileError):
        pack_codes(np.array([[[2048]]]), 11)


def test_mimi_file_size_is_nominal_bitrate(tmp_path):
    # 8 codebooks x 12.5 Hz x 11 bits = 1.1 kbps: 10 s is 1375 bytes of payload.
    codes = np.random.default_rng(1).integers(0, 2048, size=(1, 8, 125))
    h = header_for(codes, codec={"sha256": "ab" * 32}, source={"name": "x.wav"})
    p = write_tokens(tmp_path / "x.mimi", codes, h)
    raw = p.read_bytes()
    hlen = struct.unpack_from("<I", raw, 12)[0]
    assert len(raw) == 16 + hlen + 1375 + 4
    assert raw[:8] == MAGIC
    t = read_tokens(p)
    np.testing.assert_array_equal(t.codes, codes)
    assert t.header.codec["sha256"] == "ab" * 32 and t.header.source["name"] == "x.wav"


def test_every_truncation_is_detected(tmp_path):
    codes = np.random.default_rng(2).integers(0, 2048, size=(1, 8, 20))
    data = encode_mimi_bytes(codes, header_for(codes))
    for cut in range(0, len(data), 7):
        with pytest.raises(TokenFileError, match="truncated|not a .mimi|corrupt"):
            decode_mimi_bytes(data[:cut])


def test_every_payload_bitflip_is_detected():
    codes = np.random.default_rng(3).integers(0, 2048, size=(1, 8, 20))
    data = bytearray(encode_mimi_bytes(codes, header_for(codes)))
    for pos in range(16, len(data), 5):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(TokenFileError):
            decode_mimi_bytes(bytes(bad))


def test_trailing_garbage_and_version(tmp_path):
    codes = np.zeros((1, 8, 3), dtype=np.int64)
    data = encode_mimi_bytes(codes, header_for(codes))
    with pytest.raises(TokenFileError, match="trailing"):
        decode_mimi_bytes(data + b"\0")
    v2 = bytearray(data)
    v2[8] = 2
    with pytest.raises(TokenFileError, match="version 2"):
        decode_mimi_bytes(bytes(v2))


def test_header_with_bad_sizes_is_refused():
    head = json.dumps({"num_codebooks": -1, "frames": 3}).encode()
    body = struct.pack("<8sHHI", MAGIC, 1, 0, len(head)) + head
    with pytest.raises(TokenFileError, match="header"):
        decode_mimi_bytes(body + struct.pack("<I", zlib.crc32(body)))


def test_npy_roundtrip_with_metadata(tmp_path):
    codes = np.random.default_rng(4).integers(0, 2048, size=(1, 8, 30))
    p = write_tokens(tmp_path / "a.npy", codes, header_for(codes, backend="torch"), fmt="npy")
    arr = np.load(p, allow_pickle=False)
    assert arr.dtype == np.int16 and arr.shape == (8, 30)
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["num_codebooks"] == 8 and meta["backend"] == "torch"
    t = read_tokens(p)
    np.testing.assert_array_equal(t.codes, codes)


def test_pickled_npy_is_never_loaded(tmp_path):
    p = tmp_path / "evil.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TokenFileError):
        read_tokens(p)


def test_not_a_token_file(tmp_path):
    p = tmp_path / "x.mimi"
    p.write_text("hello")
    with pytest.raises(TokenFileError, match="not a token file"):
        read_tokens(p)


def test_write_is_atomic(tmp_path, monkeypatch):
    codes = np.zeros((1, 8, 3), dtype=np.int64)
    import moshikit.tokens as tokens

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tokens, "encode_mimi_bytes", boom)
    with pytest.raises(RuntimeError):
        write_tokens(tmp_path / "x.mimi", codes, header_for(codes))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- hostile files (fuzzed)

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_mimi() -> bytes:
    codes = np.random.default_rng(3).integers(0, 2048, size=(1, 8, 6))
    return encode_mimi_bytes(codes, header_for(codes))


def _valid_npy() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(4).integers(0, 2048, size=(8, 6)).astype(np.int16), allow_pickle=False)
    return buf.getvalue()


def _read_bounded(path, data: bytes):
    """read_tokens on hostile bytes: a TokenFileError or a valid result, never anything else,
    and never an allocation much beyond the file's own size (whatever its header claims)."""
    import tracemalloc

    path.write_bytes(data)
    tracemalloc.start()
    try:
        t = read_tokens(path)
    except TokenFileError as exc:
        assert "\n" not in str(exc)
        t = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 200 * len(data) + 1_000_000, f"{peak} bytes allocated for a {len(data)}-byte file"
    if t is not None:
        assert t.codes.shape == (t.header.channels, t.header.num_codebooks, t.header.frames)
    return t


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(tmp_path, data):
    _read_bounded(tmp_path / "x.mimi", data)
    _read_bounded(tmp_path / "y.mimi", MAGIC + data)
    _read_bounded(tmp_path / "z.npy", b"\x93NUMPY" + data)


@FUZZ
@given(st.data())
def test_fuzz_mutated_mimi(tmp_path, data):
    raw = bytearray(_valid_mimi())
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _read_bounded(tmp_path / "x.mimi", bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))


@FUZZ
@given(hlen=st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1),
       header=st.dictionaries(st.sampled_from(["num_codebooks", "frames", "channels", "cardinality", "sample_rate",
                                               "frame_size", "frame_rate", "num_samples", "codec", "source"]),
                              st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5) | st.none()
                              | st.booleans() | st.lists(st.integers(), max_size=2), max_size=10))
@example(hlen=0, header={"num_codebooks": 8, "frames": 1, "cardinality": 0})
@example(hlen=0, header={"num_codebooks": 8, "frames": 1, "cardinality": 2**80})
@example(hlen=2**32 - 1, header={"num_codebooks": 8, "frames": 2**40})
def test_fuzz_hostile_headers(tmp_path, hlen, header):
    """A header length up to 4 GB, and header fields of every type and size (a frame count of
    2^70, a cardinality of 0): one line each, nothing allocated for what the file lacks."""
    head = json.dumps(header).encode()
    body = struct.pack("<8sHHI", MAGIC, 1, 0, hlen) + head + b"\x00" * 64
    _read_bounded(tmp_path / "a.mimi", body + struct.pack("<I", zlib.crc32(body)))
    exact = struct.pack("<8sHHI", MAGIC, 1, 0, len(head)) + head + b"\x00" * 64
    _read_bounded(tmp_path / "b.mimi", exact + struct.pack("<I", zlib.crc32(exact)))


@FUZZ
@given(st.data())
def test_fuzz_mutated_npy(tmp_path, data):
    raw = bytearray(_valid_npy())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, min(len(raw) - 1, 127)))  # the header, mostly
        raw[i] = data.draw(st.integers(0, 255))
    _read_bounded(tmp_path / "x.npy", bytes(raw))


@pytest.mark.parametrize("shape", ["(1000000000000,)", "(8, 4294967296)", "(2, 8, 100000000000)"])
def test_npy_header_claiming_terabytes(tmp_path, shape):
    """np.load allocates what a .npy header claims before reading; read_tokens checks the size first."""
    good = _valid_npy()
    head = ("{'descr': '<i2', 'fortran_order': False, 'shape': %s, }" % shape).encode()
    head += b" " * (-(10 + len(head) + 1) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + good[128:]
    assert _read_bounded(tmp_path / "x.npy", data) is None
    with pytest.raises(TokenFileError, match="corrupt .npy token file"):
        read_tokens(tmp_path / "x.npy")


def test_a_4_gb_header_length_is_one_line(tmp_path):
    raw = bytearray(_valid_mimi())
    raw[12:16] = struct.pack("<I", 2**32 - 1)
    (tmp_path / "x.mimi").write_bytes(bytes(raw))
    with pytest.raises(TokenFileError, match=r"truncated token file"):
        read_tokens(tmp_path / "x.mimi")
