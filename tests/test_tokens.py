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
