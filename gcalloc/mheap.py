"""mheap: the page heap. Hands out runs of 8 KiB pages as spans and takes them back
(Go's mheap.go; the free-span structures follow Go 1.8's, the growth path Go 1.16's).

Free spans are kept in a sorted set keyed by (npages, base): best fit with the earliest
address on ties is one bisection, and insert/remove are O(log n), so page allocation stays flat
from a hundred free spans to a hundred thousand. A freed span is coalesced with free neighbours,
found through the arenas' page -> span map.

Every page of every arena that has been grown into belongs to exactly one span (in use, manual
or free); pages of the current arena beyond ``cur_base`` belong to none yet. The page map is
exact for every page of every span, so a lookup never sees a stale span.

Spans carry ``needzero`` (memory may be dirty) so that fresh OS memory is never cleared, and
``npreleased``/``unusedsince`` for the scavenger (scavenge.py). Large spans (size class 0) are
also kept in ``busy_large`` for the collector's reclaim.

OS failures: every step that calls the OS (growth, sys_used of released pages, gcBits chunks)
runs before the free set or the spans change, or is undone, so a failure raises with the page
heap as it was (grown at most); see docs/mheap.md, "When the OS refuses".

Locking: ``lock`` guards everything here, including the span fixalloc and the page map. The
collector holds it while it walks spans.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from typing import cast

import numpy as np
from sortedcontainers import SortedList

from gcalloc import os as gos
from gcalloc.arena import HEAP_ARENA_BYTES, Arenas
from gcalloc.errors import HeapCorruption, OutOfMemory
from gcalloc.fixalloc import FixAlloc
from gcalloc.gcbits import GCBits
from gcalloc.hooks import GCHooks
from gcalloc.mspan import (
    MASK64,
    SPAN_DEAD,
    SPAN_FREE,
    SPAN_IN_USE,
    SPAN_MANUAL,
    MSpan,
    SpanTable,
)
from gcalloc.mstats import HeapStats
from gcalloc.persistent import PersistentAlloc
from gcalloc.sizeclasses import PAGE_SHIFT, class_to_size

# What one span record costs in Go 1.16 on 64-bit (unsafe.Sizeof(mspan{})); fixalloc charges
# it to mspan_inuse/mspan_sys so MemStats reads as Go's would.
MSPAN_RECORD_BYTES = 160
# grow asks the arenas for at least this much, in multiples of GROW_QUANTUM (Go 1.8 mheap.go).
GROW_MIN_BYTES = 1 << 20
GROW_QUANTUM = 64 << 10
# Reserved once per heap for gcBits arenas (address space only; mapped 64 KiB at a time).
GC_BITS_REGION_BYTES = 4 << 30


def _free_key(s: MSpan) -> tuple[int, int]:
    return (s.npages, s.base)


class MHeap:
    """The page heap of one Heap."""

    def __init__(self, stats: HeapStats, persistent: PersistentAlloc, hooks: GCHooks) -> None:
        self.lock = threading.Lock()
        self.stats = stats
        self.arenas = Arenas(stats, persistent)
        try:
            self.gcbits = GCBits(GC_BITS_REGION_BYTES, stats.gc_sys)
        except BaseException:
            self.arenas.release()     # a heap that failed to start leaves no reservation
            raise
        self.table = SpanTable()
        # spans[id] is the span record with that id (ids are permanent: records are reused
        # with their id by the fixalloc). spans[0] is None: id 0 means "no span".
        self.spans: list[MSpan | None] = [None]
        self.spanalloc = FixAlloc(self._new_span_record, MSPAN_RECORD_BYTES,
                                  stats.mspan_inuse, stats.mspan_sys, zero=False)
        # (npages, base) of every free span
        self.free: SortedList[tuple[int, int]] = SortedList()
        self.free_by_base: dict[int, MSpan] = {}
        self.busy_large: dict[int, MSpan] = {}   # id -> in-use span of size class 0
        # [cur_base, cur_end): arena space mapped for the heap but not yet made into spans.
        self.cur_base = 0
        self.cur_end = 0
        # Go's sweep generation; see gc/sweep.py. Spans are born swept (sweepgen == this).
        self.sweepgen = 0
        self.pages_in_use = 0   # pages in in-use (object) spans
        # The GC layer's hooks.reclaim (sweep before growing) and hooks.on_new_spans
        # (initialise new spans' heap bits), kept alone: the page heap outlives a dropped
        # Heap (its finalizer holds it), and these two hold the Heap only weakly.
        self.reclaim = hooks.reclaim
        self.on_new_spans = hooks.on_new_spans

    def _new_span_record(self) -> MSpan:
        s = MSpan(len(self.spans))
        self.spans.append(s)
        self.table.ensure(s.id)
        return s

    # --- lookup ------------------------------------------------------------------------

    def span_of(self, p: int) -> MSpan | None:
        """The span holding address p (any state), or None if p is not in the heap."""
        i = self.arenas.page_index(p)
        if i < 0:
            return None
        sid = int(self.arenas.page_span[i])
        return self.spans[sid] if sid else None

    def span_of_heap(self, p: int) -> MSpan | None:
        """The in-use span whose objects cover p, or None (Go's spanOfHeap). Added: the issue
        names inheap, and manual/free spans and the tail past ``limit`` are not heap."""
        s = self.span_of(p)
        if s is None or s.state != SPAN_IN_USE or not s.base <= p < s.limit:
            return None
        return s

    def in_heap(self, p: int) -> bool:
        """Whether p points into a (possibly dead) heap object (Go's inheap)."""
        return self.span_of_heap(p) is not None

    # --- allocation --------------------------------------------------------------------

    def alloc(self, npages: int, spanclass: int, needzero: bool,
              bits_by_caller: bool = False) -> MSpan:
        """A new in-use span of npages pages for span class spanclass (Go's mheap.alloc).

        The span's memory is zero if needzero. ``bits_by_caller``: the caller writes the
        span's heap bits itself before any collection can see the span (a large typed
        object), so the on_new_spans hook does not write them first. Raises OutOfMemory.
        """
        return self.alloc_spans(npages, spanclass, 1, needzero, bits_by_caller)[0]

    def alloc_spans(self, npages: int, spanclass: int, count: int,
                    needzero: bool, bits_by_caller: bool = False) -> list[MSpan]:
        """``count`` adjacent in-use spans of npages pages each, taken from the free spans in
        one step: one lock, one best fit, one clear (mcentral grows by a batch so the per-span
        cost of Python is paid once per batch). Raises OutOfMemory."""
        self.reclaim(npages * count)    # sweep before growing (Go 1.8's reclaim)
        # The bitmaps come first: mapping a gcBits chunk can fail, and nothing is taken yet.
        # Bits of a failed allocation are simply never used (their chunk is recycled).
        sizeclass = spanclass >> 1
        nelems = (npages << PAGE_SHIFT) // class_to_size[sizeclass] if sizeclass else 1
        gcbits = self.gcbits
        bits = ([gcbits.new_bits(nelems), gcbits.new_bits(nelems)] if count == 1
                else gcbits.new_bits_many([nelems] * (2 * count)))
        with self.lock:
            run = self._alloc_span_locked(npages * count)
            spans = [run]
            if count > 1:
                run.npages = npages
                for i in range(1, count):
                    s = self.spanalloc.alloc()
                    s.init(run.base + ((i * npages) << PAGE_SHIFT), npages)
                    s.needzero = run.needzero
                    self.arenas.set_span_pages(s.base, npages, s.id)
                    spans.append(s)
            for i, s in enumerate(spans):
                self._init_in_use(s, spanclass, bits[2 * i], bits[2 * i + 1])
        if needzero and run.needzero:
            ctypes.memset(run.base, 0, (npages * count) << PAGE_SHIFT)
            for s in spans:
                s.needzero = False
        if not bits_by_caller:
            self.on_new_spans(spans)
        return spans

    def _init_in_use(self, s: MSpan, spanclass: int, alloc_bits: int, mark_bits: int) -> None:
        s.state = SPAN_IN_USE
        s.set_span_class(spanclass)
        s.sweepgen = self.sweepgen
        s.freeindex = 0
        s.allocCount = 0
        s.allocBits = alloc_bits
        s.gcmarkBits = mark_bits
        s.allocCache = MASK64
        self.pages_in_use += s.npages
        self.stats.heap_inuse += s.npages << PAGE_SHIFT
        if s.sizeclass == 0:
            self.busy_large[s.id] = s
            self.stats.large_alloc += s.npages << PAGE_SHIFT
            self.stats.large_alloc_count += 1
        self.table.mark_dirty(s)

    def alloc_manual(self, npages: int) -> MSpan:
        """A span of npages pages not holding heap objects (Go's allocManual, for stacks and
        other runtime-managed memory). Its memory is not zeroed. Raises OutOfMemory."""
        with self.lock:
            s = self._alloc_span_locked(npages)
            s.state = SPAN_MANUAL
            nbytes = npages << PAGE_SHIFT
            # Manually managed memory counts in stacks_inuse, not heap_sys (Go 1.16).
            self.stats.heap_sys.sub(nbytes)
            self.stats.stacks_inuse += nbytes
            self.table.mark_dirty(s)
            return s

    def _alloc_span_locked(self, npages: int) -> MSpan:
        """Take npages pages from the free spans, growing the heap if none fits. Transactional:
        the OS calls (growth, sys_used of released pages) come before the free span leaves
        the free set, so a failure raises with the page heap as it was (grown at most)."""
        if npages <= 0:
            raise HeapCorruption(f"mheap: allocation of {npages} pages")
        s = self._best_fit(npages)
        if s is None:
            self._grow(npages)
            s = self._best_fit(npages)
            if s is None:
                raise OutOfMemory(f"mheap: no span of {npages} pages after growing")
        # Released pages come back from the OS before use. Of a fully released span only the
        # part taken needs it; which pages of a partly released span are released is not
        # recorded, so all of it is made Ready (Go 1.8 mheap.go does this for every span).
        whole = s.npreleased != s.npages or s.npages == npages
        if s.npreleased:
            gos.sys_used(s.base, (s.npages if whole else npages) << PAGE_SHIFT)
        self._remove_free(s)
        if s.npreleased:
            used = s.npreleased if whole else npages
            self.stats.heap_released -= used << PAGE_SHIFT
            s.npreleased -= used
        if s.npages > npages:
            s = self._carve_front(s, npages)
        s.unusedsince = 0.0
        self.arenas.set_span_pages(s.base, s.npages, s.id)
        return s

    def _carve_front(self, free: MSpan, npages: int) -> MSpan:
        """Split the first npages off free span ``free`` (already out of the free set, its
        released pages all behind the front) as a new span; the rest keeps its record, so its
        page-map entries stay right as they are."""
        s = self.spanalloc.alloc()
        s.init(free.base, npages)
        s.needzero = free.needzero
        free.base += npages << PAGE_SHIFT
        free.npages -= npages
        self._file_free(free)
        return s

    def _best_fit(self, npages: int) -> MSpan | None:
        """The smallest free span of at least npages (lowest address on ties), left in the
        free set, or None."""
        # irange instead of bisect_left + positional access: positional access makes
        # SortedList build and then maintain its index tree on every add/remove, which made
        # alloc/free 1.5x slower at 10^5 free spans than at 10^2 (bench/bench_pages.py);
        # without it both stay within ~1.2x. Same best fit, same O(log n).
        key = next(self.free.irange((npages, 0)), None)
        if key is None:
            return None
        s = self.free_by_base[key[1]]
        if s.state != SPAN_FREE:
            raise HeapCorruption(f"mheap: span on free list is not free: {s!r}")
        return s

    def _insert_free(self, s: MSpan) -> None:
        """File s as a free span, pointing all its pages at it."""
        self.arenas.set_span_pages(s.base, s.npages, s.id)
        self._file_free(s)

    def _file_free(self, s: MSpan) -> None:
        """Put s in the free set; its pages already point at it."""
        s.state = SPAN_FREE
        s.elemsize = s.npages << PAGE_SHIFT
        s.limit = s.base + s.elemsize
        s.nelems = 0
        self.free.add(_free_key(s))
        self.free_by_base[s.base] = s
        self.table.mark_dirty(s)

    def _remove_free(self, s: MSpan) -> None:
        self.free.remove(_free_key(s))
        del self.free_by_base[s.base]

    def _grow(self, npages: int) -> None:
        """Add at least npages pages of fresh arena space to the free spans (mheap.grow)."""
        ask = max(npages << PAGE_SHIFT, GROW_MIN_BYTES)
        ask = (ask + GROW_QUANTUM - 1) & ~(GROW_QUANTUM - 1)
        if self.cur_base + ask > self.cur_end:
            av, asize = self.arenas.sys_alloc(ask)
            # The whole arena is Prepared, not yet touched: it counts as released (Go 1.16).
            self.stats.heap_released += asize
            if av == self.cur_end:
                self.cur_end = av + asize
            else:
                if self.cur_end > self.cur_base:
                    self._add_fresh_pages(self.cur_base, self.cur_end - self.cur_base)
                self.cur_base, self.cur_end = av, av + asize
        v = self.cur_base
        self.cur_base = v + ask
        self._add_fresh_pages(v, ask)

    def _add_fresh_pages(self, v: int, nbytes: int) -> None:
        """Make a free, released, known-zero span of [v, v+nbytes) and coalesce it."""
        s = self.spanalloc.alloc()
        s.init(v, nbytes >> PAGE_SHIFT)
        s.needzero = False
        s.npreleased = s.npages
        s.unusedsince = time.monotonic()
        self._coalesce_and_insert(s)

    # --- free --------------------------------------------------------------------------

    def free_span(self, s: MSpan) -> None:
        """Return an in-use span to the heap (Go's mheap.freeSpan)."""
        with self.lock:
            if s.state != SPAN_IN_USE:
                raise HeapCorruption(f"mheap: free of span not in use: {s!r}")
            if s.sizeclass == 0:
                del self.busy_large[s.id]
                self.stats.large_free += s.npages << PAGE_SHIFT
                self.stats.large_free_count += 1
            self.pages_in_use -= s.npages
            self.stats.heap_inuse -= s.npages << PAGE_SHIFT
            self._free_span_locked(s)

    def free_manual(self, s: MSpan) -> None:
        """Return a manual span (Go's freeManual)."""
        with self.lock:
            if s.state != SPAN_MANUAL:
                raise HeapCorruption(f"mheap: free_manual of span not manual: {s!r}")
            nbytes = s.npages << PAGE_SHIFT
            self.stats.stacks_inuse -= nbytes
            self.stats.heap_sys.add(nbytes)
            self._free_span_locked(s)

    def _free_span_locked(self, s: MSpan) -> None:
        s.needzero = True
        s.npreleased = 0
        s.unusedsince = time.monotonic()
        s.specials = None
        s.cached_by = None
        s.central_set = None
        s.pending_frees = None
        s.tiny_blocks = None
        self._coalesce_and_insert(s)

    def _coalesce_and_insert(self, s: MSpan) -> None:
        before = self.span_of(s.base - 1) if s.base else None
        if before is not None and before.state == SPAN_FREE:
            self._remove_free(before)
            s.base = before.base
            self._absorb(s, before)
        after = self.span_of(s.base + (s.npages << PAGE_SHIFT))
        if after is not None and after.state == SPAN_FREE:
            self._remove_free(after)
            self._absorb(s, after)
        self._insert_free(s)

    def _absorb(self, s: MSpan, t: MSpan) -> None:
        """Fold free span t, adjacent to s, into s; t's record goes back to the fixalloc."""
        s.npages += t.npages
        s.npreleased += t.npreleased
        s.needzero = s.needzero or t.needzero
        # The merged span is as idle as its most recently used part.
        s.unusedsince = max(s.unusedsince, t.unusedsince)
        t.state = SPAN_DEAD
        self.table.mark_dirty(t)
        self.spanalloc.free(t)

    # --- walking and checking ----------------------------------------------------------

    def live_spans(self) -> Iterator[MSpan]:
        """Every span not dead, in id order. Caller holds lock or the world is stopped."""
        return (s for s in self.spans[1:] if s is not None and s.state != SPAN_DEAD)

    def in_use_spans(self) -> list[MSpan]:
        """Every span holding heap objects (state InUse), in id order, found through the span
        table's state column rather than a walk over every span record ever made. Caller
        holds lock or the world is stopped."""
        self.table.sync()
        spans = self.spans
        # an in-use row's id names a span record, never the None at index 0
        return cast("list[MSpan]",
                    [spans[i] for i in np.flatnonzero(self.table.state == SPAN_IN_USE).tolist()])

    def free_spans(self) -> Iterator[MSpan]:
        return (self.free_by_base[base] for _, base in self.free)

    def verify(self) -> None:
        """Raise HeapCorruption if a page-heap invariant does not hold."""
        with self.lock:
            self._verify_locked()

    def _verify_locked(self) -> None:
        problems: list[str] = []
        arenas = self.arenas
        inuse_pages = released_pages = manual_pages = covered = 0
        for s in self.live_spans():
            covered += s.npages
            first = arenas.page_index(s.base)
            if first < 0:
                problems.append(f"span outside the heap: {s!r}")
                continue
            ids = self._page_ids(s)
            if not (ids == s.id).all():
                problems.append(f"page map does not point every page at {s!r}")
            row = self.table
            row.sync()
            if (int(row.base[s.id]) != s.base or int(row.state[s.id]) != s.state
                    or int(row.elemsize[s.id]) != s.elemsize):
                problems.append(f"span table row disagrees with {s!r}")
            if s.state == SPAN_FREE:
                released_pages += s.npreleased
                if self.free_by_base.get(s.base) is not s:
                    problems.append(f"free span missing from the free set: {s!r}")
                after = self.span_of(s.base + (s.npages << PAGE_SHIFT))
                if after is not None and after.state == SPAN_FREE:
                    problems.append(f"adjacent free spans not coalesced: {s!r} {after!r}")
                if not 0 <= s.npreleased <= s.npages:
                    problems.append(f"npreleased out of range: {s!r}")
            elif s.state == SPAN_IN_USE:
                inuse_pages += s.npages
                if (s.sizeclass == 0) != (self.busy_large.get(s.id) is s):
                    problems.append(f"busy_large disagrees with {s!r}")
            elif s.state == SPAN_MANUAL:
                manual_pages += s.npages
        if len(self.free) != len(self.free_by_base):
            problems.append("free set and free_by_base differ in size")
        # Added: every free-set key must name a free span of that size ("lists hold what
        # their states say"); a stale key would make best fit hand out the wrong run.
        for npages, base in self.free:
            t = self.free_by_base.get(base)
            if t is None or t.state != SPAN_FREE or t.npages != npages:
                problems.append(f"free set entry ({npages}, {base:#x}) names {t!r}")
        for s in self.busy_large.values():
            if s.state != SPAN_IN_USE or s.sizeclass != 0:
                problems.append(f"busy_large holds {s!r}")
        grown_pages = sum(size for _, size in arenas.reservations) >> PAGE_SHIFT
        uncarved = (self.cur_end - self.cur_base) >> PAGE_SHIFT
        if covered + uncarved != grown_pages:
            problems.append(f"spans cover {covered} pages + {uncarved} uncarved, "
                            f"arenas hold {grown_pages}")
        st = self.stats
        if st.heap_inuse != inuse_pages << PAGE_SHIFT or self.pages_in_use != inuse_pages:
            problems.append(f"heap_inuse {st.heap_inuse} != in-use span bytes "
                            f"{inuse_pages << PAGE_SHIFT}")
        if st.heap_released != (released_pages + uncarved) << PAGE_SHIFT:
            problems.append(f"heap_released {st.heap_released} != released pages "
                            f"{(released_pages + uncarved) << PAGE_SHIFT}")
        if st.stacks_inuse != manual_pages << PAGE_SHIFT:
            problems.append(f"stacks_inuse {st.stacks_inuse} != manual span bytes")
        if st.heap_sys.value + st.stacks_inuse != grown_pages << PAGE_SHIFT:
            problems.append(f"heap_sys + stacks_inuse != mapped arena bytes "
                            f"{grown_pages << PAGE_SHIFT}")
        try:
            st.check()
        except HeapCorruption as e:
            problems.append(str(e))
        if problems:
            raise HeapCorruption("page heap: " + "; ".join(problems[:20]))

    def _page_ids(self, s: MSpan):
        """page_span entries of every page of s (a numpy array), across arenas."""
        import numpy as np
        parts = []
        base, npages = s.base, s.npages
        while npages:
            i = self.arenas.page_index(base)
            arena_pages = HEAP_ARENA_BYTES >> PAGE_SHIFT
            first = i % arena_pages
            n = min(npages, arena_pages - first)
            parts.append(self.arenas.page_span[i:i + n])
            base += n << PAGE_SHIFT
            npages -= n
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def release(self) -> None:
        """Return every mapping to the OS. The heap is unusable afterwards. What the OS
        refuses to unmap stays recorded and the first refusal is raised after the rest was
        returned; calling release again retries it."""
        with self.lock:
            # Manual spans' bytes left heap_sys while in use; the arenas go back whole.
            self.stats.heap_sys.add(self.stats.stacks_inuse)
            self.stats.stacks_inuse = 0
            self.spanalloc.clear()
            self.free = SortedList()
            self.free_by_base = {}
            self.busy_large = {}
            self.spans = [None]
            self.cur_base = self.cur_end = 0
            try:
                self.arenas.release()
            finally:
                self.gcbits.release()
