"""The scalar mark path: narrow frontiers (a long linked list has a frontier of one object)
scanned by a loop in Python, one breadth-first level at a time, over the same span snapshot
and mark words as the vectorised path (Go's mgcmark.go scanobject and greyobject, one
object at a time as Go does them).

For one object, numpy's per-call cost dominates, so this path reads the snapshot's tables as
Python lists (copied on the first scalar step of a cycle) and the heap through a memoryview.
The first few objects of a cycle (often all there is: a cycle over garbage marks a root or
two), and every object of a heap whose arenas are not in slot order, take the general step,
which finds each object through the arena index and the span itself.

Invariants kept here, as on the vectorised path: a word that does not point into an
allocated slot of a snapshot span marks nothing (a free slot's mark word becomes -1 on the
table step), so only allocated objects end marked; noscan objects are marked but never
enter the next frontier; typed objects' words are read only where their pointer bit is set
(for a span with a span type: only its layout's pointer words, picked from the unpacked
object without a bitmap read);
a grey object enters exactly one next frontier (one thread: a mark word read as white is
set before the next word is read). Both paths mark the same objects for the same frontier.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from gcalloc.addrspace import ADDRESS_SPACE_BASE as _MEM_BASE
from gcalloc.addrspace import MEM64, word_index
from gcalloc.addrspace import MEM_RAW as _MEM_RAW
from gcalloc.arena import ARENA_L2_BITS, arena_index
from gcalloc.gc.spansnapshot import SpanSnapshot
from gcalloc.mspan import SPAN_IN_USE, MSpan
from gcalloc.sizeclasses import PAGE_SHIFT

FEW_OBJECTS = 8             # a cycle's first scalar objects, up to this many, skip the tables
_WORDS: dict[int, struct.Struct] = {}


def _unpack_words(n: int, view: memoryview, offset: int) -> tuple[int, ...]:
    """n little-endian words at offset of the address-space view (cached struct per n)."""
    st = _WORDS.get(n)
    if st is None:
        st = _WORDS[n] = struct.Struct(f"<{n}Q")
    return st.unpack_from(view, offset)


class ScalarTables(NamedTuple):
    """Python-list copies of the snapshot's lookup arrays (indexing a list is several times
    cheaper than indexing numpy for one element), and the address space as a memoryview."""
    pages: list[int]          # page map of the heap's pages: span id
    rlimit: list[int]
    rbase: list[int]
    divmul: list[int]
    freeidx: list[int]
    gbase: list[int]
    scannable: list[bool]
    sbase: list[int]          # span base address
    selem: list[int]          # element size
    ssize: list[int]          # object size
    typed: list[bool]
    mem: memoryview
    layout: list[int]                    # span type number (0: none)
    pickers: list[Callable[[Sequence[int]], Sequence[int]] | None]   # by layout number


GreyArrays = tuple[np.ndarray, np.ndarray]   # a frontier as (span ids, slots)


def _picker(offsets: list[int]) -> Callable[[Sequence[int]], Sequence[int]]:
    """A function taking an object's words to its pointer words (a span type's)."""
    if len(offsets) == 1:
        only = offsets[0]
        return lambda words: (words[only],)
    return itemgetter(*offsets)


class ScalarPath:
    """Drains narrow frontiers of one cycle into its mark words ``state``, while they are at
    most ``limit`` objects wide. Counts the objects it scanned, marked and words read."""

    def __init__(self, snap: SpanSnapshot, state: np.ndarray, limit: int) -> None:
        self.snap = snap
        self.state = state
        self.limit = limit
        self.objects = self.marked = self.scanned = 0
        self._tables: ScalarTables | None = None

    def drain(self, sids: list[int], idxs: list[int], budget: int | None = None) -> GreyArrays:
        """Scan narrow frontiers, breadth first, until the frontier empties or grows wider
        than ``limit``; return that wide frontier to the vector path. With a budget, also
        return the (narrow) frontier once about ``budget`` words have been scanned."""
        if not self.snap.contiguous or (self._tables is None and len(sids) <= FEW_OBJECTS
                                        and self.objects < FEW_OBJECTS):
            return self._drain_general(sids, idxs)
        return self._drain_tables(sids, idxs, budget)

    def _drain_tables(self, sids: list[int], idxs: list[int],
                      budget: int | None = None) -> GreyArrays:
        """The scalar step over the list copies of the tables (arenas in slot order)."""
        pages, rlimit, rbase, divmul, freeidx, gbase, scannable, sbase, selem, ssize, \
            typed, mv, layout, pickers = self._scalar_tables()
        marks = self.state.data
        lo, span = self.snap.heap_lo, self.snap.heap_hi - self.snap.heap_lo
        unpack, alloc_bit = _unpack_words, self.snap.alloc_bit
        limit = self.limit
        scanned = marked = objects = 0
        stop = 1 << 62 if budget is None else budget
        while sids and len(sids) <= limit and scanned < stop:
            next_sids: list[int] = []
            next_idxs: list[int] = []
            objects += len(sids)
            for sid, idx in zip(sids, idxs):
                size = ssize[sid]
                base = sbase[sid] + idx * selem[sid]
                scanned += size >> 3
                words: Sequence[int]
                k = layout[sid]
                if k:
                    words = pickers[k](unpack(size >> 3, mv, base - _MEM_BASE))  # type: ignore[misc]
                elif typed[sid]:
                    words = self._typed_words(base, size)
                else:
                    words = unpack(size >> 3, mv, base - _MEM_BASE)
                for v in words:
                    d = v - lo
                    if not 0 <= d < span:
                        continue
                    vs = pages[d >> PAGE_SHIFT]
                    if d >= rlimit[vs]:
                        continue
                    vi = ((d - rbase[vs]) * divmul[vs]) >> 32
                    g = gbase[vs] + vi
                    if marks[g]:      # marked, or a free slot seen before
                        continue
                    if vi >= freeidx[vs] and not alloc_bit(vs, vi):
                        marks[g] = -1
                        continue
                    marks[g] = 1
                    marked += 1
                    if scannable[vs]:
                        next_sids.append(vs)
                        next_idxs.append(vi)
            sids, idxs = next_sids, next_idxs
        self.objects += objects
        self.scanned += scanned
        self.marked += marked
        return np.array(sids, dtype=np.int64), np.array(idxs, dtype=np.int64)

    def _scalar_tables(self) -> ScalarTables:
        """The list copies, made on the first table step of a cycle."""
        if self._tables is None:
            sn = self.snap
            sn.refine_freeidx()
            npages = (sn.heap_hi - sn.heap_lo) >> PAGE_SHIFT
            t = sn.table
            self._tables = ScalarTables(
                sn.arenas.page_span[:npages].tolist(), sn.rlimit.tolist(),
                sn.rbase.tolist(), sn.divmul.tolist(), sn.freeidx.tolist(),
                sn.gbase.tolist(), sn.scannable.tolist(), t.base.tolist(),
                t.elemsize.tolist(), sn.objsize.tolist(), sn.typed.tolist(),
                memoryview(_MEM_RAW), sn.layout.tolist(),
                [None if lay is None else _picker(lay.offsets.tolist())
                 for lay in sn.layouts])
        return self._tables

    def _typed_words(self, base: int, size: int) -> list[int]:
        """The words of a typed object at base whose pointer bit is set."""
        i = word_index(base)
        words = MEM64[i:i + (size >> 3)]
        addrs = np.arange(base, base + size, 8, dtype=np.uint64)
        return words[self.snap.pointer_bits(addrs)].tolist()

    # --- the general step: through the arena index and the spans ----------------------

    def _drain_general(self, sids: list[int], idxs: list[int]) -> GreyArrays:
        """One scalar step for a heap whose arenas are not in slot order, or for a cycle's
        first few objects (which then do without the list copies of the tables)."""
        marks = self.state.data
        gbase = self.snap.gbase
        spans = self.snap.mheap.spans
        next_sids: list[int] = []
        next_idxs: list[int] = []
        for sid, idx in zip(sids, idxs):
            s = spans[sid]
            assert s is not None      # a snapshot span
            self.objects += 1
            base = s.base + idx * s.elemsize
            size = s.limit - s.base if s.sizeclass == 0 else s.elemsize
            for v in self._heap_words_of(s, base, size):
                found = self._find_object(v)
                if found is None:
                    continue
                t, i = found
                g = int(gbase[t.id]) + i
                if marks[g]:
                    continue
                marks[g] = 1
                self.marked += 1
                if not t.noscan:
                    next_sids.append(t.id)
                    next_idxs.append(i)
        return np.array(next_sids, dtype=np.int64), np.array(next_idxs, dtype=np.int64)

    def _heap_words_of(self, s: MSpan, base: int, size: int) -> list[int]:
        """The words of the object at base of span s that lie inside [heap_lo, heap_hi)
        (only the pointer words, if s is typed)."""
        i = word_index(base)
        words = MEM64[i:i + (size >> 3)]
        self.scanned += size >> 3
        if s.typed:
            addrs = np.arange(base, base + size, 8, dtype=np.uint64)
            words = words[self.snap.pointer_bits(addrs)]
        lo, hi = self.snap.heap_lo, self.snap.heap_hi
        return [v for v in words.tolist() if lo <= v < hi]

    def _find_object(self, v: int) -> tuple[MSpan, int] | None:
        """findObject for one word: the snapshot span and the allocated slot v points
        into, or None."""
        sn = self.snap
        if not sn.heap_lo <= v < sn.heap_hi:
            return None
        ri = arena_index(v)
        l2 = sn.arenas.l1[ri >> ARENA_L2_BITS]
        if l2 is None:
            return None
        slot = int(l2[ri & ((1 << ARENA_L2_BITS) - 1)])
        if not slot:
            return None
        arena = sn.arenas.all[slot - 1]
        sid = int(sn.arenas.page_span[arena.pages_off + ((v - arena.base) >> PAGE_SHIFT)])
        if not sid or not sn.in_snapshot[sid]:
            return None
        s = sn.mheap.spans[sid]
        if s is None or s.state != SPAN_IN_USE or not s.base <= v < s.limit:
            return None
        idx = (v - s.base) // s.elemsize
        if idx >= s.freeindex and not sn.alloc_bit(sid, idx):
            return None
        return s, idx
