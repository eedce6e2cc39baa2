"""pprof heap profiles: the profile.proto encoder (Go's runtime/pprof protomem.go and
protobuf.go), written by hand — varints and length-delimited fields — and gzipped.

The profile has Go's four sample types, in Go's order (pprof shows the last, inuse_space, by
default): alloc_objects/count, alloc_space/bytes, inuse_objects/count, inuse_space/bytes;
period type space/bytes with period = the sampling rate. Each MemProfileRecord becomes one
sample whose values are scaled from the sampled counts to estimates of the true ones by
``scale_heap_sample`` (Go's scaleHeapSample), with a numeric label ``bytes`` = the object size.
Python frames become locations (one per function and line) and functions named
``module.qualname`` with their file and first line; one mapping declares that functions, file
names and line numbers are all present, so pprof does not try to symbolize anything.

Protobuf wire format used: a field is a varint key ``(number << 3) | wire_type``; wire type 0
is a varint (negative int64 as 10-byte two's complement), 2 is length-delimited (strings,
embedded messages, packed repeated varints). Zero scalars are omitted (proto3 defaults);
string_table[0] is always "".
"""

from __future__ import annotations

import gzip
import io
import math
import os
import time
from collections.abc import Iterable
from typing import BinaryIO, TypeAlias

from gcalloc.gc.mprof import Frame, MemProfileRecord

# profile.proto field numbers.
_PROFILE_SAMPLE_TYPE, _PROFILE_SAMPLE, _PROFILE_MAPPING, _PROFILE_LOCATION = 1, 2, 3, 4
_PROFILE_FUNCTION, _PROFILE_STRING_TABLE = 5, 6
_PROFILE_TIME_NANOS, _PROFILE_PERIOD_TYPE, _PROFILE_PERIOD = 9, 11, 12
_VALUETYPE_TYPE, _VALUETYPE_UNIT = 1, 2
_SAMPLE_LOCATION_ID, _SAMPLE_VALUE, _SAMPLE_LABEL = 1, 2, 3
_LABEL_KEY, _LABEL_NUM, _LABEL_NUM_UNIT = 1, 3, 4
_MAPPING_ID, _MAPPING_START, _MAPPING_LIMIT, _MAPPING_FILENAME = 1, 2, 3, 5
_MAPPING_HAS_FUNCTIONS, _MAPPING_HAS_FILENAMES, _MAPPING_HAS_LINES = 7, 8, 9
_LOCATION_ID, _LOCATION_MAPPING_ID, _LOCATION_ADDRESS, _LOCATION_LINE = 1, 2, 3, 4
_LINE_FUNCTION_ID, _LINE_LINE = 1, 2
_FUNCTION_ID, _FUNCTION_NAME, _FUNCTION_SYSTEM_NAME = 1, 2, 3
_FUNCTION_FILENAME, _FUNCTION_START_LINE = 4, 5

_VARINT, _BYTES = 0, 2
SAMPLE_TYPES = (("alloc_objects", "count"), ("alloc_space", "bytes"),
                ("inuse_objects", "count"), ("inuse_space", "bytes"))


def scale_heap_sample(count: int, size: int, rate: int) -> tuple[int, int]:
    """Estimate the true (objects, bytes) from sampled ones (Go's scaleHeapSample): an object
    of average size S appears in the profile with probability 1 - exp(-S/rate)."""
    if count == 0 or size == 0:
        return 0, 0
    if rate <= 1:
        return count, size      # every allocation sampled, or rate unknown
    avg = size / count
    scale = 1 / (1 - math.exp(-avg / rate))
    return int(count * scale), int(size * scale)


# --- protobuf primitives ----------------------------------------------------------------

def varint(n: int) -> bytes:
    """Base-128 varint; a negative int64 is encoded as its 64-bit two's complement."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# _Message has methods named int, bytes and bool; inside its body those names are the
# methods, so annotations there spell the builtin through this alias.
_Int: TypeAlias = int


class _Message:
    """An encoder for one protobuf message."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def int(self, field: int, value: int) -> None:
        if value:
            self.buf += varint(field << 3 | _VARINT)
            self.buf += varint(value)

    def bool(self, field: _Int, value: bool) -> None:
        self.int(field, 1 if value else 0)

    def bytes(self, field: _Int, data: bytes) -> None:
        self.buf += varint(field << 3 | _BYTES)
        self.buf += varint(len(data))
        self.buf += data

    def message(self, field: _Int, msg: _Message) -> None:
        self.bytes(field, bytes(msg.buf))

    def packed(self, field: _Int, values: Iterable[_Int]) -> None:
        data = b"".join(varint(v) for v in values)
        if data:
            self.bytes(field, data)


# --- the profile ----------------------------------------------------------------------

class _ProfileBuilder:
    """String, function and location tables, then the Profile message."""

    def __init__(self) -> None:
        self.strings: dict[str, int] = {"": 0}
        self.functions: dict[tuple[str, str, int], int] = {}
        self.locations: dict[tuple[str, str, int, int], int] = {}
        self.function_msgs: list[_Message] = []
        self.location_msgs: list[_Message] = []

    def string(self, s: str) -> int:
        i = self.strings.get(s)
        if i is None:
            i = self.strings[s] = len(self.strings)
        return i

    def value_type(self, type_: str, unit: str) -> _Message:
        m = _Message()
        m.int(_VALUETYPE_TYPE, self.string(type_))
        m.int(_VALUETYPE_UNIT, self.string(unit))
        return m

    def function_id(self, f: Frame) -> int:
        key = (f.function, f.filename, f.start_line)
        fid = self.functions.get(key)
        if fid is None:
            fid = self.functions[key] = len(self.functions) + 1
            m = _Message()
            m.int(_FUNCTION_ID, fid)
            m.int(_FUNCTION_NAME, self.string(f.function))
            m.int(_FUNCTION_SYSTEM_NAME, self.string(f.function))
            m.int(_FUNCTION_FILENAME, self.string(f.filename))
            m.int(_FUNCTION_START_LINE, f.start_line)
            self.function_msgs.append(m)
        return fid

    def location_id(self, f: Frame) -> int:
        key = (f.function, f.filename, f.start_line, f.line)
        lid = self.locations.get(key)
        if lid is None:
            lid = self.locations[key] = len(self.locations) + 1
            line = _Message()
            line.int(_LINE_FUNCTION_ID, self.function_id(f))
            line.int(_LINE_LINE, f.line)
            m = _Message()
            m.int(_LOCATION_ID, lid)
            m.int(_LOCATION_MAPPING_ID, 1)
            m.int(_LOCATION_ADDRESS, lid)      # a stand-in "pc", unique per location
            m.message(_LOCATION_LINE, line)
            self.location_msgs.append(m)
        return lid

    def sample(self, r: MemProfileRecord, rate: int) -> _Message:
        values = (*scale_heap_sample(r.alloc_objects, r.alloc_bytes, rate),
                  *scale_heap_sample(r.inuse_objects, r.inuse_bytes, rate))
        m = _Message()
        m.packed(_SAMPLE_LOCATION_ID, [self.location_id(f) for f in r.stack])
        m.packed(_SAMPLE_VALUE, values)
        block = r.alloc_bytes // r.alloc_objects if r.alloc_objects > 0 else 0
        if block:
            label = _Message()
            label.int(_LABEL_KEY, self.string("bytes"))
            label.int(_LABEL_NUM, block)
            m.message(_SAMPLE_LABEL, label)
        return m

    def mapping(self) -> _Message:
        m = _Message()
        m.int(_MAPPING_ID, 1)
        m.int(_MAPPING_START, 0)
        m.int(_MAPPING_LIMIT, len(self.locations) + 1)
        m.int(_MAPPING_FILENAME, self.string("python"))
        m.bool(_MAPPING_HAS_FUNCTIONS, True)
        m.bool(_MAPPING_HAS_FILENAMES, True)
        m.bool(_MAPPING_HAS_LINES, True)
        return m


def encode_heap_profile(records: Iterable[MemProfileRecord], rate: int,
                        time_nanos: int | None = None) -> bytes:
    """The uncompressed profile.proto Profile message for ``records`` sampled at ``rate``."""
    b = _ProfileBuilder()
    out = _Message()
    for type_, unit in SAMPLE_TYPES:
        out.message(_PROFILE_SAMPLE_TYPE, b.value_type(type_, unit))
    for r in records:
        out.message(_PROFILE_SAMPLE, b.sample(r, rate))
    out.message(_PROFILE_MAPPING, b.mapping())
    for m in b.location_msgs:
        out.message(_PROFILE_LOCATION, m)
    for m in b.function_msgs:
        out.message(_PROFILE_FUNCTION, m)
    out.int(_PROFILE_TIME_NANOS, time.time_ns() if time_nanos is None else time_nanos)
    out.message(_PROFILE_PERIOD_TYPE, b.value_type("space", "bytes"))
    out.int(_PROFILE_PERIOD, rate)
    strings = _Message()   # string table last: every index above is assigned by now
    for s in b.strings:    # dicts keep insertion order: index order
        strings.bytes(_PROFILE_STRING_TABLE, s.encode("utf-8", "surrogateescape"))
    return bytes(out.buf) + bytes(strings.buf)


# Where a profile goes: a file name, or a file object open for binary writing.
ProfileDest: TypeAlias = "str | bytes | os.PathLike | BinaryIO | io.RawIOBase | io.BufferedIOBase"


def write_heap_profile(path: ProfileDest,
                       records: Iterable[MemProfileRecord], rate: int) -> None:
    """Write the gzipped heap profile (what ``go tool pprof`` reads) to ``path``: a file name,
    or a binary file object, which is written and left open (Heap.write_heap_profile checks
    which it is)."""
    data = gzip.compress(encode_heap_profile(records, rate))
    if isinstance(path, (str, bytes, os.PathLike)):
        with open(path, "wb") as f:
            f.write(data)
    else:
        path.write(data)


# --- reading (for summaries and round-trip tests) -------------------------------------

def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next offset) of the varint at buf[i]."""
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def read_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: varints as ints, length-delimited fields
    as bytes (the only wire types profile.proto uses). Raises ValueError on others."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        out.append((number, value))
    return out


def read_packed(value: int | bytes) -> list[int]:
    """A repeated varint field: packed (bytes) or a single unpacked value."""
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = read_varint(value, i)
        out.append(v)
    return out

