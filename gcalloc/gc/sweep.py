"""Sweep: free what the last mark left white (Go's mgcsweep.go).

The sweepgen protocol, exactly as Go states it (``h`` is the page heap):

    s.sweepgen == h.sweepgen - 2   the span needs sweeping
    s.sweepgen == h.sweepgen - 1   the span is being swept
    s.sweepgen == h.sweepgen       the span is swept and ready to use
    s.sweepgen == h.sweepgen + 1   cached before sweep began, still cached: sweep on uncache
    s.sweepgen == h.sweepgen + 3   swept, then cached, still cached

``h.sweepgen`` rises by 2 at each mark termination, turning every swept span into one that
needs sweeping without touching it; the mcentral sets swap roles by the same parity. A span is
claimed for sweeping by moving it from ``-2`` to ``-1`` under the lock that guards it (its
mcentral's lock for small spans, ``Sweeper.large_lock`` for large ones), the Python stand-in
for Go's CAS.

Sweeping a small span: the objects allocated but not marked are freed (their specials first),
``allocBits <- gcmarkBits``, fresh zeroed gcmarkBits from the next gcBits epoch, freeindex 0,
allocCache refilled, and the span is filed in its mcentral as partial or full, or given back to
the page heap when empty. A large span is freed whole when its object is unmarked.

Sweeping is lazy: mcentral sweeps the spans it is about to cache, the page heap reclaims before
it grows, an explicit free sweeps its span first (ensureSwept), the next cycle finishes what is
left before it marks, and ``Heap.collect()`` sweeps everything before it returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from gcalloc.errors import HeapCorruption
from gcalloc.gc import bitmap
from gcalloc.gc.view import AllocatorView
from gcalloc.mspan import MASK64, SPAN_IN_USE, MSpan


class Sweeper:
    """The sweep state of one heap."""

    def __init__(self, allocator: AllocatorView) -> None:
        self.allocator = allocator
        self.mheap = allocator.mheap
        self.large_lock = threading.Lock()
        self.unswept: list[MSpan] = []    # spans to sweep this cycle (snapshot at termination)
        # specials hook: fn(span, freed slot list)
        self.on_free_objects: Callable[[MSpan, list[int]], None] | None = None
        self.swept_spans = 0
        self.reclaimed_pages = 0

    # --- the protocol ------------------------------------------------------------------

    def start_cycle(self, in_use: list[MSpan]) -> None:
        """Mark termination: every in-use span now needs sweeping (h.sweepgen += 2)."""
        self.mheap.sweepgen += 2
        self.unswept = list(in_use)
        self.mheap.gcbits.next_epoch()

    def done(self) -> bool:
        return not self.unswept

    def ensure_swept(self, s: MSpan) -> None:
        """Sweep s now if it still needs it (Go's ensureSwept)."""
        sg = self.mheap.sweepgen
        if s.sweepgen == sg - 2:
            self.sweep_claimed(s)

    def sweep_claimed(self, s: MSpan) -> bool:
        """Claim and sweep one span outside mcentral; True if it went back to the heap."""
        if s.sizeclass == 0:
            with self.large_lock:
                if s.state != SPAN_IN_USE or s.sweepgen != self.mheap.sweepgen - 2:
                    return False
                s.sweepgen = self.mheap.sweepgen - 1
                return self.sweep(s, False)
        central = self.allocator.central[s.spanclass]
        with central.lock:
            if s.state != SPAN_IN_USE or s.sweepgen != self.mheap.sweepgen - 2:
                return False
            if s.cached_by is not None:
                raise HeapCorruption(f"unswept span is cached: {s!r}")
            central.remove(s)
            s.sweepgen = self.mheap.sweepgen - 1
            return self.sweep(s, False)

    def sweep_one(self) -> int:
        """Sweep the next unswept span; returns pages freed, or -1 when nothing is left."""
        while self.unswept:
            s = self.unswept.pop()
            npages = s.npages
            if s.sweepgen != self.mheap.sweepgen - 2:
                continue  # swept already (by mcentral, ensure_swept or reclaim)
            return npages if self.sweep_claimed(s) else 0
        return -1

    def finish(self) -> None:
        """Sweep every span still unswept (Go's finishsweep_m)."""
        while self.sweep_one() >= 0:
            pass

    def sweep_batch(self, spans: list[MSpan], marked: np.ndarray, forced: bool) -> None:
        """Sweep, as one batch at mark termination, the uncached spans that need nothing per
        object (no specials, tiny blocks, queued frees or dead typed objects);
        ``marked[i]`` is the number of objects marked in ``spans[i]``. The world is stopped.

        For these spans sweeping is bookkeeping only: the mark bits become the alloc bits,
        fresh mark bits, freeindex 0, allocCache from the first word, the dead counted. Doing
        it here replaces a Python call chain per span at its first refill by a few array
        operations per cycle.

        A span left empty goes back to the page heap after a forced cycle (runtime.GC,
        FreeOSMemory) and when it was already empty when this cycle began (nobody used it for
        a whole cycle). Otherwise it waits in its mcentral, swept and ready: a program that
        drops everything between cycles then refills from swept spans instead of freeing and
        regrowing them every cycle.
        """
        mheap = self.mheap
        sg = mheap.sweepgen
        # A typed span is plain when none of its objects died (no heap bits to reset), as
        # is a large one (a dead large span's bits are rewritten when its pages are reused).
        counts = marked.tolist()
        plain = [i for i, s in enumerate(spans)
                 if s.sweepgen == sg - 2 and s.cached_by is None
                 and not (s.specials or s.tiny_blocks or s.pending_frees)
                 and (not s.typed or not s.sizeclass or counts[i] == s.allocCount)]
        if not plain:
            return
        table = mheap.table
        table.sync()
        spans = [spans[i] for i in plain]
        marked = marked[plain]
        ids = np.fromiter((s.id for s in spans), np.int64, len(spans))
        old_marks = table.markbits[ids]
        # One carve for the fresh mark bits (a dead large span's goes unused, recycled with
        # its chunk two epochs on) ...
        fresh = mheap.gcbits.new_bits_many(table.nelems[ids])
        # ... and allocCache from the first mark word; an unmarked span's is all ones.
        caches = np.full(len(spans), MASK64, np.uint64)
        live = np.flatnonzero(marked)
        caches[live] = ~np.take(mheap.gcbits.bits64, old_marks[live] >> 3)
        # (partial, full) swept set of each span class, looked up once per batch; the loop
        # files spans with push's and remove's own two statements (it runs once per span
        # per cycle, where a call apiece is measurable).
        filing = [(c.swept_set(sg, full=False), c.swept_set(sg, full=True))
                  for c in self.allocator.central]
        freed_counts = self.allocator.stats.small_free_count
        release, large_dead = [], []
        for s, nalloc, bits, cache in zip(spans, marked.tolist(), fresh, caches.tolist()):
            if not s.sizeclass:
                if nalloc:      # a live large object: new mark bits only
                    s.allocBits, s.gcmarkBits, s.sweepgen = s.gcmarkBits, bits, sg
                else:
                    large_dead.append(s)
                continue
            nfreed = s.allocCount - nalloc
            if nfreed < 0:
                raise HeapCorruption(f"sweep: {nalloc} marked > {s.allocCount} allocated: {s!r}")
            if s.central_set is None:
                raise HeapCorruption(f"sweep: uncached span in no mcentral set: {s!r}")
            del s.central_set[s.id]
            was_empty = not s.allocCount
            if nfreed:
                s.needzero = True
                freed_counts[s.spanclass] += nfreed
            s.allocBits = s.gcmarkBits
            s.gcmarkBits = bits
            s.allocCount = nalloc
            s.freeindex = 0
            s.allocCache = cache
            s.sweepgen = sg
            if nalloc == 0 and (forced or was_empty):
                s.central_set = None
                release.append(s)
            else:
                swept = filing[s.spanclass][nalloc == s.nelems]
                swept[s.id] = s
                s.central_set = swept
        # Rows first: a dead large span is released (and its row rewritten) below.
        table.allocbits[ids] = old_marks
        table.markbits[ids] = fresh
        for s in large_dead:
            s.allocCount = 0
            s.sweepgen = sg
            self.allocator.release_large_span(s)
        for s in release:
            mheap.free_span(s)
        self.swept_spans += len(spans)

    def reclaim(self, npages: int) -> None:
        """Sweep until npages pages went back to the heap or nothing is left (Go 1.8
        mheap.go's reclaim: the heap frees before it grows)."""
        freed = 0
        while freed < npages:
            n = self.sweep_one()
            if n < 0:
                return
            freed += n
            self.reclaimed_pages += n

    # --- sweeping one span -------------------------------------------------------------

    def sweep(self, s: MSpan, preserve: bool) -> bool:
        """Sweep a claimed span (sweepgen == h.sweepgen - 1). The caller holds the span's
        lock. With ``preserve`` the span is kept (mcentral is about to use it) and not filed.
        Returns True if the span was given back to the page heap."""
        if s.sweepgen != self.mheap.sweepgen - 1:
            raise HeapCorruption(f"sweep of a span not claimed: {s!r}")
        # The fresh mark bits first: mapping a gcBits chunk can fail, and then only the
        # claim has to be undone.
        try:
            fresh = self.mheap.gcbits.new_bits(s.nelems)
        except BaseException:
            self._unclaim(s)
            raise
        self.swept_spans += 1
        if s.sizeclass == 0:
            return self._sweep_large(s, fresh)
        return self._sweep_small(s, preserve, fresh)

    def _unclaim(self, s: MSpan) -> None:
        """Sweeping s could not start: it is unswept again, filed where unswept spans are
        found (the caller had taken it out of its set). The unswept list may now hold it
        twice; sweep_one skips a span already swept."""
        sg = self.mheap.sweepgen
        s.sweepgen = sg - 2
        self.unswept.append(s)
        if s.sizeclass:
            central = self.allocator.central[s.spanclass]
            full = s.allocCount == s.nelems
            central.push(central.full_unswept(sg) if full else central.partial_unswept(sg), s)

    def _sweep_large(self, s: MSpan, fresh: int) -> bool:
        bits8 = self.mheap.gcbits.bits8
        if int(bits8[s.gcmarkBits]) & 1:
            self._next_bits(s, fresh)
            s.sweepgen = self.mheap.sweepgen
            self.mheap.table.mark_dirty(s)
            return False
        if s.specials and self.on_free_objects is not None:
            self.on_free_objects(s, [0])
        s.allocCount = 0
        s.sweepgen = self.mheap.sweepgen
        self.allocator.release_large_span(s)
        return True

    def _sweep_small(self, s: MSpan, preserve: bool, fresh: int) -> bool:
        gcbits = self.mheap.gcbits
        bits8 = gcbits.bits8
        nbytes = ((s.nelems + 63) >> 6) << 3
        marked = bits8[s.gcmarkBits:s.gcmarkBits + nbytes]
        nalloc = int.from_bytes(marked.tobytes(), "little").bit_count()
        nfreed = s.allocCount - nalloc
        if nfreed < 0:
            raise HeapCorruption(f"sweep: {nalloc} marked > {s.allocCount} allocated: {s!r}")
        if nfreed:
            # Which slots died matters only to specials, typed heap bits and tiny blocks.
            if s.specials or s.typed or s.tiny_blocks:
                self._free_slot_extras(s, self._freed_slots(s, marked))
            s.needzero = True
            self.allocator.stats.small_free_count[s.spanclass] += nfreed
        s.allocCount = nalloc
        s.freeindex = 0
        self._next_bits(s, fresh)
        s.refill_alloc_cache(gcbits.bits64, 0)
        if nalloc == 0:
            s.typed = False
        s.sweepgen = self.mheap.sweepgen
        self.mheap.table.mark_dirty(s)
        if preserve:
            return False
        central = self.allocator.central[s.spanclass]
        if nalloc == 0:
            self.mheap.free_span(s)
            return True
        sg = self.mheap.sweepgen
        if nalloc < s.nelems:
            central.push(central.partial_swept(sg), s)
        else:
            central.push(central.full_swept(sg), s)
        return False

    def _free_slot_extras(self, s: MSpan, freed: list[int]) -> None:
        """What dies with each freed object besides its slot: specials, typed heap bits,
        tiny-block records."""
        if s.specials and self.on_free_objects is not None:
            self.on_free_objects(s, freed)
        if s.typed:
            bitmap.reset_slots(self.mheap.arenas, s, freed)
        if s.tiny_blocks:
            s.tiny_blocks.difference_update(freed)

    def _freed_slots(self, s: MSpan, marked: np.ndarray) -> list[int]:
        """Slots allocated before this sweep and not marked."""
        bits8 = self.mheap.gcbits.bits8
        nbytes = len(marked)
        alloc_bits = np.unpackbits(bits8[s.allocBits:s.allocBits + nbytes],
                                   bitorder="little")[:s.nelems].astype(np.bool_)
        alloc_bits[:s.freeindex] = True
        mark_bits = np.unpackbits(marked, bitorder="little")[:s.nelems].astype(np.bool_)
        return np.flatnonzero(alloc_bits & ~mark_bits).tolist()

    @staticmethod
    def _next_bits(s: MSpan, fresh: int) -> None:
        s.allocBits = s.gcmarkBits
        s.gcmarkBits = fresh
