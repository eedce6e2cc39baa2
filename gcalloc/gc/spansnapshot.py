"""The span snapshot: one cycle's numbering of the objects of its in-use spans, and the
per-span tables both mark paths read to turn a candidate pointer into an object (Go 1.16
mbitmap.go's findObject, mspan.isFree and heapBits, as arrays indexed by span id).

Built once per cycle, when the world is stopped, from the page heap's span mirrors
(mspan.py's SpanTable) and arena index; marking never changes a span, so the tables stay
true for the whole cycle. The only table refined during the cycle is ``freeidx`` (see
``refine_freeidx``), and both of its values are correct.

Object numbering: span ``sid``'s slot ``i`` is object ``gbase[sid] + i``, each span's range
rounded up to 64 (``padded``), so that packing one bit per object gives, span by span,
exactly the bytes of its gcmarkBits; ``total`` numbers in all.

Invariants the paths rely on:
- ``rlimit[sid]`` is 0 for every span outside the snapshot, so a pointer into a free span,
  a span not in use, or a faulted (efence) span is dropped: ``in_snapshot`` says the same;
- slots below ``freeidx[sid]`` are allocated; slots at or past it are allocated iff their
  allocBit is set (``alloc_bit``), which is how only allocated objects end marked;
- ``scannable[sid]`` is False for noscan spans, whose objects are marked but never scanned;
- ``typed[sid]``: the span's objects are scanned only at the words whose heap-bitmap
  pointer bit is set (``pointer_bits``); ``layout[sid] = k > 0``: the span's every object
  has ``layouts[k]``'s bits, so only that layout's pointer words are read (no bitmap read);
  the other spans are scanned conservatively;
- ``off * divmul[sid] >> 32 == off // elemsize`` for every offset in a span (0 for spans of
  one object, whose every offset is slot 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gcalloc.addrspace import MEM64, word_index
from gcalloc.arena import ARENA_BASE_OFFSET, LOG_HEAP_ARENA_BYTES, PAGES_PER_ARENA
from gcalloc.gc import bitmap
from gcalloc.mspan import MSpan
from gcalloc.sizeclasses import PAGE_SHIFT

if TYPE_CHECKING:
    from gcalloc.mheap import MHeap

_ARENA_BYTES = PAGES_PER_ARENA << PAGE_SHIFT


class SpanSnapshot:
    """The object numbering and per-span lookup tables of one cycle's ``spans``."""

    def __init__(self, mheap: MHeap, spans: list[MSpan]) -> None:
        self.mheap = mheap
        self.arenas = mheap.arenas
        # SpanTable: its columns are set from SpanTable.FIELDS, which mypy cannot follow.
        self.table: Any = mheap.table
        self.bits8 = mheap.gcbits.bits8
        self.spans = spans
        self.table.sync()
        self._number_objects()
        self._free_index()
        self._heap_range()
        self._span_tables()
        self._row_tables()
        self._page_sid: np.ndarray | None = None

    def _number_objects(self) -> None:
        """ids, padded ranges, total and gbase (see the module comment)."""
        self.ids = ids = np.array([s.id for s in self.spans], dtype=np.int64)
        padded = (self.table.nelems[ids] + 63) & ~63
        self.padded = padded
        self.total = int(padded.sum())
        self.gbase = np.zeros(self.table.capacity, np.int64)
        self.gbase[ids] = np.cumsum(padded) - padded

    def _free_index(self) -> None:
        """freeidx[sid]: slots below it are allocated, so shade checks allocBits only for
        slots at or past it (Go's isFree test) - nelems for spans with no free slot, once
        refine_freeidx has run."""
        ids = self.ids
        self.freeidx = np.zeros(self.table.capacity, np.int64)
        freeindex = np.array([s.freeindex for s in self.spans], dtype=np.int64)
        self.freeidx[ids] = freeindex
        # Raised to nelems for spans with no free slot on the first vector step or when the
        # scalar tables are made: a cycle that marks a handful of objects never pays for it.
        self._unrefined: tuple | None = (ids, self.table.nelems[ids], self.padded, freeindex)

    def _heap_range(self) -> None:
        """[heap_lo, heap_hi), the heap's words as one view, and how to find an arena."""
        arenas = self.arenas.all
        self.arena_base = np.array([a.base for a in arenas], dtype=np.uint64)
        self.arena_bitmap = np.array([a.bitmap_off for a in arenas], dtype=np.int64)
        self.l2_only = self.arenas.l1[0] if len(self.arenas.l1) == 1 else None
        self.heap_lo = min((a.base for a in arenas), default=0)
        # No arena yet (a cycle before the first allocation): an empty heap range, so that
        # every candidate falls outside it.
        self.heap_hi = max(a.base for a in arenas) + _ARENA_BYTES if arenas else 0
        # Arenas laid out in slot order without gaps (the usual case: hints grow the heap
        # upward): then a pointer's page-map index is simply (P - heap_lo) >> PAGE_SHIFT.
        self.contiguous = all(a.base == self.heap_lo + a.slot * _ARENA_BYTES for a in arenas)
        # A view of just the heap, not the whole address space: np.take(..., out=buf) copies
        # through a fresh temporary when its source may overlap buf, and every buffer is in
        # the address space.
        start = word_index(self.heap_lo) if arenas else 0
        self.heap_words = MEM64[start:start + ((self.heap_hi - self.heap_lo) >> 3)]

    def _span_tables(self) -> None:
        """Per span id: typed, object size, divmul, sizes in words, scannable, and each
        span's range relative to heap_lo (rlimit 0: not a span to mark in)."""
        t, ids, cap = self.table, self.ids, self.table.capacity
        self._layout_tables(cap)
        # Spans of one object (large objects, and the biggest size classes): the object is
        # the span's [base, limit) and every offset in it is slot 0 (divmul 0). For a small
        # span of one object limit - base is its elemsize anyway.
        single = t.nelems == 1
        self.objsize = np.where(single, t.limit - t.base, t.elemsize)
        self.in_snapshot = np.zeros(cap, np.bool_)
        self.in_snapshot[ids] = True
        # Go 1.17's divMul: off * divmul >> 32 == off // elemsize for every offset in a span.
        self.divmul = np.where(single, np.uint64(0),
                               np.uint64(0xFFFFFFFF) // np.maximum(t.elemsize, 1) + np.uint64(1))
        # In words: element size, object size (large objects: their requested size).
        self.welem = (t.elemsize >> np.uint64(3)).astype(np.int64)
        self.wsize = (self.objsize >> np.uint64(3)).astype(np.int64)
        self.scannable = t.noscan == 0
        lo = np.uint64(self.heap_lo)
        self.wbase = (t.base.astype(np.int64) - self.heap_lo) >> 3   # base, in heap_words
        self.rbase = (t.base - lo).astype(np.int64)                  # span base - heap_lo
        self.rlimit = np.zeros(cap, np.int64)
        self.rlimit[ids] = (t.limit[ids] - lo).astype(np.int64)

    def _row_tables(self) -> None:
        """The per-span columns the vector path reads together, as rows of one table, so
        that one np.take of 32- or 24-byte rows replaces three or four takes of a column
        (the take's loop per element costs more than the bytes it moves):

        - ``find[sid] = (rlimit, rbase, divmul, gbase)``: findObject's columns;
        - ``scan[sid] = (welem, wbase, wsize)``: where a grey object's words are.

        ``any_typed``: some snapshot span is typed (bitmap-scanned); ``max_wsize``: the most
        words of any snapshot object, so that a step skips the oblet split when none is big;
        ``all_scannable``: no snapshot span is noscan (no tiny or noscan allocation), so
        shade keeps every object it marks without a look at its span."""
        self.find = np.stack([self.rlimit, self.rbase, self.divmul.view(np.int64), self.gbase],
                             axis=1)
        self.scan = np.stack([self.welem, self.wbase, self.wsize], axis=1)
        self.any_typed = bool(self.typed[self.ids].any())
        self.max_wsize = int(self.wsize[self.ids].max(initial=0))
        self.all_scannable = bool(self.scannable[self.ids].all())

    def _layout_tables(self, cap: int) -> None:
        """typed[sid]: scan at the bitmap's pointer bits; layout[sid] k > 0: every object of
        the span has ``layouts[k]``'s bits (a span type, gc/bitmap.py), so the paths read
        only its pointer words (``typed`` is False there)."""
        self.typed = np.zeros(cap, np.bool_)
        self.layout = np.zeros(cap, np.int32)
        self.layouts: list[bitmap.Layout | None] = [None]
        flags = [s.typed for s in self.spans]
        if not any(flags):
            return
        number: dict[int, int] = {}
        kinds = []
        for f in flags:
            if f is True or f is False:
                kinds.append(0)
                continue
            k = number.get(id(f))
            if k is None:
                k = number[id(f)] = len(self.layouts)
                self.layouts.append(f)
            kinds.append(k)
        kind = np.array(kinds, dtype=np.int32)
        self.layout[self.ids] = kind
        self.typed[self.ids] = np.array([f is True for f in flags], dtype=np.bool_)

    # --- freeidx -----------------------------------------------------------------------

    def refine_freeidx(self) -> None:
        """freeidx = nelems for every span whose allocBits are all set (after a sweep that
        kept every object, say), so shade skips their objects' allocation check. Either
        value is correct; this one is cheaper for wide steps. Runs once per cycle."""
        if self._unrefined is None:
            return
        ids, nelems, padded, freeindex = self._unrefined
        self._unrefined = None
        swept = np.flatnonzero(freeindex < nelems)   # fresh spans allocated to the end: none
        full = swept[self._no_free_slot(ids[swept], nelems[swept], padded[swept])]
        self.freeidx[ids[full]] = nelems[full]

    def _no_free_slot(self, ids: np.ndarray, nelems: np.ndarray,
                      padded: np.ndarray) -> np.ndarray:
        """Per span: every slot's allocBit is set (after a sweep that kept every object, say),
        counted with popcounts of each span's allocBits words, padding bits masked off."""
        if not len(ids):
            return np.zeros(0, np.bool_)
        chunks = padded >> 6
        starts = np.cumsum(chunks) - chunks
        words = np.take(self.mheap.gcbits.bits64, np.repeat(
            (self.table.allocbits[ids] >> 3) - starts, chunks) + np.arange(int(chunks.sum())))
        ones = np.add.reduceat(np.bitwise_count(words), starts, dtype=np.int64)
        last = words[starts + chunks - 1]
        rem = (nelems & 63).astype(np.uint64)
        pad = np.where(rem > 0, last >> rem, np.uint64(0))   # bits past nelems
        return ones - np.bitwise_count(pad) == nelems

    def alloc_bit(self, sid: int, idx: int) -> bool:
        """Slot idx of span sid is allocated (its allocBit; for slots at or past freeidx)."""
        off = int(self.table.allocbits[sid])
        return bool((int(self.bits8[off + (idx >> 3)]) >> (idx & 7)) & 1)

    # --- from a heap address to a page-map index and to pointer bits --------------------

    def page_sids(self) -> np.ndarray:
        """The page map of this heap's arenas as int64 (numpy converts narrower index arrays
        on every take), made on the first vector step of a cycle."""
        if self._page_sid is None:
            npages = len(self.arenas.all) * PAGES_PER_ARENA
            self._page_sid = self.arenas.page_span[:npages].astype(np.int64)
        return self._page_sid

    def page_index_general(self, d: np.ndarray) -> np.ndarray:
        """Page-map index of heap offsets d when arenas are not laid out in slot order."""
        P = d.astype(np.uint64) + np.uint64(self.heap_lo)
        if self.l2_only is not None:   # one L2 table (64-bit Linux/macOS): index it directly
            ri = (P - np.uint64(ARENA_BASE_OFFSET)) >> np.uint64(LOG_HEAP_ARENA_BYTES)
            slot = self.l2_only[ri.astype(np.int64)].astype(np.int64) - 1
        else:
            slot = self.arenas.slots_of(P).astype(np.int64) - 1
        # -1 for a pointer inside [heap_lo, heap_hi) but in no arena of this heap.
        inside = slot >= 0
        page = slot * PAGES_PER_ARENA + ((P >> np.uint64(PAGE_SHIFT)).astype(np.int64)
                                         & (PAGES_PER_ARENA - 1))
        return np.where(inside, page, -1)

    def pointer_bits(self, addrs: np.ndarray) -> np.ndarray:
        """The heap-bitmap pointer bit of each word address (typed objects' words)."""
        slot = self.arenas.slots_of(addrs) - 1
        off = (addrs - self.arena_base[slot]) >> np.uint64(3)
        byte = self.arenas.bitmap[self.arena_bitmap[slot] + (off >> np.uint64(2)).astype(np.int64)]
        return ((byte >> (off & np.uint64(3)).astype(np.uint8)) & 1).astype(np.bool_)
