"""Deserialiser for GNU Radio's PMT ("polymorphic type") wire format, as gr-zeromq sinks send it in tags.

Byte layout (read from gnuradio-runtime ``pmt_serialize.cc`` and checked against ``pmt.serialize_str`` of
GNU Radio 3.10). Every object starts with a one-byte type; all multi-byte numbers are **big-endian**:

====  ===============  ==========================================================================
type  name             body
====  ===============  ==========================================================================
0x00  true             (none)
0x01  false            (none)
0x02  symbol           u16 length, then that many bytes (UTF-8 in practice)
0x03  int32            i32
0x04  double           f64
0x05  complex          f64 real, f64 imaginary
0x06  null             (none); also ends a list built from pairs
0x07  pair             two objects: car, cdr
0x08  vector           u32 count, then count objects
0x09  dict             one pair (key . value), then the rest of the dict (another 0x09 ... or 0x06)
0x0a  uniform vector   u8 element type, u32 count, u8 npad, npad pad bytes, count elements (BE)
0x0b  uint64           u64
0x0c  tuple            u32 count, then count objects
0x0d  int64            i64
====  ===============  ==========================================================================

Uniform-vector element types: 0 u8, 1 s8, 2 u16, 3 s16, 4 u32, 5 s32, 6 u64, 7 s64, 8 f32, 9 f64,
10 c32 (two f32), 11 c64 (two f64).

Python values: true/false -> bool, symbol -> str, integers -> int, double -> float, complex -> complex,
null -> None, pair -> ``Pair``, vector -> list, tuple -> tuple, dict -> dict, uniform vector ->
a read-only native-endian numpy array.

Examples
--------
>>> loads(bytes.fromhex("0c000000020b000000000000000a043fd0000000000000"))
(10, 0.25)
>>> loads(bytes.fromhex("02000772785f72617465"))
'rx_rate'
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np

#: Nesting deeper than this is refused (a hostile message must not exhaust the Python stack).
MAX_DEPTH = 64

_UVEC_DTYPES: dict[int, str] = {
    0: ">u1", 1: ">i1", 2: ">u2", 3: ">i2", 4: ">u4", 5: ">i4", 6: ">u8", 7: ">i8",
    8: ">f4", 9: ">f8", 10: ">c8", 11: ">c16",
}  # fmt: skip


class PmtError(ValueError):
    """The bytes are not a well-formed serialised PMT."""


class Pair(NamedTuple):
    """A PMT pair (cons cell). A list is a chain of pairs ending in ``None``."""

    car: Any
    cdr: Any


class _Reader:
    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = memoryview(data)
        self.pos = pos

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise PmtError(f"truncated: need {n} bytes at offset {self.pos}, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def remaining(self) -> int:
        return len(self.data) - self.pos


def read(data: bytes | memoryview, pos: int = 0) -> tuple[Any, int]:
    """Parse one serialised PMT starting at ``pos``; return ``(value, position after it)``.

    Raises ``PmtError`` for anything malformed (unknown type byte, truncation, too deep, bad UTF-8).
    """
    reader = _Reader(data, pos)
    value = _read(reader, 0)
    return value, reader.pos


def loads(data: bytes | memoryview) -> Any:
    """Parse exactly one serialised PMT; trailing bytes are an error."""
    value, end = read(data)
    if end != len(data):
        raise PmtError(f"{len(data) - end} trailing bytes after the object")
    return value


def _read(r: _Reader, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise PmtError(f"nested deeper than {MAX_DEPTH}")
    kind = r.unpack(">B")
    simple = _SIMPLE.get(kind)
    if simple is not None:
        return simple(r)
    if kind == 0x07:
        return Pair(_read(r, depth + 1), _read(r, depth + 1))
    if kind in (0x08, 0x0C):
        count = r.unpack(">I")
        if count > r.remaining():  # every object takes at least one byte
            raise PmtError(f"count {count} exceeds the {r.remaining()} bytes left")
        items = [_read(r, depth + 1) for _ in range(count)]
        return items if kind == 0x08 else tuple(items)
    if kind == 0x09:
        return _read_dict(r, depth)
    if kind == 0x0A:
        return _read_uniform_vector(r)
    raise PmtError(f"unknown type byte 0x{kind:02x} at offset {r.pos - 1}")


def _read_symbol(r: _Reader) -> str:
    length = r.unpack(">H")
    try:
        return bytes(r.take(length)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PmtError(f"symbol is not UTF-8: {exc.reason}") from None


_SIMPLE = {
    0x00: lambda r: True,
    0x01: lambda r: False,
    0x02: _read_symbol,
    0x03: lambda r: r.unpack(">i"),
    0x04: lambda r: r.unpack(">d"),
    0x05: lambda r: complex(r.unpack(">d"), r.unpack(">d")),
    0x06: lambda r: None,
    0x0B: lambda r: r.unpack(">Q"),
    0x0D: lambda r: r.unpack(">q"),
}


def _read_dict(r: _Reader, depth: int) -> dict:
    result: dict = {}
    while True:
        entry = _read(r, depth + 1)
        if not isinstance(entry, Pair):
            raise PmtError("dict entry is not a (key . value) pair")
        try:
            result[entry.car] = entry.cdr
        except TypeError:
            raise PmtError(f"dict key of type {type(entry.car).__name__} is not supported") from None
        marker = r.unpack(">B")
        if marker == 0x06:
            return result
        if marker != 0x09:
            raise PmtError(f"dict continues with type byte 0x{marker:02x}, expected 0x09 or 0x06")


def _read_uniform_vector(r: _Reader) -> np.ndarray:
    etype = r.unpack(">B")
    dtype = _UVEC_DTYPES.get(etype)
    if dtype is None:
        raise PmtError(f"unknown uniform-vector element type {etype}")
    count = r.unpack(">I")
    npad = r.unpack(">B")
    r.take(npad)
    itemsize = np.dtype(dtype).itemsize
    if count * itemsize > r.remaining():
        raise PmtError(f"uniform vector of {count} x {itemsize} bytes exceeds the {r.remaining()} bytes left")
    raw = r.take(count * itemsize)
    array = np.frombuffer(raw, dtype=dtype).astype(np.dtype(dtype).newbyteorder("="))
    array.flags.writeable = False
    return array
