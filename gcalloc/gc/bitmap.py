"""The heap bitmap: two bits per heap word saying whether the word may hold a pointer and
whether any pointer follows it in its object (Go 1.16 mbitmap.go's heapBits, per arena).

Layout, per arena (``Arenas.bitmap`` at ``arena.bitmap_off``): byte k describes words 4k..4k+3
of the arena; bit j (0-3) is word 4k+j's *pointer* bit, bit j+4 its *scan* bit. A word with its
scan bit clear ends its object's pointer data ("dead"): the marker stops there.

How objects get their bits:
- a span of a scan class is filled with all ones when it goes in use (``fill_span``): every
  word of every slot is a possible pointer, which is exactly a conservative object
  (``type=None, noscan=False``), so those allocations write no bits at all;
- a typed allocation writes its object's precise bits (``set_object_type``: the type's mask,
  repeated for arrays, dead after the last pointer word) and flags its span ``typed``;
- when a typed object's slot is freed (sweep or explicit free) its bits go back to all ones
  (``reset_object``), restoring the invariant below.

Invariant: in a scan span, the bits of every slot not holding a typed object are all ones.
Noscan spans' bits are never read.
"""

from __future__ import annotations

import numpy as np

from gcalloc.arena import HEAP_ARENA_BYTES, Arenas
from gcalloc.errors import HeapCorruption
from gcalloc.gc.types import Type

ALL_ONES = 0xFF
WORDS_PER_ARENA = HEAP_ARENA_BYTES >> 3
# Objects of at most this many words get their bits written by a Python loop; larger ones
# by numpy (the crossover measured on CPython 3.11).
SCALAR_WORDS = 64


def _bitmap_index(arenas: Arenas, addr: int) -> int:
    arena = arenas.arena_of(addr)
    if arena is None:
        raise HeapCorruption(f"heap bitmap: {addr:#x} is not in the heap")
    return arena.bitmap_off + ((addr - arena.base) >> 5)


def _arena_pieces(arenas: Arenas, base: int, nbytes: int):
    """(bitmap start index, first word index within the piece, words) for each arena the range
    [base, base + nbytes) touches."""
    word = 0
    total = nbytes >> 3
    while word < total:
        addr = base + (word << 3)
        arena = arenas.arena_of(addr)
        if arena is None:
            raise HeapCorruption(f"heap bitmap: {addr:#x} is not in the heap")
        w0 = (addr - arena.base) >> 3
        n = min(total - word, WORDS_PER_ARENA - w0)
        yield arena.bitmap_off, w0, word, n
        word += n


def fill_span(arenas: Arenas, base: int, nbytes: int, value: int) -> None:
    """Set the bits of every word of a span (page-aligned, whole bytes of bitmap) to
    ``value`` per bitmap byte: ALL_ONES (every word a pointer) or 0."""
    bitmap = arenas.bitmap
    for off, w0, _, n in _arena_pieces(arenas, base, nbytes):
        bitmap[off + (w0 >> 2): off + ((w0 + n) >> 2)] = value


def span_all_ones(arenas: Arenas, base: int, nbytes: int) -> bool:
    """Whether every bitmap byte of the span [base, base + nbytes) is ALL_ONES (verify)."""
    bitmap = arenas.bitmap
    return all((bitmap[off + (w0 >> 2): off + ((w0 + n) >> 2)] == ALL_ONES).all()
               for off, w0, _, n in _arena_pieces(arenas, base, nbytes))


def object_bits(typ: Type, data_bytes: int, elemsize: int) -> tuple[int, int]:
    """(pointer bits, scan bits) over the object's words, as ints (bit i: word i).

    ``data_bytes`` is a multiple of the type's size (an array of typ); words past it are
    dead, as are the words after the last pointer word.
    """
    nwords = elemsize >> 3
    if typ.ptrdata == 0 or data_bytes == 0:
        return 0, 0
    count = data_bytes // typ.size if typ.size else 0
    # Arrays of pointerful types have word-multiple elements (Heap.alloc_typed checks), so
    # the mask repeats with a stride of whole words; doubling keeps this O(n log n).
    stride = typ.size >> 3
    ptr, have = typ.ptrmask, 1
    while have < count:
        take = min(have, count - have)
        ptr |= (ptr & ((1 << (take * stride)) - 1)) << (have * stride)
        have += take
    ptr &= (1 << nwords) - 1
    scan = (1 << ptr.bit_length()) - 1
    return ptr, scan


def set_object_type(arenas: Arenas, p: int, elemsize: int, typ: Type, data_bytes: int) -> None:
    """Write the precise bits of the object at p (Go's heapBitsSetType)."""
    ptr, scan = object_bits(typ, data_bytes, elemsize)
    _write_bits(arenas, p, elemsize >> 3, ptr, scan)


def reset_object(arenas: Arenas, p: int, elemsize: int) -> None:
    """Give a freed typed slot its conservative bits back (all ones)."""
    nwords = elemsize >> 3
    ones = (1 << nwords) - 1
    _write_bits(arenas, p, nwords, ones, ones)


def _write_bits(arenas: Arenas, p: int, nwords: int, ptr: int, scan: int) -> None:
    bitmap = arenas.bitmap
    for off, w0, first, n in _arena_pieces(arenas, p, nwords << 3):
        pbits = (ptr >> first) & ((1 << n) - 1)
        sbits = (scan >> first) & ((1 << n) - 1)
        if n <= SCALAR_WORDS:
            _write_scalar(bitmap, off, w0, n, pbits, sbits)
        else:
            _write_vector(bitmap, off, w0, n, pbits, sbits)


def _write_scalar(bitmap: np.ndarray, off: int, w0: int, n: int, pbits: int,
                  sbits: int) -> None:
    w = w0
    end = w0 + n
    while w < end:
        k = w >> 2
        j0 = w & 3
        j1 = min(4, j0 + end - w)
        keep = 0xFF
        new = 0
        for j in range(j0, j1):
            i = w - w0 + (j - j0)
            keep &= ~((1 << j) | (1 << (j + 4)))
            new |= ((pbits >> i) & 1) << j | ((sbits >> i) & 1) << (j + 4)
        idx = off + k
        bitmap[idx] = (int(bitmap[idx]) & keep) | new
        w += j1 - j0


def _write_vector(bitmap: np.ndarray, off: int, w0: int, n: int, pbits: int,
                  sbits: int) -> None:
    lo = w0 >> 2
    hi = (w0 + n + 3) >> 2
    seg = bitmap[off + lo: off + hi]
    bits = np.unpackbits(seg, bitorder="little").reshape(-1, 2, 4)
    ww = np.arange(n) + (w0 - (lo << 2))
    nbytes = (n + 7) >> 3
    pw = np.unpackbits(np.frombuffer(pbits.to_bytes(nbytes, "little"), np.uint8),
                       bitorder="little")[:n]
    sw = np.unpackbits(np.frombuffer(sbits.to_bytes(nbytes, "little"), np.uint8),
                       bitorder="little")[:n]
    bits[ww >> 2, 0, ww & 3] = pw
    bits[ww >> 2, 1, ww & 3] = sw
    seg[:] = np.packbits(bits.reshape(-1), bitorder="little")


def read_bits(arenas: Arenas, p: int, nwords: int) -> tuple[int, int]:
    """(pointer bits, scan bits) of nwords words from p, as ints; for tests and verify."""
    bitmap = arenas.bitmap
    ptr = scan = 0
    for i in range(nwords):
        idx = _bitmap_index(arenas, p + i * 8)
        j = ((p >> 3) + i) & 3
        b = int(bitmap[idx])
        ptr |= ((b >> j) & 1) << i
        scan |= ((b >> (j + 4)) & 1) << i
    return ptr, scan
