"""Golden files: cases computed by the numpy reference, replayed bit for bit by the C++ cores.

A golden file holds many cases of (usually) one op. Each case is a dict mapping names to
numpy arrays or scalars; the C++ side reads it with `tflm_ops/tests/golden_reader.h`.
Files are generated at test time (tests/test_golden_cpp.py) and never committed.

Format (everything little-endian)::

    file   := magic "TMTGOLD\\0" (8 bytes) | u32 version (=1) | u32 n_cases | case * n_cases
    case   := str op | u32 n_entries | entry * n_entries
    entry  := str key | u8 kind | payload
      kind 0 ARRAY  : u8 dtype | u8 ndim | i64 dim * ndim | u64 nbytes | raw bytes (C order)
      kind 1 INT    : i64
      kind 2 FLOAT  : f64
      kind 3 STRING : str
    str    := u32 n_bytes | UTF-8 bytes

Value mapping on writing:

* ``np.ndarray``              -> ARRAY (0-d arrays allowed)
* numpy scalars (``np.float32(x)``, ``np.int8(x)``...) -> 0-d ARRAY of that dtype, so a float32
  scalar reaches C++ as exactly that float32 (prefer them for float32 parameters)
* ``bool`` / ``int``          -> INT (must fit in int64)
* ``float``                   -> FLOAT (a Python float is a double)
* ``str``                     -> STRING

The case's op name comes from its ``"op"`` entry (a str), or from ``write_golden(..., op=...)``;
it is stored in the case header, not as an entry.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping

import numpy as np

MAGIC = b"TMTGOLD\0"
VERSION = 1

KIND_ARRAY = 0
KIND_INT = 1
KIND_FLOAT = 2
KIND_STRING = 3

# dtype codes; keep in sync with tmt_golden::DType in tflm_ops/tests/golden_reader.h.
DTYPE_CODES: dict[np.dtype, int] = {
    np.dtype(np.int8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.int64): 4,
    np.dtype(np.float32): 5,
    np.dtype(np.uint8): 6,
    np.dtype(np.float64): 7,
    np.dtype(np.bool_): 8,
    np.dtype(np.uint16): 9,
    np.dtype(np.uint32): 10,
}
CODE_DTYPES: dict[int, np.dtype] = {v: k for k, v in DTYPE_CODES.items()}

GoldenValue = np.ndarray | np.generic | int | float | bool | str

_MAX_NDIM = 255


class GoldenFormatError(ValueError):
    """A value cannot be written, or a file is not a valid golden file."""


def _pack_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def _pack_array(key: str, a: np.ndarray) -> bytes:
    dt = a.dtype.newbyteorder("=") if a.dtype.byteorder not in "=|" else a.dtype
    code = DTYPE_CODES.get(np.dtype(dt))
    if code is None:
        raise GoldenFormatError(f"{key!r}: unsupported dtype {a.dtype} (supported: "
                                f"{', '.join(str(d) for d in DTYPE_CODES)})")
    if a.ndim > _MAX_NDIM:
        raise GoldenFormatError(f"{key!r}: {a.ndim} dimensions")
    raw = np.ascontiguousarray(a, dtype=np.dtype(dt).newbyteorder("<")).tobytes()
    return (struct.pack("<BB", code, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
            + struct.pack("<Q", len(raw)) + raw)


def _pack_entry(key: str, value: GoldenValue) -> bytes:
    head = _pack_str(key)
    if isinstance(value, np.ndarray):
        return head + bytes([KIND_ARRAY]) + _pack_array(key, value)
    if isinstance(value, np.generic):
        return head + bytes([KIND_ARRAY]) + _pack_array(key, np.asarray(value))
    if isinstance(value, (bool, int)):
        v = int(value)
        if not -(2**63) <= v < 2**63:
            raise GoldenFormatError(f"{key!r}: int {v} does not fit in int64")
        return head + bytes([KIND_INT]) + struct.pack("<q", v)
    if isinstance(value, float):
        return head + bytes([KIND_FLOAT]) + struct.pack("<d", value)
    if isinstance(value, str):
        return head + bytes([KIND_STRING]) + _pack_str(value)
    raise GoldenFormatError(f"{key!r}: cannot write a {type(value).__name__}")


def encode_case(case: Mapping[str, GoldenValue], op: str | None = None) -> bytes:
    """The bytes of one case (see the module docstring)."""
    name = case.get("op", op)
    if not isinstance(name, str) or not name:
        raise GoldenFormatError("a case needs an op name: an 'op' entry or write_golden(op=...)")
    entries = [(k, v) for k, v in case.items() if k != "op"]
    out = [_pack_str(name), struct.pack("<I", len(entries))]
    for k, v in entries:
        if not isinstance(k, str):
            raise GoldenFormatError(f"entry names must be str, not {k!r}")
        out.append(_pack_entry(k, v))
    return b"".join(out)


def write_golden(
    path: str | os.PathLike,
    cases: Iterable[Mapping[str, GoldenValue]],
    op: str | None = None,
) -> int:
    """Write `cases` to the golden file `path`; returns the number of cases written."""
    blobs = [encode_case(c, op) for c in cases]
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<II", VERSION, len(blobs)))
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return len(blobs)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise GoldenFormatError(f"truncated golden file at byte {self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        (n,) = self.unpack("<I")
        return self.take(n).decode("utf-8")


def read_golden(path: str | os.PathLike) -> list[dict[str, GoldenValue]]:
    """Read a golden file back; each case gets its op name as an 'op' entry.

    0-d arrays come back as 0-d arrays (not numpy scalars), INT as int, FLOAT as float.
    """
    with open(path, "rb") as f:
        r = _Reader(f.read())
    if r.take(8) != MAGIC:
        raise GoldenFormatError(f"{path}: not a golden file")
    version, n_cases = r.unpack("<II")
    if version != VERSION:
        raise GoldenFormatError(f"{path}: version {version}, expected {VERSION}")
    cases = []
    for _ in range(n_cases):
        case: dict[str, GoldenValue] = {"op": r.string()}
        (n_entries,) = r.unpack("<I")
        for _ in range(n_entries):
            key = r.string()
            (kind,) = r.unpack("<B")
            if kind == KIND_ARRAY:
                code, ndim = r.unpack("<BB")
                if code not in CODE_DTYPES:
                    raise GoldenFormatError(f"{path}: {key!r} has unknown dtype code {code}")
                dims = r.unpack(f"<{ndim}q")
                (nbytes,) = r.unpack("<Q")
                dt = CODE_DTYPES[code].newbyteorder("<")
                arr = np.frombuffer(r.take(nbytes), dtype=dt).reshape(dims)
                case[key] = arr.astype(CODE_DTYPES[code])
            elif kind == KIND_INT:
                case[key] = r.unpack("<q")[0]
            elif kind == KIND_FLOAT:
                case[key] = r.unpack("<d")[0]
            elif kind == KIND_STRING:
                case[key] = r.string()
            else:
                raise GoldenFormatError(f"{path}: {key!r} has unknown kind {kind}")
        cases.append(case)
    if r.pos != len(r.data):
        raise GoldenFormatError(f"{path}: {len(r.data) - r.pos} trailing bytes")
    return cases
