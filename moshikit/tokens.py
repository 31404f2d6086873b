"""Token files: the compact ``.mimi`` container and plain ``.npy`` arrays.

``.mimi`` layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89MIMI\\r\\n\\x1a"
    8       2     format version (1)
    10      2     flags (0, reserved)
    12      4     header length H
    16      H     header: UTF-8 JSON object (see TokenHeader)
    16+H    P     codes, bit-packed, P = ceil(C*K*F*bits / 8)
    16+H+P  4     CRC-32 of every byte before it

Codes are stored frame-major (for each channel: frame 0's K codes, then
frame 1's, ...), each as an unsigned ``bits``-bit integer (11 for Mimi's 2048
entries), most significant bit first, the last byte padded with zero bits. The
magic's high byte and CR-LF catch text-mode transfers; the CRC catches
truncation and corruption. Nothing here is ever unpickled.

``.npy`` output is a plain int16 array ``[K, F]`` (``[C, K, F]`` with split
channels) written with ``allow_pickle=False``, and its header beside it as
``<name>.json``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_bytes, write_text
from .errors import TokenFileError
from .inputs import read_regular

MAGIC = b"\x89MIMI\r\n\x1a"
VERSION = 1
_FIXED = struct.Struct("<8sHHI")
FORMATS = ("mimi", "npy")
#: Codes are at most 16 bits (Mimi has 2048 entries; .npy files hold int16).
MAX_CARDINALITY = 1 << 16
#: The largest ``.json`` sidecar read (a header is a few hundred bytes).
SIDECAR_LIMIT = 1 << 20


@dataclass
class TokenHeader:
    """Everything needed to check and decode a token file."""

    num_codebooks: int
    frames: int
    channels: int = 1
    cardinality: int = 2048
    sample_rate: int = 24000
    frame_rate: float = 12.5
    frame_size: int = 1920
    num_samples: int = 0  # samples at sample_rate that the codes stand for
    codec: dict = field(default_factory=dict)  # repo, revision, file, sha256
    source: dict = field(default_factory=dict)  # name, sample_rate, channels, frames
    backend: str = ""
    moshikit_version: str = ""

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(self.cardinality)))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str) -> "TokenHeader":
        try:
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            head = cls(**known)
        except TypeError as exc:
            raise TokenFileError(f"{where}: header is not a valid token header ({exc})") from None
        head.validate(where)
        return head

    def validate(self, where: str) -> None:
        """Every field in range and in agreement with the others, before anything is allocated:
        the rates agree (frame_rate = sample_rate / frame_size) and ``num_samples`` is what
        ``frames`` frames stand for (more than ``frames - 1`` frames' samples, at most ``frames``
        frames'; 0 means unknown), so a decode never writes more than the codes give."""
        try:
            ints = (self.num_codebooks, self.frames, self.channels, self.cardinality, self.num_samples,
                    self.sample_rate, self.frame_size)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
                raise ValueError("bad sizes")
            if self.num_codebooks < 1:
                raise ValueError(f"{self.num_codebooks} codebooks: Mimi has 1 to 32")
            if self.channels < 1 or self.sample_rate < 1 or self.frame_size < 1:
                raise ValueError("bad sizes")
            if not 1 <= self.cardinality <= MAX_CARDINALITY:
                raise ValueError(f"cardinality {self.cardinality} is not in 1..{MAX_CARDINALITY}")
            if not isinstance(self.frame_rate, (int, float)) or isinstance(self.frame_rate, bool) \
                    or not 0 < self.frame_rate < 1e6:
                raise ValueError("bad frame rate")
            if abs(self.frame_rate * self.frame_size - self.sample_rate) > 1e-6 * self.sample_rate:
                raise ValueError(f"frame rate {self.frame_rate} Hz is not sample rate {self.sample_rate} Hz "
                                 f"/ frame size {self.frame_size}")
            if self.num_samples and not (self.frames - 1) * self.frame_size < self.num_samples \
                    <= self.frames * self.frame_size:
                raise ValueError(f"{self.num_samples} samples claimed, but {self.frames} frames hold "
                                 f"{self.frames * self.frame_size}")
            if not isinstance(self.codec, dict) or not isinstance(self.source, dict) \
                    or not isinstance(self.backend, str) or not isinstance(self.moshikit_version, str):
                raise ValueError("bad field types")
        except (TypeError, ValueError) as exc:
            raise TokenFileError(f"{where}: header is not a valid token header ({exc})") from None


@dataclass
class Tokens:
    codes: np.ndarray  # [C, K, F] int64
    header: TokenHeader


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """[C, K, F] -> bytes, frame-major, ``bits`` bits per code, MSB first."""
    flat = np.ascontiguousarray(np.transpose(codes, (0, 2, 1))).reshape(-1).astype(np.uint32)
    if flat.size and int(flat.max()) >= (1 << bits):
        raise TokenFileError(f"a code ({int(flat.max())}) does not fit in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bitarr = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitarr.reshape(-1)).tobytes()


def unpack_codes(data: bytes, shape: tuple[int, int, int], bits: int) -> np.ndarray:
    c, k, f = shape
    n = c * k * f
    bitarr = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n * bits).reshape(n, bits)
    flat = np.zeros(n, np.int64)
    for b in range(bits):  # one bit column at a time: memory stays ~9 bytes a code
        flat <<= 1
        flat |= bitarr[:, b]
    return np.ascontiguousarray(flat.reshape(c, f, k).transpose(0, 2, 1))


def encode_mimi_bytes(codes: np.ndarray, header: TokenHeader) -> bytes:
    head = json.dumps(header.to_json(), sort_keys=True, separators=(",", ":")).encode()
    body = _FIXED.pack(MAGIC, VERSION, 0, len(head)) + head + pack_codes(codes, header.bits)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_mimi_bytes(data: bytes, where: str = "<bytes>") -> Tokens:
    if len(data) < _FIXED.size or data[:8] != MAGIC:
        raise TokenFileError(f"{where}: not a .mimi token file (bad magic bytes)")
    _, version, _flags, hlen = _FIXED.unpack_from(data)
    if version != VERSION:
        raise TokenFileError(f"{where}: token format version {version} is not supported (this moshikit reads {VERSION})")
    if len(data) < _FIXED.size + hlen + 4:
        raise TokenFileError(f"{where}: truncated token file ({len(data)} bytes)")
    try:
        meta = json.loads(data[_FIXED.size : _FIXED.size + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        raise TokenFileError(f"{where}: corrupt token file (header is not valid JSON)") from None
    if not isinstance(meta, dict):
        raise TokenFileError(f"{where}: corrupt token file (header is not an object)")
    header = TokenHeader.from_json(meta, where)
    n_bits = header.channels * header.num_codebooks * header.frames * header.bits
    payload_len = (n_bits + 7) // 8
    end = _FIXED.size + hlen + payload_len
    if len(data) < end + 4:
        raise TokenFileError(f"{where}: truncated token file ({len(data)} of {end + 4} bytes)")
    if len(data) > end + 4:
        raise TokenFileError(f"{where}: corrupt token file ({len(data) - end - 4} unexpected trailing bytes)")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) != crc:
        raise TokenFileError(f"{where}: corrupt token file (checksum mismatch)")
    shape = (header.channels, header.num_codebooks, header.frames)
    codes = unpack_codes(data[_FIXED.size + hlen : end], shape, header.bits)
    if codes.size and int(codes.max()) >= header.cardinality:
        raise TokenFileError(f"{where}: corrupt token file (codes outside 0..{header.cardinality - 1})")
    return Tokens(codes, header)


def output_suffix(fmt: str) -> str:
    return ".mimi" if fmt == "mimi" else ".npy"


def write_tokens(path: str | os.PathLike, codes: np.ndarray, header: TokenHeader, fmt: str = "mimi") -> Path:
    """Write atomically. ``codes`` is [C, K, F] (or [K, F] for one channel)."""
    path = Path(path)
    codes = np.asarray(codes)
    if codes.ndim == 2:
        codes = codes[None]
    if codes.shape != (header.channels, header.num_codebooks, header.frames):
        raise ValueError(f"codes shape {codes.shape} does not match the header")
    if fmt == "mimi":
        write_bytes(path, encode_mimi_bytes(codes, header))
    elif fmt == "npy":
        import io

        array = codes[0] if header.channels == 1 else codes
        side = path.with_suffix(".json")
        # The array lands last: its presence marks the pair as complete.
        write_text(side, json.dumps(header.to_json(), indent=2, sort_keys=True) + "\n")
        buf = io.BytesIO()
        np.save(buf, array.astype(np.int16), allow_pickle=False)
        write_bytes(path, buf.getvalue())
    else:
        raise ValueError(f"unknown token format {fmt!r}")
    return path


def read_tokens(path: str | os.PathLike) -> Tokens:
    """Read and verify a ``.mimi`` or ``.npy`` token file."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise TokenFileError(f"{where}: no such file")
    # A FIFO or a device is refused unopened; the bytes read are the size the file has.
    data = read_regular(path, TokenFileError)
    if data[:8] == MAGIC:
        return decode_mimi_bytes(data, where)
    if data[:6] == b"\x93NUMPY":
        return _read_npy(path, data)
    raise TokenFileError(f"{where}: not a token file (neither .mimi nor .npy)")


def _read_npy(path: Path, data: bytes) -> Tokens:
    import io

    where = str(path)
    array = _npy_array(data, where)
    side = path.with_suffix(".json")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise TokenFileError(f"{where}: expected an integer array [K, F], got {array.dtype} {array.shape}")
    if side.exists():
        try:
            meta = json.loads(read_regular(side, TokenFileError, limit=SIDECAR_LIMIT))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
            raise TokenFileError(f"{side}: corrupt metadata (not valid JSON)") from None
        if not isinstance(meta, dict):
            raise TokenFileError(f"{side}: corrupt metadata (not a JSON object)")
        header = TokenHeader.from_json(meta, str(side))
        if (header.channels, header.num_codebooks, header.frames) != array.shape:
            raise TokenFileError(f"{where}: array shape {array.shape} does not match {side.name}")
    else:  # a bare array from elsewhere: assume Mimi defaults
        c, k, f = array.shape
        if k < 1 or c < 1:
            raise TokenFileError(f"{where}: an array of shape {array.shape} holds no codes ({k} codebooks: "
                                 "Mimi has 1 to 32)")
        header = TokenHeader(num_codebooks=k, frames=f, channels=c, num_samples=f * 1920)
        header.validate(where)
    codes = array.astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= header.cardinality):
        raise TokenFileError(f"{where}: codes outside 0..{header.cardinality - 1}")
    return Tokens(codes, header)


def _npy_array(data: bytes, where: str) -> np.ndarray:
    """The array of a .npy file, checked against the file's size before anything is
    allocated (``np.load`` on bytes allocates what the header claims, however large)."""
    import io

    from numpy.lib import format as npy

    f = io.BytesIO(data)
    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version} is not supported")
    except Exception as exc:  # noqa: BLE001 - numpy's parser raises several kinds
        raise TokenFileError(f"{where}: corrupt .npy token file ({str(exc).splitlines()[0][:80]})") from None
    if dtype.hasobject or not np.issubdtype(dtype, np.integer):
        raise TokenFileError(f"{where}: expected an integer array [K, F], got {dtype} {shape}")
    count = math.prod(shape)
    have = len(data) - f.tell()
    if count * dtype.itemsize != have:
        raise TokenFileError(f"{where}: corrupt .npy token file ({have} bytes of data for shape {shape})")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a valid token file (so a resumed run can skip it)."""
    try:
        read_tokens(path)
        return True
    except TokenFileError:
        return False
