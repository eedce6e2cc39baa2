"""The heap bitmap: two bits per heap word saying whether the word may hold a pointer and
whether any pointer follows it in its object (Go 1.16 mbitmap.go's heapBits, per arena).

Layout, per arena (``Arenas.bitmap`` at ``arena.bitmap_off``): byte k describes words 4k..4k+3
of the arena; bit j (0-3) is word 4k+j's *pointer* bit, bit j+4 its *scan* bit. A word with its
scan bit clear ends its object's pointer data ("dead"): the marker stops there.

How objects get their bits:
- a span of a scan class is filled with all ones when it goes in use (``fill_span``): every
  word of every slot is a possible pointer, which is exactly a conservative object
  (``type=None, noscan=False``), so those allocations write no bits at all;
- a typed object's bits are one precomputed pattern, a ``Layout`` (the type's mask repeated for
  arrays, dead after the last pointer word), made once per (Type, slot size, data bytes).
  Small typed objects come from their typed entry's own runs (an mcache alloc index of their
  own: malloc.py, mcache.py), and a run's bits are written when the run is taken, before any
  collection can see it (``write_typed_run``: one slice of the layout's cached run row, or
  its span row for a whole span); the fast path writes nothing. When a run is given back,
  its slots not handed out get all ones back (``untype_slots``). Types past the typed
  entries' bound, and large typed objects, are written one by one when allocated;
- when a typed object's slot is freed (sweep or explicit free) its bits go back to all ones
  (``reset_object``, ``reset_slots``), restoring the invariant below.

Objects need not start on a bitmap byte: 16- and 48-byte slots, say, share bytes with their
neighbours. A Layout holds, for each of the four word phases inside a byte, the bytes to write
and the mask of bits that belong to other objects (kept by a read-modify-write). Two objects of
one size class with the same phase never share a byte (they are a multiple of lcm(4, words)
words apart), so one fancy-index assignment per phase writes a whole group exactly.

Span types: a small span whose every slot's bits equal its layout's pattern (so every slot
holds an object of that layout, or is free with those bits inside a typed run) carries the
Layout in ``span.typed`` (Go 1.22's span-wide type for small objects): given when a typed run
covers the whole span, or ends its slots in a span whose other slots have the layout already.
The marker then reads only the layout's pointer words of its objects, without looking at the
bitmap. Any free of a slot in such a span, and any typed run given back with unused slots,
makes it plain ``typed = True`` again (``reset_slots``, ``untype_slots``). ``span.typed``:
False (all ones), True (some typed object: read the bitmap), or a Layout.

Invariant: in a scan span, the bits of every slot not holding a typed object are all ones,
except the slots of a typed run an mcache holds, not handed out yet, which have their run's
layout (no collection sees them: every run is given back, and its tail reset, when a cycle
starts). Noscan spans' bits are never read. Every write holds ``WRITE_LOCK``: neighbours
share bytes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from gcalloc.arena import HEAP_ARENA_BYTES, Arenas
from gcalloc.errors import HeapCorruption
from gcalloc.gc.types import Type
from gcalloc.sizeclasses import PAGE_SHIFT

if TYPE_CHECKING:
    from gcalloc.mspan import MSpan

ALL_ONES = 0xFF
WORDS_PER_ARENA = HEAP_ARENA_BYTES >> 3
# One lock for every bitmap write of every heap: writers are slow paths (typed runs taken and
# given back, free, sweep, large typed objects) and neighbouring objects share bitmap bytes.
WRITE_LOCK = threading.RLock()
_SHIFT4 = np.arange(4, dtype=np.uint8)


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
    with WRITE_LOCK:
        for off, w0, _, n in _arena_pieces(arenas, base, nbytes):
            bitmap[off + (w0 >> 2): off + ((w0 + n) >> 2)] = value


def span_all_ones(arenas: Arenas, base: int, nbytes: int) -> bool:
    """Whether every bitmap byte of the span [base, base + nbytes) is ALL_ONES (verify)."""
    bitmap = arenas.bitmap
    return all((bitmap[off + (w0 >> 2): off + ((w0 + n) >> 2)] == ALL_ONES).all()
               for off, w0, _, n in _arena_pieces(arenas, base, nbytes))


def span_has_layout(arenas: Arenas, s: MSpan, lay: Layout) -> bool:
    """Whether every slot of small span s has lay's bits (a span type's claim; verify)."""
    nbytes = s.npages << PAGE_SHIFT
    arena = arenas.arena_of(s.base)
    if arena is None:
        return False
    i = arena.bitmap_off + ((s.base - arena.base) >> 5)
    return bool((arenas.bitmap[i:i + (nbytes >> 5)] == lay.span_row(s.nelems, nbytes)).all())


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


def _int_bits(x: int, n: int) -> np.ndarray:
    """Bits 0..n-1 of x as a uint8 array."""
    raw = np.frombuffer(x.to_bytes((n + 7) >> 3, "little"), np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n]


class Layout:
    """The heap bits of one slot: ``nwords`` words with pointer bits ``ptr`` and scan bits
    ``scan`` (ints, bit i: word i), precomputed for writing and marking.

    ``offsets``: the pointer words' indexes (what the marker reads of a slot in a span of this
    layout). ``phase(ph)``: (bytes, keep) to write for a slot starting at word ``ph`` of a
    bitmap byte; ``keep`` has the bits of the bytes that belong to other words."""

    __slots__ = ("nwords", "ptr", "scan", "offsets", "name", "_phases", "_rows", "_runs",
                 "__weakref__")

    def __init__(self, ptr: int, scan: int, nwords: int, name: str = "") -> None:
        self.nwords = nwords
        self.ptr = ptr
        self.scan = scan
        self.name = name
        self.offsets = np.flatnonzero(_int_bits(ptr, nwords)).astype(np.int64)
        self._phases: list[tuple[np.ndarray, np.ndarray] | None] = [None] * 4
        self._rows: dict[tuple[int, int], np.ndarray] = {}
        # per phase: (row, the slots it holds); a row is as long in bytes as a run of more
        # slots can be (the last byte is shared), so it is the slots that are compared
        self._runs: list[tuple[np.ndarray, int] | None] = [None] * 4

    @classmethod
    def of(cls, typ: Type, elemsize: int, data_bytes: int) -> Layout:
        ptr, scan = object_bits(typ, data_bytes, elemsize)
        return cls(ptr, scan, elemsize >> 3, typ.name)

    def phase(self, ph: int) -> tuple[np.ndarray, np.ndarray]:
        found = self._phases[ph]
        if found is None:
            n = self.nwords
            nb = (ph + n + 3) >> 2
            p = np.zeros(nb * 4, np.uint8)
            s = np.zeros(nb * 4, np.uint8)
            own = np.zeros(nb * 4, np.uint8)
            p[ph:ph + n] = _int_bits(self.ptr, n)
            s[ph:ph + n] = _int_bits(self.scan, n)
            own[ph:ph + n] = 1
            byte = ((p.reshape(nb, 4) << _SHIFT4).sum(1) | (s.reshape(nb, 4) << (_SHIFT4 + 4))
                    .sum(1)).astype(np.uint8)
            owned = ((own.reshape(nb, 4) * 0x11) << _SHIFT4).sum(1).astype(np.uint8)
            found = self._phases[ph] = (byte, (ALL_ONES ^ owned).astype(np.uint8))
        return found

    def span_row(self, nelems: int, nbytes: int) -> np.ndarray:
        """The bitmap bytes of a span of ``nbytes`` holding ``nelems`` slots of this layout
        (the tail past the last slot all ones, as fill_span left it)."""
        key = (nelems, nbytes)
        row = self._rows.get(key)
        if row is None:
            row = np.full(nbytes >> 5, ALL_ONES, np.uint8)
            starts = np.arange(nelems, dtype=np.int64) * self.nwords
            _write_groups(row, starts >> 2, starts & 3, self)
            self._rows[key] = row
        return row

    def run_row(self, ph: int, m: int) -> np.ndarray:
        """The bitmap bytes of m consecutive slots of this layout, the first starting at
        word ``ph`` of its byte; words outside the run are 0. Cached, grown by doubling."""
        found = self._runs[ph]
        if found is not None and m <= found[1]:
            return found[0]
        n = self.nwords
        cap = max(m, 64, 2 * found[1] if found is not None else 0)
        total = ph + cap * n
        nb = (total + 3) >> 2
        p = np.zeros(nb * 4, np.uint8)
        q = np.zeros(nb * 4, np.uint8)
        p[ph:total] = np.tile(_int_bits(self.ptr, n), cap)
        q[ph:total] = np.tile(_int_bits(self.scan, n), cap)
        row = ((p.reshape(nb, 4) << _SHIFT4).sum(1)
               | (q.reshape(nb, 4) << (_SHIFT4 + 4)).sum(1)).astype(np.uint8)
        self._runs[ph] = (row, cap)
        return row

    def __repr__(self) -> str:
        return f"<Layout {self.name} words={self.nwords} ptr={self.ptr:#b}>"


_ONES: dict[int, Layout] = {}


def ones_layout(nwords: int) -> Layout:
    """The conservative layout of an nwords-word slot (every word a pointer)."""
    found = _ONES.get(nwords)
    if found is None:
        m = (1 << nwords) - 1
        found = _ONES[nwords] = Layout(m, m, nwords, "conservative")
    return found


def _write_groups(bitmap: np.ndarray, first: np.ndarray, ph: np.ndarray, lay: Layout) -> None:
    """Write lay's bits for the objects whose first bitmap byte is ``first`` (int64) and first
    word phase ``ph``, one fancy assignment per phase present."""
    phases = (0,) if lay.nwords & 3 == 0 and not ph.any() else range(4)
    for k in phases:
        sel = first if len(phases) == 1 else first[ph == k]
        if not len(sel):
            continue
        byte, keep = lay.phase(k)
        if len(byte) == 1:
            idx = sel
        else:
            idx = (sel[:, None] + np.arange(len(byte), dtype=np.int64)).reshape(-1)
            byte = np.tile(byte, len(sel))
            keep = np.tile(keep, len(sel))
        if keep.any():
            bitmap[idx] = (bitmap[idx] & keep) | byte
        else:
            bitmap[idx] = byte


def _write_run(bitmap: np.ndarray, i: int, p0: int, m: int, lay: Layout) -> None:
    """Write m consecutive slots of lay, the first at word p0 of bitmap byte i: one slice
    of ``run_row``, with a read-modify-write of only the two edge bytes (shared with the
    neighbouring slots when the run does not start or end on a byte). The cached row may
    hold more slots than the run: the edge bytes take only the run's words from it."""
    end = p0 + m * lay.nwords
    nb = (end + 3) >> 2
    vals = lay.run_row(p0, m)[:nb].copy()
    seg = bitmap[i:i + nb]
    keep_first = (0x11 * ((1 << p0) - 1)) & ALL_ONES
    keep_last = (0x11 * (0xF ^ ((1 << (end & 3)) - 1))) & ALL_ONES if end & 3 else 0
    if nb == 1:
        keep_first |= keep_last
        keep_last = 0
    if keep_first:
        vals[0] = (int(vals[0]) & ~keep_first) | (int(seg[0]) & keep_first)
    if keep_last:
        vals[-1] = (int(vals[-1]) & ~keep_last) | (int(seg[-1]) & keep_last)
    seg[:] = vals


def write_layout(arenas: Arenas, p: int, lay: Layout) -> None:
    """Write lay's bits for the one object at p (large objects, freed slots)."""
    arena = arenas.arena_of(p)
    if arena is None:
        raise HeapCorruption(f"heap bitmap: {p:#x} is not in the heap")
    w = (p - arena.base) >> 3
    if w + lay.nwords > WORDS_PER_ARENA:      # a large object across arenas
        _write_bits(arenas, p, lay.nwords, lay.ptr, lay.scan)
        return
    byte, keep = lay.phase(w & 3)
    i = arena.bitmap_off + (w >> 2)
    with WRITE_LOCK:
        seg = arenas.bitmap[i:i + len(byte)]
        if keep[0] or keep[-1]:      # only the edge bytes can hold other objects' bits
            seg[:] = (seg & keep) | byte
        else:
            seg[:] = byte


def set_object_type(arenas: Arenas, p: int, elemsize: int, typ: Type, data_bytes: int) -> None:
    """Write the precise bits of the object at p now (Go's heapBitsSetType)."""
    write_layout(arenas, p, Layout.of(typ, elemsize, data_bytes))


def reset_object(arenas: Arenas, p: int, elemsize: int) -> None:
    """Give a freed typed slot its conservative bits back (all ones)."""
    write_layout(arenas, p, ones_layout(elemsize >> 3))


def reset_slots(arenas: Arenas, s: MSpan, idxs: list[int]) -> None:
    """Give the freed slots ``idxs`` of typed span s all-ones bits; s is no longer one
    layout's span (a free slot may take an untyped object)."""
    if not idxs:
        return
    if s.typed is not True:
        s.typed = True
    lay = ones_layout(s.elemsize >> 3)
    if len(idxs) == 1:
        write_layout(arenas, s.base + idxs[0] * s.elemsize, lay)
        return
    arena = arenas.arena_of(s.base)
    if arena is None:
        raise HeapCorruption(f"heap bitmap: span {s!r} is not in the heap")
    w = ((s.base - arena.base) >> 3) + np.asarray(idxs, dtype=np.int64) * lay.nwords
    with WRITE_LOCK:
        _write_groups(arenas.bitmap, arena.bitmap_off + (w >> 2), w & 3, lay)


def _write_bits(arenas: Arenas, p: int, nwords: int, ptr: int, scan: int) -> None:
    """The general writer (any arena crossing): per arena piece, by unpacking its bytes."""
    bitmap = arenas.bitmap
    with WRITE_LOCK:
        for off, w0, first, n in _arena_pieces(arenas, p, nwords << 3):
            pbits = (ptr >> first) & ((1 << n) - 1)
            sbits = (scan >> first) & ((1 << n) - 1)
            _write_vector(bitmap, off, w0, n, pbits, sbits)


def _write_vector(bitmap: np.ndarray, off: int, w0: int, n: int, pbits: int,
                  sbits: int) -> None:
    lo = w0 >> 2
    hi = (w0 + n + 3) >> 2
    seg = bitmap[off + lo: off + hi]
    bits = np.unpackbits(seg, bitorder="little").reshape(-1, 2, 4)
    ww = np.arange(n) + (w0 - (lo << 2))
    bits[ww >> 2, 0, ww & 3] = _int_bits(pbits, n)
    bits[ww >> 2, 1, ww & 3] = _int_bits(sbits, n)
    seg[:] = np.packbits(bits.reshape(-1), bitorder="little")


# --- typed runs: written when an mcache takes them ------------------------------------


def _run_piece(arenas: Arenas, p: int, m: int, nwords: int) -> tuple[int, int] | None:
    """(bitmap byte index, word phase) of m slots of nwords words from p, or None when they
    do not lie in one arena (then they are written slot by slot)."""
    arena = arenas.arena_of(p)
    if arena is None:
        raise HeapCorruption(f"heap bitmap: {p:#x} is not in the heap")
    w = (p - arena.base) >> 3
    if w + m * nwords > WORDS_PER_ARENA:
        return None
    return arena.bitmap_off + (w >> 2), w & 3


def _write_slots(arenas: Arenas, p: int, m: int, lay: Layout) -> None:
    """lay's bits for m consecutive slots from p: one run slice, or slot by slot across an
    arena's end (caller holds WRITE_LOCK)."""
    at = _run_piece(arenas, p, m, lay.nwords)
    if at is None:
        es = lay.nwords << 3
        for q in range(p, p + m * es, es):
            write_layout(arenas, q, lay)
    else:
        _write_run(arenas.bitmap, at[0], at[1], m, lay)


def type_object(arenas: Arenas, s: MSpan, p: int, lay: Layout) -> None:
    """Write lay's bits for the one object at p of span s, which now holds a typed object
    (a large typed object; a small one past the bound on typed runs)."""
    write_layout(arenas, p, lay)
    s.typed = True


def write_typed_run(arenas: Arenas, s: MSpan, p: int, end: int, lay: Layout) -> None:
    """Write lay's bits for the slots [p, end) of small span s (a typed run an mcache just
    took) and keep s's span type right: a run over the whole span, or one that ends the
    span's slots of a span already holding lay in every other slot, gives s the type lay;
    any other run makes s a plain typed span (unless it is lay's already)."""
    es = s.elemsize
    m = (end - p) // es
    slots_end = s.base + s.nelems * es
    with WRITE_LOCK:
        if p == s.base and end == slots_end:
            nbytes = s.npages << PAGE_SHIFT
            at = _run_piece(arenas, p, nbytes >> 3, 1)
            if at is not None:
                arenas.bitmap[at[0]:at[0] + (nbytes >> 5)] = lay.span_row(s.nelems, nbytes)
                s.typed = lay  # type: ignore[assignment]  # a Layout is its span-type value
                return
        _write_slots(arenas, p, m, lay)
        if s.typed is lay:
            return
        if end == slots_end and span_has_layout(arenas, s, lay):
            s.typed = lay  # type: ignore[assignment]
        else:
            s.typed = True


def untype_slots(arenas: Arenas, s: MSpan, p: int, m: int) -> None:
    """Give the m slots from p of small span s (the unused tail of a typed run given back)
    all-ones bits again, keeping the edge bytes' bits of their neighbours; s is no longer
    one layout's span."""
    with WRITE_LOCK:
        _write_slots(arenas, p, m, ones_layout(s.elemsize >> 3))
        if s.typed is not True:
            s.typed = True


def run_has_layout(arenas: Arenas, p: int, m: int, lay: Layout) -> bool:
    """Whether the m slots from p have lay's bits (a typed run's unused slots; verify)."""
    at = _run_piece(arenas, p, m, lay.nwords)
    if at is None:
        es = lay.nwords << 3
        return all(read_bits(arenas, q, lay.nwords) == (lay.ptr, lay.scan)
                   for q in range(p, p + m * es, es))
    nb = (at[1] + m * lay.nwords + 3) >> 2
    seg = arenas.bitmap[at[0]:at[0] + nb]
    want = seg.copy()
    _write_run(want, 0, at[1], m, lay)
    return bool((seg == want).all())


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
