"""mallocgc: the allocator a Heap offers (Go's malloc.go mallocgc, gccgo's __go_free/mlookup).

    alloc(size) ──► tiny (noscan, < 16 B): bump inside the thread's 16-byte block
               ├──► small (≤ 32 KiB): size class ─► the mcache's run ─► next(run)
               │              └─► _alloc_small: take_run ─► refill ─► mcentral ─► mheap
               └──► large (> 32 KiB): its own span from the page heap (size class 0)

The fast path (tiny block or ``next(run, 0)``) is a few attribute reads, one table lookup and
one builtin call on the thread's own mcache: no lock, no numpy, no ctypes. A *run* is the
stretch of free slots Go's nextFreeFast would hand out one by one from allocCache; the slow
path reserves it in one step, zeroes it if the span may be dirty, and stops it short of the
next heap-profile sample (see mspan). A typed call whose (type, size) is in ``typed_fast``
takes the next slot of that entry's own run (an alloc index past the span classes: see
mcache.py), whose heap bits the GC layer wrote when the run was taken (``typed_run``, inside
the safepoint region of ``_take_run``, so no collection sees the run before its bits); a
typed run given back gives its unused slots all-ones bits back (``untype_run``). Everything
else leaves through ``_alloc_small`` (run used up) or ``_alloc_other`` (size 0, a type not
in ``typed_fast`` yet, large objects, bad arguments).

Zeroing: a span fresh from the OS is zero; ``span.needzero`` says whether a slot may hold old
bytes, and only then is it cleared (``zero=False`` is Go's rawmem: never cleared).

Explicit free and lookup (gccgo's __go_free and mlookup) live in free.py, bound here as
methods.

efence (GCALLOC_DEBUG=efence=1, gccgo's debug.efence): every object gets a span of its own and
a freed span (by free or by sweep) is made inaccessible with sys_fault and never reused, so a
use after free faults at once (where the OS refuses sys_fault, that span is freed normally:
see ``release_large_span``). The runs and tiny blocks stay empty, so every allocation takes
the slow path.

Stopping the world (world.py's ``World``, shared with the collector): slow paths, free and
the calls that read heap memory are safepoints; ``_safepoint`` raises the mcache's
``mallocing`` flag and parks while another thread has the world stopped. A stopper exhausts
the runs (the iterators themselves, so a thread holding one gets 0).

Closing is stopping the world for good: close() stops it, exhausts every run, drops every tiny
block, marks the heap closed and only then unmaps. Every safepoint from then on (and every
thread parked at one) raises HeapClosed, so no allocator code runs on the unmapped memory. A
call already past its fast path's ``next`` when close() stops the world may still return that
address: using it races with close(), as a use after free does in C.

The GC layer plugs in through one ``GCHooks`` object given at construction (hooks.py), all
off the fast path: the slow paths charge the pacer and poll the collector, the sampling
countdown records a profile sample, free sweeps and tells the collector, a typed
allocation is the collector's, and the page heap and centrals sweep through it.

Over 500 lines on purpose: the fast path and the slow paths it falls into (tiny block, run,
refill, large span, sampling, thread-cache attach) share invariants that are read together;
free/lookup (free.py), stop-the-world (world.py) and MemStats (mstats.py) live apart.
"""

from __future__ import annotations

import collections
import contextlib
import math
import operator
import random
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from gcalloc import batch as _batch
from gcalloc import free as _free
from gcalloc import verify as checks
from gcalloc.errors import (
    HeapClosed,
    HeapCorruption,
    InvalidArgument,
    InvalidSize,
)
from gcalloc.fixalloc import FixAlloc
from gcalloc.hooks import GCHooks
from gcalloc.mcache import (
    EMPTY_RUN,
    EMPTY_SPAN,
    MAX_TYPED_RUNS,
    MCACHE_RECORD_BYTES,
    NUM_ALLOC_INDEXES,
    MCache,
)
from gcalloc.mcentral import MCentral
from gcalloc.memclr import memclr
from gcalloc.mheap import MHeap
from gcalloc.mstats import HeapStats, MemStats, memstats
from gcalloc.persistent import PersistentAlloc
from gcalloc.sizeclasses import (
    LARGE_SIZE_DIV,
    MAX_SMALL_SIZE,
    NUM_SPAN_CLASSES,
    PAGE_SHIFT,
    PAGE_SIZE,
    SMALL_SIZE_DIV,
    SMALL_SIZE_MAX,
    TINY_SIZE_CLASS,
    class_to_size,
    make_span_class,
    size_to_class8,
    size_to_class128,
)
from gcalloc.world import World

if TYPE_CHECKING:
    import numpy as np

    from gcalloc.gc.mark import Marker
    from gcalloc.mspan import MSpan

# Go's maxAlloc on 64-bit: the largest allocation the address space could hold.
MAX_ALLOC = 1 << 48
TINY_SPAN_CLASS = int(make_span_class(TINY_SIZE_CLASS, True))
# The largest size the 8-byte-granular table serves (Go's smallSizeMax-8 = 1016), and the
# bias that turns a larger small size into its index in the 128-byte table: Go's
# (size - smallSizeMax + largeSizeDiv - 1) / largeSizeDiv, as (size - 897) >> 7.
SMALL_FAST_MAX = SMALL_SIZE_MAX - SMALL_SIZE_DIV
_CLASS128_BIAS = SMALL_SIZE_MAX - LARGE_SIZE_DIV + 1
# Span class by size for sizes up to SMALL_FAST_MAX, scan and noscan: the fast path's one
# table lookup (Go's size_to_class8[(size + 7) >> 3] with the noscan bit already folded in).
_SCAN_SPC = tuple(int(make_span_class(size_to_class8[(n + 7) >> 3], False))
                  for n in range(SMALL_FAST_MAX + 1))
_NOSCAN_SPC = tuple(int(make_span_class(size_to_class8[(n + 7) >> 3], True))
                    for n in range(SMALL_FAST_MAX + 1))
DEFAULT_MEM_PROFILE_RATE = 512 * 1024
# Sampling disabled: a countdown no allocation can exhaust.
NEVER_SAMPLE = 1 << 62
_NO_RUN = range(0)


class Allocator:
    """The allocator a Heap holds: page heap, centrals, per-thread caches, mallocgc, free.
    ``hooks`` is how it calls the collector (gcalloc/hooks.py); ``efence``: see above."""

    TINY_SPAN_CLASS = TINY_SPAN_CLASS

    def __init__(self, hooks: GCHooks, efence: bool = False) -> None:
        self.hooks = hooks
        self.stats = HeapStats()
        self.persistent = PersistentAlloc(self.stats.other_sys)
        self.mheap = MHeap(self.stats, self.persistent, hooks)
        try:
            self._bits64 = self.mheap.gcbits.bits64   # every span's alloc bits, as words
            self.central = [MCentral(spc, self.mheap, hooks.sweep_span)
                            for spc in range(NUM_SPAN_CLASSES)]
            self._cachealloc = FixAlloc(MCache, MCACHE_RECORD_BYTES, self.stats.mcache_inuse,
                                        self.stats.mcache_sys, reset=MCache.__init__)
            self.mcaches: set[MCache] = set()        # every attached mcache; under mheap.lock
            self._tls = threading.local()
            self.zerobase = self.persistent.alloc(8, 8, None)  # what every size-0 alloc returns
        except BaseException:
            self.mheap.release()      # a failed construction keeps no reservation
            raise
        self._closed = False
        self.unreleased = False  # close() met an OS refusal to unmap: the next close retries
        self._mem_profile_rate = DEFAULT_MEM_PROFILE_RATE
        self._rand = random.Random()
        self._world = World()    # see the module comment
        # The collector's Marker while it marks (it sets and clears this with the world
        # stopped): the slow paths allocate black into it.
        self.marking: Marker | None = None
        # The slot each mcache run handed out last, as of the last flush_mcaches (roots of
        # the cycle that flushed: their threads may be between the allocation and a root).
        self.in_flight: list[int] = []
        self.efence = efence
        self.efence_unprotected = 0   # efence frees the OS refused to fault (see above)
        # Run first by flush_mcaches, world stopped: caches outside the mcaches (the C ABI's
        # thread buckets, capi.py) give their runs back while the spans are still cached.
        self.flush_hooks: list[Callable[[], None]] = []
        # type -> (size, alloc index): typed allocations the fast path takes (filled by the
        # GC layer's alloc_typed hook). The index is a span class (noscan types) or a typed
        # entry's own (typed_index).
        self.typed_fast: dict = {}
        # typed_spc[i - NUM_SPAN_CLASSES]: the real span class of typed alloc index i, and
        # typed_layout[i - NUM_SPAN_CLASSES] the GC layer's layout of its objects (opaque
        # here); typed_keys: the GC layer's key of each index (typed_index)
        self.typed_spc: list[int] = []
        self.typed_layout: list[object] = []
        self.typed_keys: dict[object, int] = {}
        # (span, first slot, end, layout): write the heap bits of a typed run just taken;
        # (span, first slot, slots): give a typed run's unused slots all-ones bits back.
        # The GC layer's (gc/bitmap.py), set before the first mcache attaches.
        self.typed_run: Callable[[MSpan, int, int, object], None] = _no_op
        self.untype_run: Callable[[MSpan, int, int], None] = _no_op

    # --- allocation: the fast path -----------------------------------------------------

    def alloc(self, size: int, type: object = None, noscan: bool = False,
              zero: bool = True) -> int:
        """Allocate ``size`` bytes and return the address (see Heap.alloc for the contract)."""
        try:
            c = self._tls.mcache
        except AttributeError:
            c = self._attach_mcache()
        try:
            # Only the test is guarded: a TypeError from a slow path below must propagate.
            small = size.__class__ is int and type is None and 0 < size <= SMALL_FAST_MAX
        except TypeError:
            small = False   # size is not comparable to an int: _alloc_other says so
        if small:
            if noscan:
                if size < 16:
                    off = c.tinyoffset
                    if not size & 7:
                        off = (off + 7) & -8
                    elif not size & 3:
                        off = (off + 3) & -4
                    elif not size & 1:
                        off = (off + 1) & -2
                    if off + size <= 16 and c.tiny:
                        c.tinyoffset = off + size
                        c.tiny_allocs += 1
                        return c.tiny + off
                    return self._alloc_tiny_block(c, size)
                spc = _NOSCAN_SPC[size]
            else:
                spc = _SCAN_SPC[size]
            p = next(c.runs[spc], 0)
            if p:
                return p
            return self._alloc_small(c, spc, zero)
        if type is not None:
            # A type the GC layer has seen at this size (its alloc_typed hook fills
            # typed_fast): the next slot of the entry's run, whose bits are written.
            try:
                e = self.typed_fast[type]
            except (KeyError, TypeError):   # not seen yet, or unhashable: _alloc_other
                return self._alloc_other(c, size, type, noscan, zero)
            # ``is``: the common small sizes are shared int objects; else compare as ints
            if (e[0] is size or e[0] == size and size.__class__ is int) and not noscan:
                p = next(c.runs[e[1]], 0)
                if p:
                    return p
                if not self.efence:
                    return self._alloc_small(c, e[1], zero)
        return self._alloc_other(c, size, type, noscan, zero)

    # --- allocation: slow paths --------------------------------------------------------

    def typed_index(self, spc: int, key: object, layout: object) -> int:
        """The typed alloc index of the GC layer's ``key`` (span class spc, a scan class,
        objects of ``layout``), made on first use; -1 once there are MAX_TYPED_RUNS (the
        caller then writes each object's bits itself). Every mcache's lists already have
        the index (mcache.py), so the fast path may use it at once."""
        with self.mheap.lock:
            found = self.typed_keys.get(key)
            if found is not None:
                return found
            if len(self.typed_spc) >= MAX_TYPED_RUNS:
                return -1
            self.typed_spc.append(spc)
            self.typed_layout.append(layout)
            found = self.typed_keys[key] = NUM_SPAN_CLASSES + len(self.typed_spc) - 1
            return found

    def alloc_indexed(self, idx: int, zero: bool) -> int:
        """One object from the calling thread's run of alloc index idx (a typed entry's
        first call: the fast path's next slot, or the slow path)."""
        c = self._this_mcache()
        return next(c.runs[idx], 0) or self._alloc_small(c, idx, zero)

    def span_class_of(self, idx: int) -> int:
        """The real span class of alloc index idx."""
        return idx if idx < NUM_SPAN_CLASSES else self.typed_spc[idx - NUM_SPAN_CLASSES]

    def _alloc_small(self, c: MCache, spc: int, zero: bool) -> int:
        """The run is used up: reserve the next one (refilling the mcache if the span is
        full), hand out its first slot, maybe start a cycle."""
        if self.efence:
            return self._alloc_large(c, class_to_size[spc >> 1], bool(spc & 1), True)
        self._safepoint(c)
        try:
            p, due = self._take_run(c, spc, zero)
        finally:
            c.mallocing = False
        if due:
            self.hooks.gc_poll(p)
        return p

    def _take_run(self, c: MCache, spc: int, zero: bool) -> tuple[int, bool]:
        """At a safepoint: reserve the next run of free slots of class spc, zero it if the
        span may be dirty, charge it to the sampling countdown and keep all but its first
        slot as the mcache's run. Returns (first slot, whether the mcache refilled and the
        pacer says the heap reached its goal: the caller polls the collector then).

        The run stops short of the next heap-profile sample, so the sampled object is always
        the first slot of a run, here. While a collection marks, runs are one slot long and
        each is allocated black. spc is an alloc index (mcache.py): a typed one's run gets
        its heap bits here, before any collection can see it (``typed_run``)."""
        real = self.span_class_of(spc)
        elemsize = class_to_size[real >> 1]
        limit = c.next_sample // elemsize if self.marking is None else 1
        s = c.alloc[spc]
        # freeindex == nelems: the span is full (the usual reason to be here)
        run = s.take_run(self._bits64, limit or 1) if s.freeindex < s.nelems else _NO_RUN
        due = False
        if not run:
            self.check_open()
            s = c.refill(spc, self.central[real], self.stats)
            due = self.hooks.charge_live((s.nelems - s.allocCount) * elemsize)
            run = s.take_run(self._bits64, limit or 1)
            if not run:
                raise HeapCorruption(f"no free slot after refill: {s!r}")
        p = run.start
        end = s.run_end
        if s.needzero:
            start = p if zero else p + elemsize
            memclr(start, end - start)
        c.next_sample -= end - p
        if c.next_sample < 0:
            self._sampled(c, p, elemsize)
        if spc >= NUM_SPAN_CLASSES:
            self.typed_run(s, p, end, self.typed_layout[spc - NUM_SPAN_CLASSES])
        c.runs[spc] = iter(range(p + elemsize, end, elemsize))
        if self.marking is not None:
            self.marking.allocated_black(p)
        return p, due

    def _alloc_tiny_block(self, c: MCache, size: int) -> int:
        """Start a new 16-byte tiny block and hand out its first ``size`` bytes. The block is
        a 16-byte noscan object, taken as any other: from the run, else the slow path.

        This is a safepoint: until ``c.tiny`` holds the block, nothing roots it, so no
        collection may start in between."""
        if self.efence:
            return self._alloc_large(c, size, True, True)
        self._safepoint(c)
        try:
            p = next(c.runs[TINY_SPAN_CLASS], 0)
            due = False
            if not p:
                p, due = self._take_run(c, TINY_SPAN_CLASS, True)
            s = c.alloc[TINY_SPAN_CLASS]      # the span p came from (no refill since)
            if s.tiny_blocks is None:
                s.tiny_blocks = set()
            s.tiny_blocks.add((p - s.base) >> 4)
            # Keep whichever block has more room left (Go's replacement rule).
            if size < c.tinyoffset or not c.tiny:
                c.tiny = p
                c.tinyoffset = size
        finally:
            c.mallocing = False
        # Only now may a cycle start: the block is recorded and, as c.tiny, a root.
        if due:
            self.hooks.gc_poll(p)
        return p

    def _alloc_other(self, c: MCache, size: object, type: object, noscan: bool,
                     zero: bool) -> int:
        """Everything the fast path does not take: checks, size 0, types, large objects."""
        self.check_open()
        size = self.check_size(size)
        if type is not None:
            return self.hooks.alloc_typed(size, type, noscan, zero)
        if size == 0:
            return self.zerobase
        if size <= SMALL_FAST_MAX:
            return self.alloc(size, None, noscan, zero)
        if size <= MAX_SMALL_SIZE:
            spc = (size_to_class128[(size - _CLASS128_BIAS) >> 7] << 1) | (1 if noscan else 0)
            return next(c.runs[spc], 0) or self._alloc_small(c, spc, zero)
        return self._alloc_large(c, size, noscan, zero)

    @staticmethod
    def check_size(size: object) -> int:
        if isinstance(size, bool):
            raise InvalidArgument("size must be an integer, not bool")
        try:
            n = operator.index(size)  # type: ignore[arg-type]  # TypeError is the check
        except TypeError:
            raise InvalidArgument(f"size must be an integer, not {type(size).__name__}") from None
        if n < 0:
            raise InvalidSize(f"negative allocation size {n}")
        if n > MAX_ALLOC:
            raise InvalidSize(f"allocation size {n:#x} exceeds the maximum {MAX_ALLOC:#x}")
        return n

    def alloc_large_typed(self, size: int, zero: bool, write: Callable[[MSpan], None]) -> int:
        """A scan object over 32 KiB whose heap bits ``write`` (the GC layer's) writes inside
        the safepoint region, before any collection can see the object: all of the span's
        bits (the span's on_new_spans hook is skipped, so they are written once)."""
        return self._alloc_large(self._this_mcache(), size, False, zero, write)

    def _alloc_large(self, c: MCache, size: int, noscan: bool, zero: bool,
                     write: Callable[[MSpan], None] | None = None) -> int:
        """A span of its own for an object over 32 KiB (Go's largeAlloc)."""
        npages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        self._safepoint(c)
        try:
            # The object owns its whole span: usable_size, lookup and the collector's scan
            # all cover the page-rounded size (s.limit, set by the span class).
            s = self.mheap.alloc(npages, make_span_class(0, noscan), needzero=zero,
                                 bits_by_caller=write is not None)
            s.freeindex = 1
            s.allocCount = 1
            with self.mheap.lock:
                self.mheap.table.mark_dirty(s)
            if write is not None:
                write(s)
            due = self.hooks.charge_live(npages << PAGE_SHIFT)
            if self.marking is not None:
                self.marking.allocated_black(s.base)
            # Go 1.16: size = span.elemsize before profiling, for large objects too.
            c.next_sample -= npages << PAGE_SHIFT
            if c.next_sample < 0:
                self._sampled(c, s.base, npages << PAGE_SHIFT)
        finally:
            c.mallocing = False
        if due:
            self.hooks.gc_poll(s.base)
        return s.base

    def alloc_many(self, size: int, n: int, noscan: bool
                   ) -> tuple[np.ndarray, list[MSpan], int, bool]:
        """Heap.alloc_many's allocator half (batch.py, Boehm's GC_malloc_many): n zeroed
        objects of ``size`` (> 0) bytes carved from whole spans at once. Returns (addresses,
        spans, element size, whether to poll the collector): the caller roots the addresses
        before it polls, holding the collector's lock so that no cycle starts in between."""
        c = self._this_mcache()
        self._safepoint(c)
        try:
            self.check_open()
            return _batch.carve(self, c, size, n, noscan)
        finally:
            c.mallocing = False

    # --- stopping the world ------------------------------------------------------------

    def _safepoint(self, c: MCache) -> None:
        """Enter a slow path: park here while another thread has the world stopped; raise
        HeapClosed once the heap is closed."""
        c.mallocing = True
        if self._world.stopped:
            self._world.park(c)

    def _enter(self) -> MCache | World | None:
        """Enter a safepoint region: no stopper (a collection, close()) runs until
        ``_leave`` of what this returns. For public calls that read heap memory without being
        a slow path. The region must not allocate or free (their slow paths clear the flag)
        nor take the collector lock (a collection holding it waits for this thread)."""
        try:
            c = self._tls.mcache
        except AttributeError:
            # A thread that never allocated has no flag to raise (and gets no mcache for
            # reading): it stops the world instead, unless it has already.
            if self._world.stopper == threading.get_ident():
                return None
            self.stop_the_world()
            return self._world
        if c.mallocing:
            return None     # inside a region already: the outer one holds the flag
        self._safepoint(c)
        return c

    def _leave(self, entered: MCache | World | None) -> None:
        if isinstance(entered, MCache):
            entered.mallocing = False
        elif entered is not None:
            self.start_the_world()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The block as a safepoint region (see _enter)."""
        entered = self._enter()
        try:
            yield
        finally:
            self._leave(entered)

    def stop_the_world(self) -> None:
        """Wait until no other thread is inside a safepoint region; park the ones that arrive.
        Raises HeapClosed once the heap is closed."""
        self._world.stop(self.mcaches, getattr(self._tls, "mcache", None))

    def start_the_world(self) -> None:
        self._world.start()

    def _this_mcache(self) -> MCache:
        try:
            return self._tls.mcache
        except AttributeError:
            return self._attach_mcache()

    # --- heap profile sampling (the countdown; the GC layer records the sample) ---------

    @property
    def mem_profile_rate(self) -> int:
        """Average bytes allocated between heap-profile samples; 0 off, 1 every allocation."""
        return self._mem_profile_rate

    @mem_profile_rate.setter
    def mem_profile_rate(self, rate: int) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise InvalidArgument("mem_profile_rate must be an int")
        if rate < 0:
            raise InvalidSize(f"mem_profile_rate must be >= 0, got {rate}")
        with self.inside():
            self._mem_profile_rate = rate
            # Give back the calling thread's runs so the new rate governs its very next
            # allocation (a run is handed out without consulting the countdown). Other
            # threads see the new rate when their current runs end.
            mine = getattr(self._tls, "mcache", None)
            if mine is not None:
                bits64 = self.mheap.gcbits.bits64
                for spc, s in enumerate(mine.alloc):
                    if s is not EMPTY_SPAN:
                        mine.give_back_run(spc, bits64)
            for c in list(self.mcaches):
                c.next_sample = self.next_sample()

    def next_sample(self) -> int:
        """Bytes until the next sample: exponential with mean mem_profile_rate (Go's
        nextSample/fastexprand), so sampling is a Poisson process over allocated bytes."""
        rate = self._mem_profile_rate
        if rate == 0:
            return NEVER_SAMPLE
        if rate == 1:
            return 0
        u = self._rand.random()
        return int(-math.log(1.0 - u) * rate)

    def _sampled(self, c: MCache, p: int, size: int) -> None:
        c.next_sample = self.next_sample()
        if self._mem_profile_rate:
            self.hooks.on_sample(p, size)

    # --- per-thread caches -------------------------------------------------------------

    def _attach_mcache(self, guarded: bool = True) -> MCache:
        """A new mcache for the calling thread. ``guarded=False``: not given back when the
        thread's Python state ends (the C ABI attaches one for a C thread, whose state ends
        after every callback, and detaches it when the thread exits)."""
        with self.mheap.lock:
            self.check_open()   # under the lock: close() drops the mcaches under it
            c = self._cachealloc.alloc()
            c.next_sample = self.next_sample()
            c.untype = self.untype_run
            self.mcaches.add(c)
        self._tls.mcache = c
        if guarded:
            guard = _ThreadGuard()
            weakref.finalize(guard, _detach_mcache, weakref.ref(self), c)
            self._tls.guard = guard
        return c

    def detach_mcache(self, c: MCache) -> None:
        """Give a thread's cache back: its spans to the centrals, its counts to the stats."""
        if self._closed or c not in self.mcaches:
            return
        try:
            self._safepoint(c)
        except HeapClosed:
            return      # closed meanwhile: close() dropped every mcache
        try:
            self._release_mcache(c)
        finally:
            c.mallocing = False
        with self.mheap.lock:
            self.mcaches.discard(c)
            self._cachealloc.free(c)

    def _release_mcache(self, c: MCache, keep_tiny: bool = False, hold: bool = False) -> None:
        unused = c.release_all(self.central, self.stats, keep_tiny, hold)
        if unused:
            self.hooks.charge_live(-unused)
        with self.mheap.lock:
            self.stats.tiny_allocs += c.tiny_allocs
            c.tiny_allocs = 0

    def flush_mcaches(self, started_by: Sequence[int] = ()) -> None:
        """Return every thread's cached spans and runs (the world must be stopped: Go's
        flushallmcaches at the start of a collection). Tiny blocks stay: a parked thread may
        be halfway through handing one out, so the collector treats them as roots. So is
        the slot each other thread's runs handed out last (``in_flight``, from each mcache's
        ``held``): that thread may not have rooted it yet (Heap.new roots its object after
        the allocation returns). Of the collecting thread's, only the object of the
        allocation that started the cycle (``started_by``; none for runtime.GC): that thread
        has not rooted it yet, and the next cycle may come before it has."""
        for hook in self.flush_hooks:
            hook()
        mine = getattr(self._tls, "mcache", None)
        held: list[int] = []
        for c in list(self.mcaches):
            self._release_mcache(c, keep_tiny=True, hold=True)
            if c is mine:
                c.held = {spc: p for spc, p in c.held.items() if p in started_by}
            held.extend(c.held.values())
        self.in_flight = held

    # --- explicit free and lookup (free.py) -----------------------------------------------

    def free(self, p: int) -> None:
        """Free the object starting at p (gccgo's __go_free). See Heap.free."""
        p = _free.check_addr(p)
        if p == 0 or p == self.zerobase:
            return
        c = self._this_mcache()
        self._safepoint(c)
        try:
            _free.free_at_safepoint(self, c, p)
        finally:
            c.mallocing = False

    def lookup(self, p: int) -> tuple[int, int] | None:
        """(base, size) of the object holding p, or None (gccgo's mlookup)."""
        p = _free.check_addr(p)
        entered = self._enter()   # not inside(): lookup is called often enough to mind
        try:
            return _free.lookup_in_region(self, p)
        finally:
            self._leave(entered)

    def usable_size(self, p: int) -> int:
        """Bytes usable at object start p. See Heap.usable_size."""
        p = _free.check_addr(p)
        with self.inside():
            return _free.usable_size_in_region(self, p)

    find_object = _free.find_object
    release_large_span = _free.release_large_span
    check_addr = staticmethod(_free.check_addr)

    # --- statistics --------------------------------------------------------------------

    def read_memstats(self) -> MemStats:
        """A snapshot of the heap's statistics (Go's ReadMemStats)."""
        with self.inside(), self.mheap.lock:
            return memstats(self.stats, self.mcaches, self.hooks.gc_memstats())

    # --- verify and close --------------------------------------------------------------

    def verify(self) -> None:
        """Raise HeapCorruption if an allocator invariant is broken (call with no other
        thread allocating)."""
        with self.inside():
            self.mheap.verify()
            problems: list[str] = []
            with self.mheap.lock:
                spans = self.mheap.in_use_spans()
                caches = list(self.mcaches)
            for s in spans:
                problems.extend(checks.span_problems(self, s))
                problems.extend(checks.sweep_problems(self, s))
            for c in caches:
                problems.extend(checks.mcache_problems(self, c))
            for central in self.central:
                problems.extend(checks.central_problems(central))
        if problems:
            raise HeapCorruption("allocator: " + "; ".join(problems[:20]))

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        """Raise HeapClosed once the heap is closed: the one closed-heap check."""
        if self._closed:
            raise HeapClosed("heap is closed")

    def close(self) -> None:
        """Return every mapping to the OS. Later calls raise HeapClosed; close is idempotent,
        except that a close the OS refused an unmap to (SysMemoryError) is retried."""
        if self._closed and not self.unreleased:
            return
        if self._closed or self.shut_down():
            self.release_memory()

    def shut_down(self) -> bool:
        """close()'s first half: stop the world for good (waiting for a collection in
        progress and for every thread inside a safepoint region), so that every later call,
        and every thread parked at a safepoint, raises HeapClosed. The memory is still
        mapped. False if the heap was closed already."""
        try:
            self.stop_the_world()
        except HeapClosed:
            return False
        with self.mheap.lock:
            for c in self.mcaches:
                for run in c.runs:
                    collections.deque(run, maxlen=0)   # a thread holding it gets 0: slow path
                c.runs = [EMPTY_RUN] * NUM_ALLOC_INDEXES
                c.alloc = [EMPTY_SPAN] * NUM_ALLOC_INDEXES
                c.tiny = c.tinyoffset = 0
            self.mcaches.clear()
            self._closed = True
        self._world.close()
        return True

    def release_memory(self) -> None:
        """close()'s second half, after shut_down: unmap. Everything is returned that the OS
        takes back; a refusal is raised afterwards and what was refused stays recorded
        (``unreleased``) for the next close()."""
        self.unreleased = True
        try:
            self.mheap.release()
        finally:
            self._cachealloc.clear()
            self.persistent.release_all()
        self.unreleased = False


class _ThreadGuard:
    """Lives in a thread's local storage; when the thread ends, it dies and its finalizer gives
    the thread's mcache back."""

    __slots__ = ("__weakref__",)


def _no_op(*_args: object) -> None:
    pass


def _detach_mcache(allocator_ref: weakref.ref, c: MCache) -> None:
    allocator = allocator_ref()
    if allocator is not None:
        allocator.detach_mcache(c)
