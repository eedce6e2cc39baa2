"""mcache: a thread's private cache of spans, one per span class (Go's mcache.go).

Go gives each P an mcache so the allocation fast path takes no lock; here each Python thread
gets one on its first allocation (``threading.local``), and gives it back when the thread ends
or the heap closes (``release_all``).

Invariants:
- ``alloc[spc]`` is a span of class spc cached by this mcache only (``span.cached_by`` is this
  mcache) or the shared ``EMPTY_SPAN``, whose zero allocCache and nelems send the fast path to
  ``refill``;
- only the owning thread touches the cached spans' allocation fields (freeindex, allocCache,
  allocCount); other threads that free into a cached span queue the slot on
  ``span.pending_frees`` under the mcentral lock;
- ``tiny`` is 0 or the address of a live 16-byte block in a tiny-class span; bytes from
  ``tiny + tinyoffset`` to its end were never handed out.

Alloc indexes: ``alloc`` and ``runs`` have NUM_ALLOC_INDEXES entries. Index i below
NUM_SPAN_CLASSES is span class i (untyped allocations, the C ABI's buckets); each index from
NUM_SPAN_CLASSES on is one typed fast entry's own span and run (the allocator's
``typed_spc`` maps it to its real span class; a typed run's heap bits are written when the
run is taken, see malloc.py). A cached span's ``run_index`` is the index that caches it; its
``spanclass`` stays its real class (mcentral, stats, sweeping). The lists have their full
length from the start, so a fast path never indexes past them, and at most MAX_TYPED_RUNS
typed entries exist per heap.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import length_hint

from gcalloc.errors import HeapCorruption
from gcalloc.mcentral import MCentral
from gcalloc.mspan import MSpan
from gcalloc.mstats import HeapStats
from gcalloc.sizeclasses import NUM_SPAN_CLASSES

# unsafe.Sizeof(mcache{}) in Go 1.16 on 64-bit, about: charged to mcache_inuse per mcache.
MCACHE_RECORD_BYTES = 1200

# Typed fast entries with a span and run of their own in every mcache (see the module
# comment): each keeps a partly used span per thread, so they are bounded.
MAX_TYPED_RUNS = 32
NUM_ALLOC_INDEXES = NUM_SPAN_CLASSES + MAX_TYPED_RUNS

def _no_untype(s: MSpan, p: int, n: int) -> None:
    """An mcache not attached to an allocator has no typed runs."""


EMPTY_SPAN = MSpan(0)
"""Go's emptymspan: a span with no slots, cached in every empty entry of every mcache."""

EMPTY_RUN = iter(())
"""The run of a span class with none reserved: ``next(EMPTY_RUN, 0)`` is 0."""


class MCache:
    """One thread's span cache."""

    __slots__ = ("alloc", "runs", "tiny", "tinyoffset", "tiny_allocs", "next_sample",
                 "mallocing", "held", "untype")

    def __init__(self) -> None:
        self.alloc: list[MSpan] = [EMPTY_SPAN] * NUM_ALLOC_INDEXES
        # runs[i]: iterator over the addresses reserved in alloc[i] (see mspan)
        self.runs: list = [EMPTY_RUN] * NUM_ALLOC_INDEXES
        # (span, first slot, slots): give the unused slots of a typed run given back their
        # all-ones heap bits (the GC layer's; set by the allocator at attach)
        self.untype: Callable[[MSpan, int, int], None] = _no_untype
        self.tiny = 0             # address of the current tiny block, or 0
        self.tinyoffset = 0       # bytes of the tiny block handed out
        self.tiny_allocs = 0      # tiny allocations not yet flushed into HeapStats
        self.next_sample = 0      # bytes to allocate before the next heap-profile sample
        self.mallocing = False    # inside the allocator (the collector waits for False)
        # alloc index -> the slot its runs handed out last, as of the last collection's
        # flush: what this thread may hold unrooted (a register, in Go). Kept while the
        # class takes no new run: a thread between an allocation and its root may see
        # several cycles go by.
        self.held: dict[int, int] = {}

    def refill(self, spc: int, central: MCentral, stats: HeapStats) -> MSpan:
        """Replace the full span at alloc index spc by one with a free slot of the central's
        class (Go's refill)."""
        s = self.alloc[spc]
        if s.allocCount != s.nelems:
            raise HeapCorruption(f"refill of span with free space remaining: {s!r}")
        old = None
        if s is not EMPTY_SPAN:
            if s.sweepgen != central.mheap.sweepgen + 3:
                raise HeapCorruption(f"bad sweepgen in refill: {s!r}")
            self.alloc[spc] = EMPTY_SPAN
            s.run_end = 0   # its run is used up: that is why we are here
            old = s
        # Every free slot is counted as allocated now; release_all takes back what was not.
        s = central.exchange(old, self, stats.small_alloc_count)
        s.run_index = spc
        self.alloc[spc] = s
        return s

    def release_all(self, centrals: list[MCentral], stats: HeapStats,
                    keep_tiny: bool = False, hold: bool = False) -> int:
        """Give every cached span back and flush local counters (Go's releaseAll). Returns
        the bytes of the slots given back, which refill had counted as allocated.

        ``keep_tiny``: leave the tiny block in place (a collection's flush: the owning thread
        may be parked between its check of ``tiny`` and its use, so the block stays, as a
        root). Thread exit and close drop it. ``hold``: record in ``held`` the slot each run
        handed out last (see give_back_run); else ``held`` is emptied."""
        bits64 = centrals[0].mheap.gcbits.bits64
        unused = 0
        for spc, s in enumerate(self.alloc):
            if s is EMPTY_SPAN:
                continue
            last = self.give_back_run(spc, bits64)
            if last and hold:
                self.held[spc] = last
            self.alloc[spc] = EMPTY_SPAN
            free = s.nelems - s.allocCount
            unused += free * s.elemsize
            central = centrals[s.spanclass]
            with central.lock:
                stats.small_alloc_count[s.spanclass] -= free
                central.uncache_locked(s)
        if not keep_tiny:
            self.tiny = 0
            self.tinyoffset = 0
        if not hold:
            self.held.clear()
        return unused

    def give_back_run(self, spc: int, bits64) -> int:
        """Return the unused part of alloc[spc]'s run to the span and its bytes to the
        sampling countdown (they were charged when the run was reserved). Returns the
        address the run handed out last (its first slot always is), or 0 if there is no
        run: the collector's stand-in for the register holding a just-allocated pointer.
        The unused slots of a typed run get all-ones heap bits back (``untype``): the span
        is still cached here, so nothing takes them in between."""
        run, self.runs[spc] = self.runs[spc], EMPTY_RUN
        s = self.alloc[spc]
        end = s.run_end
        left = s.unreserve(bits64, run)
        if left and spc >= NUM_SPAN_CLASSES:
            self.untype(s, end - left * s.elemsize, left)
        self.next_sample += left * s.elemsize
        return end - (left + 1) * s.elemsize if end else 0

    def run_left(self, s: MSpan) -> int:
        """Slots of s's run not handed out yet (s cached here)."""
        return length_hint(self.runs[s.run_index]) if s.run_end else 0

    def uncounted_slots(self) -> list[tuple[int, int]]:
        """(span class, slots not handed out) of each cached span: free slots and the unused
        run were counted as allocated at refill."""
        return [(s.spanclass, s.nelems - s.allocCount + self.run_left(s))
                for s in self.alloc if s is not EMPTY_SPAN]
