"""mcentral: the spans of one span class shared by all threads (Go 1.16's mcentral.go).

Spans not cached by any mcache sit in one of four sets, split by whether they have free slots
(partial/full) and whether they are swept in this cycle (swept/unswept). The sets swap roles
every cycle by the parity of sweepgen, exactly as Go indexes them:

    partial_swept(sg)   = partial[sg // 2 % 2]     partial_unswept(sg) = partial[1 - sg//2%2]

so "everything swept last cycle" becomes "unswept this cycle" without moving a span. A set is a
dict (id -> span): O(1) push, pop and removal, which explicit free needs when a full span gets
a free slot.

Invariants: a span is in at most one set (``span.central_set`` names it) and is in none while
an mcache holds it (``span.cached_by``); a cached span's sweepgen is ``h.sweepgen + 3``.
``lock`` guards the sets and the fields of spans not cached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from gcalloc.errors import HeapCorruption
from gcalloc.mheap import MHeap
from gcalloc.mspan import MSpan
from gcalloc.sizeclasses import PAGE_SHIFT, class_to_allocnpages, span_class_sizeclass

if TYPE_CHECKING:   # mcache imports this module
    from gcalloc.mcache import MCache

# Go's spanBudget: how many unswept spans cacheSpan sweeps before it grows instead.
SPAN_BUDGET = 100
# grow takes up to this many bytes of spans from the page heap at once (at most
# GROW_BATCH_MAX spans): a page-heap allocation costs ~11-13 us in Python (bench_pages.py).
GROW_BATCH_BYTES = 64 << 10
GROW_BATCH_MAX = 8


class MCentral:
    """The central free span sets of one span class."""

    __slots__ = ("spanclass", "sizeclass", "npages", "lock", "partial", "full", "mheap",
                 "sweep")

    def __init__(self, spanclass: int, mheap: MHeap,
                 sweep: Callable[[MSpan, bool], bool]) -> None:
        self.spanclass = spanclass
        self.sizeclass = span_class_sizeclass(spanclass)
        self.npages = class_to_allocnpages[self.sizeclass]
        self.lock = threading.Lock()
        self.partial: tuple[dict[int, MSpan], dict[int, MSpan]] = ({}, {})
        self.full: tuple[dict[int, MSpan], dict[int, MSpan]] = ({}, {})
        self.mheap = mheap
        # The GC layer's hooks.sweep_span (gcalloc/hooks.py): spans only become unswept once
        # a collection has run.
        self.sweep = sweep

    # --- the four sets -----------------------------------------------------------------

    def partial_swept(self, sg: int) -> dict[int, MSpan]:
        return self.partial[(sg >> 1) & 1]

    def partial_unswept(self, sg: int) -> dict[int, MSpan]:
        return self.partial[1 - ((sg >> 1) & 1)]

    def full_swept(self, sg: int) -> dict[int, MSpan]:
        return self.full[(sg >> 1) & 1]

    def full_unswept(self, sg: int) -> dict[int, MSpan]:
        return self.full[1 - ((sg >> 1) & 1)]

    def swept_set(self, sg: int, full: bool) -> dict[int, MSpan]:
        """Where a span swept in cycle sg is filed: full_swept or partial_swept."""
        return (self.full if full else self.partial)[(sg >> 1) & 1]

    @staticmethod
    def push(spans: dict[int, MSpan], s: MSpan) -> None:
        spans[s.id] = s
        s.central_set = spans

    @staticmethod
    def pop(spans: dict[int, MSpan]) -> MSpan | None:
        if not spans:
            return None
        _, s = spans.popitem()
        s.central_set = None
        return s

    @staticmethod
    def remove(s: MSpan) -> None:
        if s.central_set is not None:
            del s.central_set[s.id]
            s.central_set = None

    # --- handing spans to mcaches ------------------------------------------------------

    def exchange(self, old: MSpan | None, owner: MCache, alloc_count: list[int]) -> MSpan:
        """mcache refill in one visit: take back ``old`` (the mcache's full span, or None)
        as uncacheSpan does and hand out a span with a free slot as cacheSpan does, under
        one acquisition of the lock. The new span's free slots are counted in
        ``alloc_count[spanclass]`` as if allocated (the mcache's refill accounting).
        Raises OutOfMemory (``old`` is back in this mcentral by then)."""
        with self.lock:
            if old is not None:
                self.uncache_locked(old)
            s = self._find_span_locked()
            if s is not None:
                self._hand_to(owner, s, alloc_count)
                return s
        s = self.grow()
        with self.lock:
            self._hand_to(owner, s, alloc_count)
        # Every path here leaves allocCache agreeing with allocBits at freeindex (grow, sweep
        # and uncache keep it so; the full-unswept path below resets it).
        return s

    def _hand_to(self, owner: MCache, s: MSpan, alloc_count: list[int]) -> None:
        s.cached_by = owner
        s.sweepgen = self.mheap.sweepgen + 3
        alloc_count[self.spanclass] += s.nelems - s.allocCount

    def _find_span_locked(self) -> MSpan | None:
        sg = self.mheap.sweepgen
        s = self.pop(self.partial_swept(sg))
        if s is not None:
            return s
        budget = SPAN_BUDGET
        while budget > 0:
            s = self.pop(self.partial_unswept(sg))
            if s is None:
                break
            budget -= 1
            if self._claim_and_sweep(s, sg):
                return s
            # Otherwise a background sweeper owns the span and will file it itself.
        while budget > 0:
            s = self.pop(self.full_unswept(sg))
            if s is None:
                break
            budget -= 1
            if self._claim_and_sweep(s, sg):
                if s.allocCount < s.nelems:
                    bits64 = self.mheap.gcbits.bits64
                    s.freeindex = s.next_free_index(bits64)
                    if s.freeindex != s.nelems:
                        s.reset_alloc_cache(bits64)
                        return s
            self.push(self.full_swept(sg), s)
        return None

    def _claim_and_sweep(self, s: MSpan, sg: int) -> bool:
        """Claim an unswept span (sweepgen sg-2 -> sg-1) and sweep it, keeping it; False if
        it was not ours to sweep."""
        if s.sweepgen != sg - 2:
            return False
        s.sweepgen = sg - 1
        self.sweep(s, True)
        return True

    def uncache_locked(self, s: MSpan) -> None:
        """Take back a span from an mcache (Go's uncacheSpan), applying frees other threads
        made while it was cached. The caller holds ``lock``."""
        if s.nelems == 0:
            raise HeapCorruption(f"uncache of the empty span: {s!r}")
        sg = self.mheap.sweepgen
        s.cached_by = None
        if s.pending_frees:
            self.apply_pending_frees(s)
        if s.sweepgen == sg + 1:
            # A collection started while the span was cached: sweep it now. Sweep puts it
            # back in the right set (or frees it).
            s.sweepgen = sg - 1
            self.sweep(s, False)
            return
        s.sweepgen = sg
        if s.allocCount == 0 and self.release_if_empty(s):
            return
        self.push(self.swept_set(sg, full=s.allocCount == s.nelems), s)

    def apply_pending_frees(self, s: MSpan) -> int:
        """Apply the frees other threads queued on s; returns how many."""
        pending, s.pending_frees = s.pending_frees, None
        assert pending is not None   # callers apply only when s.pending_frees is non-empty
        gcbits = self.mheap.gcbits
        for index in pending:
            s.free_slot(gcbits.bits8, gcbits.bits64, index)
        return len(pending)

    def release_if_empty(self, s: MSpan) -> bool:
        """Give an uncached span with no objects back to the page heap."""
        if s.allocCount or s.cached_by is not None:
            return False
        self.remove(s)
        self.mheap.free_span(s)
        return True

    def grow(self) -> MSpan:
        """A fresh span of this class from the page heap, zeroed (Go's mcentral.grow).

        Takes a batch of spans in one page-heap call; the spare ones wait, empty, in the
        partial swept set (a sweep gives them back to the page heap if they stay unused).
        """
        count = max(1, min(GROW_BATCH_MAX, (GROW_BATCH_BYTES >> PAGE_SHIFT) // self.npages))
        spans = self.mheap.alloc_spans(self.npages, self.spanclass, count, needzero=True)
        if count > 1:
            with self.lock:
                spare = self.partial_swept(self.mheap.sweepgen)
                for s in spans[1:]:
                    self.push(spare, s)
        return spans[0]
