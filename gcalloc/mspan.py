"""mspan: a run of heap pages, and the per-span allocation state (Go's mheap.go mspan).

A span in state InUse holds objects of one span class: ``nelems`` slots of ``elemsize`` bytes
from ``base``. Which slots are taken is recorded the way Go 1.16 records it:

- every slot below ``freeindex`` is allocated;
- a slot at or above ``freeindex`` is allocated iff its bit in ``allocBits`` is set;
- ``allocCache`` holds the complement of allocBits from ``freeindex`` to the end of its 64-bit
  word, shifted so bit 0 is slot ``freeindex`` (a Python int; ctz by ``(x & -x).bit_length()-1``).
- a span cached by an mcache may have a *run*: consecutive free slots the mcache reserved in
  one step (``take_run``: nextFreeIndex continued over the free slots that follow), counted
  in allocCount, below freeindex, already zeroed, ending at ``run_end``. The mcache holds the
  run as a ``range`` iterator; the fast path takes the next address with ``next(it, 0)``, a
  single atomic step under the GIL, and ``unreserve`` takes the rest back (``list(it)``,
  also atomic) when the span leaves the mcache. The slots not yet handed out are the last
  ``length_hint(it)`` before ``run_end``.

So the allocator never writes allocBits: it advances freeindex. allocBits are only rewritten by
sweep (allocBits <- gcmarkBits) and by explicit free, which first writes the bits of the slots
below freeindex it moves back over.

Spans are mirrored in ``SpanTable``: numpy arrays indexed by span id (base, elemsize, nelems,
state, bit offsets) that whole-frontier code (findObject over many pointers, marking) reads.
The mirror is written when a span changes state or bitmaps, never on the allocation fast path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gcalloc.sizeclasses import (
    PAGE_SHIFT,
    class_to_size,
    span_class_noscan,
    span_class_sizeclass,
)

if TYPE_CHECKING:   # annotations only: the GC layer and mcache import this module
    from gcalloc.gc.specials import Special
    from gcalloc.mcache import MCache

# Span states (Go 1.8's mSpanState; Manual is Go's mSpanManual / old mSpanStack).
SPAN_DEAD = 0
SPAN_IN_USE = 1
SPAN_MANUAL = 2
SPAN_FREE = 3
STATE_NAMES = ("dead", "in use", "manual", "free")

MASK64 = (1 << 64) - 1


class MSpan:
    """One span. Records are recycled by fixalloc with their fields kept (zero=False): ``id``
    is permanent and ``sweepgen`` must survive free and reuse (Go 1.8 mheap.go)."""

    __slots__ = (
        "id", "base", "npages", "limit", "state", "spanclass", "sizeclass", "noscan",
        "elemsize", "nelems", "freeindex", "allocCache", "allocBits", "gcmarkBits",
        "allocCount", "sweepgen", "needzero", "specials", "unusedsince", "npreleased",
        "central_set", "cached_by", "pending_frees", "tiny_blocks",
        "run_end", "run_index", "typed", "faulted",
    )

    def __init__(self, sid: int) -> None:
        self.id = sid              # index into SpanTable and into the page -> span map; > 0
        self.base = 0
        self.npages = 0
        self.limit = 0             # end of the last object (small spans), base+size (large)
        self.state = SPAN_DEAD
        self.spanclass = 0
        self.sizeclass = 0
        self.noscan = False
        self.elemsize = 0
        self.nelems = 0
        self.freeindex = 0         # 0 <= freeindex <= nelems; see the module comment
        self.allocCache = 0
        self.allocBits = 0         # byte offset of the alloc bitmap in the heap's GCBits
        self.gcmarkBits = 0        # byte offset of the mark bitmap in the heap's GCBits
        self.allocCount = 0        # allocated slots; == popcount of allocation state
        self.sweepgen = 0          # see the sweepgen protocol in gc/sweep.py
        self.needzero = False      # True iff some byte of the span may be nonzero when free
        # sorted special records, owned by the GC layer
        self.specials: list[Special] | None = None
        self.unusedsince = 0.0     # free spans: when it became free (scavenger)
        self.npreleased = 0        # free spans: pages returned to the OS; <= npages
        # the mcentral set holding this span, if any
        self.central_set: dict[int, MSpan] | None = None
        self.cached_by: MCache | None = None  # the mcache allocating from this span, if any
        # slots freed by other threads while cached
        self.pending_frees: list[int] | None = None
        # slots holding 16-byte tiny blocks, tiny class only
        self.tiny_blocks: set[int] | None = None
        self.run_end = 0           # end of the reserved run (see above), or 0
        self.run_index = 0         # cached: the mcache's alloc index holding it (mcache.py)
        self.typed = False         # a typed object lives here: heap bits not all ones (gc/)
        self.faulted = False       # efence: freed, pages made inaccessible, never reused

    def init(self, base: int, npages: int) -> None:
        """Reset the span to a fresh run of pages (Go's mspan.init)."""
        self.base = base
        self.npages = npages
        self.limit = base + (npages << PAGE_SHIFT)
        self.state = SPAN_DEAD
        self.spanclass = 0
        self.sizeclass = 0
        self.noscan = False
        self.elemsize = npages << PAGE_SHIFT
        self.nelems = 1
        self.freeindex = 0
        self.allocCache = 0
        self.allocCount = 0
        self.specials = None
        self.unusedsince = 0.0
        self.npreleased = 0
        self.central_set = None
        self.cached_by = None
        self.pending_frees = None
        self.tiny_blocks = None
        self.run_end = 0
        self.run_index = 0
        self.typed = False
        self.faulted = False

    def set_span_class(self, spanclass: int) -> None:
        sizeclass = span_class_sizeclass(spanclass)
        self.spanclass = spanclass
        self.sizeclass = sizeclass
        self.noscan = span_class_noscan(spanclass)
        if sizeclass == 0:
            self.elemsize = self.npages << PAGE_SHIFT
            self.nelems = 1
        else:
            self.elemsize = class_to_size[sizeclass]
            self.nelems = (self.npages << PAGE_SHIFT) // self.elemsize
        self.limit = self.base + self.elemsize * self.nelems

    # --- bitmaps -------------------------------------------------------------------------

    def refill_alloc_cache(self, bits64: np.ndarray, which_byte: int) -> None:
        """Load allocCache with the complement of the 64 alloc bits from byte which_byte."""
        word = int(bits64[(self.allocBits + which_byte) >> 3])
        self.allocCache = ~word & MASK64

    def next_free_index(self, bits64: np.ndarray) -> int:
        """The next free slot at or after freeindex, or nelems (Go's nextFreeIndex)."""
        sfreeindex = self.freeindex
        snelems = self.nelems
        if sfreeindex == snelems:
            return sfreeindex
        cache = self.allocCache
        while not cache:
            sfreeindex = (sfreeindex + 64) & ~63
            if sfreeindex >= snelems:
                self.freeindex = snelems
                return snelems
            self.refill_alloc_cache(bits64, sfreeindex >> 3)
            cache = self.allocCache
        bit = (cache & -cache).bit_length() - 1
        result = sfreeindex + bit
        if result >= snelems:
            self.freeindex = snelems
            return snelems
        self.allocCache = cache >> (bit + 1)
        sfreeindex = result + 1
        if sfreeindex & 63 == 0 and sfreeindex != snelems:
            self.refill_alloc_cache(bits64, sfreeindex >> 3)
        self.freeindex = sfreeindex
        return result

    def take_run(self, bits64: np.ndarray, limit: int) -> range:
        """Reserve the next free slot and the free slots that directly follow it, at most
        ``limit`` (>= 1) in all; return their addresses, or an empty range when the span is
        full.

        Go's nextFreeFast/nextFree take one slot per call; this is nextFreeIndex followed by
        the trailing ones of allocCache after that slot, carried across the following allocBits
        words while they are wholly free (a fresh or fully swept span is one run).
        """
        nelems = self.nelems
        if not self.allocCount and not self.freeindex and nelems:
            return self._take_empty(min(nelems, limit))
        i = self.next_free_index(bits64)
        if i == nelems:
            return range(0)
        # allocCache now starts at slot i + 1 (reloaded from the next word if i + 1 is the
        # first slot of one): its trailing ones are the free slots right after i.
        after = i + 1
        cache = self.allocCache
        n = min(((cache + 1) & ~cache).bit_length() - 1, nelems - after, limit - 1)
        end = after + n
        if n:
            if not end & 63 and end - i < limit:
                end = self._extend_run(bits64, end, i + limit)
            self.freeindex = end
            if end >= nelems:
                self.allocCache = 0
            elif after >> 6 == end >> 6:     # still inside the word the cache was loaded from
                self.allocCache = cache >> n
            else:
                self.reset_alloc_cache(bits64)
        self.allocCount += end - i
        elemsize = self.elemsize
        start = self.base + i * elemsize
        self.run_end = start + (end - i) * elemsize
        return range(start, self.run_end, elemsize)

    def _take_empty(self, n: int) -> range:
        """take_run on a span with no object: every alloc bit is clear (allocCount counts
        them), so the first n slots are the run and allocCache is all ones from slot n."""
        self.freeindex = n
        self.allocCount = n
        self.allocCache = MASK64 >> (n & 63) if n < self.nelems else 0
        elemsize = self.elemsize
        self.run_end = self.base + n * elemsize
        return range(self.base, self.run_end, elemsize)

    def _extend_run(self, bits64: np.ndarray, end: int, cap: int) -> int:
        """Carry a run that reached a word boundary through the free slots that follow
        (``end`` is a multiple of 64): all the words up to ``cap`` are read as one int."""
        cap = min(cap, self.nelems)
        if end >= cap:
            return end
        w0 = (self.allocBits >> 3) + (end >> 6)
        taken = int.from_bytes(bits64[w0:w0 + ((cap - end + 63) >> 6)].tobytes(), "little")
        if not taken:
            return cap
        return min(end + (taken & -taken).bit_length() - 1, cap)

    def unreserve(self, bits64: np.ndarray, run) -> int:
        """Take back the slots of ``run`` (this span's run iterator) not handed out yet;
        returns how many. The iterator is exhausted afterwards."""
        left = len(list(run)) if self.run_end else 0
        self.run_end = 0
        if left:
            self.freeindex -= left
            self.allocCount -= left
            self.reset_alloc_cache(bits64)
        return left

    def reset_alloc_cache(self, bits64: np.ndarray) -> None:
        """Make allocCache agree with allocBits at the current freeindex."""
        self.refill_alloc_cache(bits64, (self.freeindex & ~63) >> 3)
        self.allocCache >>= self.freeindex & 63

    def is_free(self, bits8: np.ndarray, index: int) -> bool:
        """Whether slot ``index`` is free (Go's isFree)."""
        if index < self.freeindex:
            return False
        return not (int(bits8[self.allocBits + (index >> 3)]) >> (index & 7)) & 1

    def free_slot(self, bits8: np.ndarray, bits64: np.ndarray, index: int) -> None:
        """Make allocated slot ``index`` free again (explicit free; the caller checked it is
        allocated and that no mcache is allocating from this span concurrently).

        Slots below freeindex are allocated without their alloc bit set, so before moving
        freeindex back to ``index`` the bits of the slots it passes over are written.
        """
        if index < self.freeindex:
            set_bit_range(bits64, self.allocBits, index + 1, self.freeindex)
            self.freeindex = index
        byte = self.allocBits + (index >> 3)
        bits8[byte] = int(bits8[byte]) & ~(1 << (index & 7))
        self.allocCount -= 1
        self.needzero = True    # the slot keeps its old bytes until it is handed out again
        self.reset_alloc_cache(bits64)

    def object_index(self, p: int) -> int:
        """Slot number of the object containing address p (inside the span)."""
        # Python's // on ints costs what Go's divMagic multiply-and-shift saves in Go.
        return (p - self.base) // self.elemsize

    def __repr__(self) -> str:
        return (f"<mspan {self.id} {STATE_NAMES[self.state]} base={self.base:#x} "
                f"npages={self.npages} class={self.sizeclass} noscan={self.noscan} "
                f"elemsize={self.elemsize} nelems={self.nelems} alloc={self.allocCount} "
                f"freeindex={self.freeindex} sweepgen={self.sweepgen}>")


def set_bit_range(bits64: np.ndarray, off: int, lo: int, hi: int) -> None:
    """Set bits [lo, hi) of the bitmap at byte offset ``off`` (8-byte aligned)."""
    while lo < hi:
        word = lo >> 6
        top = min(hi, (word + 1) << 6)
        mask = ((1 << (top - lo)) - 1) << (lo & 63)
        w = (off >> 3) + word
        bits64[w] = int(bits64[w]) | mask
        lo = top


class SpanTable:
    """Numpy mirrors of span fields, indexed by span id, for whole-frontier work.

    Invariant: after ``sync()``, for every span s whose state is not Dead, row s.id equals
    s's fields, and rows of dead spans have state SPAN_DEAD. Row 0 is never used (0 means "no
    span" in page maps). Writers call ``mark_dirty`` (a list append) when a span changes
    state; readers of the arrays call ``sync()`` first, with the heap lock held or the world
    stopped. Batching keeps numpy scalar writes off the span-allocation path.
    """

    # The columns, made by setattr from FIELDS in __init__ and ensure.
    base: np.ndarray
    elemsize: np.ndarray
    nelems: np.ndarray
    limit: np.ndarray
    state: np.ndarray
    noscan: np.ndarray
    allocbits: np.ndarray
    markbits: np.ndarray

    # (column, dtype, the span attribute it mirrors)
    FIELDS = (("base", np.uint64, "base"), ("elemsize", np.uint64, "elemsize"),
              ("nelems", np.int64, "nelems"), ("limit", np.uint64, "limit"),
              ("state", np.uint8, "state"), ("noscan", np.uint8, "noscan"),
              ("allocbits", np.int64, "allocBits"), ("markbits", np.int64, "gcmarkBits"))
    # From this many dirty spans on, sync writes each column with one array assignment
    # (a numpy scalar store costs ~0.2 us, so a row by itself costs ~2 us).
    BULK_SYNC = 16

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self.dirty: list[MSpan] = []
        for name, dtype, _ in self.FIELDS:
            setattr(self, name, np.zeros(capacity, dtype=dtype))

    def ensure(self, sid: int) -> None:
        if sid < self.capacity:
            return
        new_capacity = max(self.capacity * 2, sid + 1)
        for name, dtype, _ in self.FIELDS:
            grown = np.zeros(new_capacity, dtype=dtype)
            grown[:self.capacity] = getattr(self, name)
            setattr(self, name, grown)
        self.capacity = new_capacity

    def mark_dirty(self, s: MSpan) -> None:
        self.dirty.append(s)
        if len(self.dirty) > 4096:   # no reader came by (collector off): stay bounded
            self.sync()

    def sync(self) -> None:
        """Write the rows of every span marked dirty since the last sync."""
        dirty, self.dirty = self.dirty, []
        spans = list(dict.fromkeys(dirty))
        if len(spans) < self.BULK_SYNC:
            for s in spans:
                self.store(s)
            return
        ids = [s.id for s in spans]
        for column, _, attr in self.FIELDS:
            getattr(self, column)[ids] = [getattr(s, attr) for s in spans]

    def store(self, s: MSpan) -> None:
        i = s.id
        for column, _, attr in self.FIELDS:
            getattr(self, column)[i] = getattr(s, attr)
