"""Heap: the object a user holds. It wires the layers together: the allocator (mallocgc, the
page heap, the scavenger) below, the collector (gc/) above it, and the public calls.

A Heap owns real memory: every address it returns is a mapping made through gcalloc.os, and
``close()`` (or leaving its ``with`` block) returns every mapping to the OS. Many heaps can live
in one process; each has its own arenas, metadata regions, thread caches and collector.

The Heap holds an Allocator and a Collector (composition: neither is a base class) and builds
the one GCHooks (hooks.py) through which the allocator calls up: sweeping, pacing, explicit
free (typed slots get conservative heap bits back), new spans (scan spans start with
all-pointer heap bits), typed allocation (precise bits). See docs/architecture.md.

Over 500 lines on purpose: it is the whole public API, and each call's docstring is its
contract (arguments, exceptions), which the README's table is checked against.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import weakref
from collections.abc import Callable, Iterator
from operator import length_hint
from typing import Any

import numpy as np

from gcalloc.addrspace import ADDRESS_SPACE_BASE, ADDRESS_SPACE_END
from gcalloc.arena import LOG_HEAP_ARENA_BYTES
from gcalloc.capi import CApi
from gcalloc.debug import DebugFlags, parse_debug, parse_gogc, parse_memlimit
from gcalloc.errors import (
    HeapCorruption,
    InvalidArgument,
    InvalidRootRange,
    InvalidSize,
    NotHeapPointer,
)
from gcalloc.free import check_addr, find_object
from gcalloc.gc import bitmap, pprof
from gcalloc.gc.batch import rooted_array, type_batch
from gcalloc.gc.finalizer import Finalizers
from gcalloc.gc.memlimit import MAX_INT64, MemLimitStats, check_limit
from gcalloc.gc.mgc import Collector
from gcalloc.gc.mprof import MemProfiler, MemProfileRecord
from gcalloc.gc.pacer import check_gc_percent
from gcalloc.gc.roots import Handle, align_range
from gcalloc.gc.specials import Specials
from gcalloc.gc.types import Type, check_array, ctype_size, type_of
from gcalloc.gc.weak import Cleanup, WeakAndCleanups, WeakPointer
from gcalloc.hooks import GCHooks
from gcalloc.malloc import MAX_ALLOC, Allocator
from gcalloc.mcache import EMPTY_SPAN
from gcalloc.mspan import SPAN_IN_USE, MSpan
from gcalloc.mstats import MemStats
from gcalloc.os.probe import readable
from gcalloc.scavenge import Scavenger, scavenge
from gcalloc.sizeclasses import (
    MAX_SMALL_SIZE,
    NUM_SPAN_CLASSES,
    PAGE_SHIFT,
    class_to_size,
    make_span_class,
    size_to_class,
)


class Heap:
    """A managed, garbage-collected heap over OS memory: Go's allocator and collector.

    ``Heap(gc_percent=None, *, scavenger=None, debug=None)``: ``gc_percent`` is GOGC (default
    from GCALLOC_GOGC, else 100; negative: no automatic collections); ``scavenger=True`` starts
    the background scavenger; ``debug`` overrides GCALLOC_DEBUG (same format).

    Every argument is checked before any memory is taken: InvalidArgument for a gc_percent
    that is not an int, a scavenger that is not a bool or None, a debug that is not a str or
    None; ConfigError for a malformed GCALLOC_DEBUG, GCALLOC_GOGC or debug string.

    The Heap holds its Allocator (``_alloc``) and Collector (``_gc``) and shows only the
    public calls below; ``alloc``, ``free``, ``lookup`` and ``usable_size`` are the
    allocator's own bound methods on each instance (one call, no wrapper), documented here.
    """

    def __init__(self, gc_percent: int | None = None, *, scavenger: bool | None = None,
                 debug: str | None = None) -> None:
        if scavenger is not None and not isinstance(scavenger, bool):
            raise InvalidArgument(f"scavenger must be a bool or None, not "
                                  f"{type(scavenger).__name__}")
        self._debug: DebugFlags = parse_debug(debug)
        gogc = check_gc_percent(parse_gogc() if gc_percent is None else gc_percent)
        memlimit = parse_memlimit()
        # The one place the layers meet: the allocator calls the collector only through
        # these hooks. The page heap's two hold the Heap weakly: the page heap outlives a
        # dropped Heap (the finalizer below holds it).
        hooks = GCHooks(
            sweep_span=self._sweep_span, ensure_swept=self._ensure_swept,
            charge_live=self._charge_live, gc_poll=self._gc_poll,
            on_sample=self._on_sample, on_free=self._on_free, alloc_typed=self._alloc_typed,
            gc_memstats=self._gc_memstats, reclaim=_weak_method(self, "_reclaim"),
            on_new_spans=_weak_method(self, "_init_span_bits"))
        self._alloc = a = Allocator(hooks, efence=bool(self._debug.efence))
        self._capi: CApi | None = None      # made by the first read of ``capi``
        # Instance attributes shadow the methods below (which document the API) so each
        # call is one bound call into the allocator.
        self.alloc = a.alloc          # type: ignore[method-assign]  # the fast path
        self.free = a.free            # type: ignore[method-assign]  # same signature
        self.lookup = a.lookup        # type: ignore[method-assign]  # same signature
        self.usable_size = a.usable_size  # type: ignore[method-assign]  # same signature
        self._typed_plans: dict[tuple[object, int], _TypedPlan] = {}
        self._new_plans: dict[object, tuple[int, object, int]] = {}
        # _find_base's: arena base >> LOG_HEAP_ARENA_BYTES -> the page map's index of page 0 of
        # the address space in it (page map index of p: (p >> PAGE_SHIFT) - that); the page
        # map and alloc bits as memoryviews (Python ints per read)
        self._arena_page0: dict[int, int] = {}
        self._page_span = memoryview(a.mheap.arenas.page_span)  # type: ignore[arg-type]
        # the span records by id: the list only grows until close (which stops the world
        # for good before it drops them), and _find_base reads it with the world not stopped
        self._spans = a.mheap.spans
        self._world = a._world          # the allocator's, for the same inlined regions
        self._bits8 = memoryview(a.mheap.gcbits.bits8)  # type: ignore[arg-type]
        # The heap bits of typed runs, written when an mcache takes or gives back a run
        # (gc/bitmap.py; set before any mcache attaches). Over the arenas, not the Heap:
        # every mcache holds untype_run, and a thread's mcache must not keep the Heap alive.
        a.typed_run = functools.partial(bitmap.write_typed_run, a.mheap.arenas)
        a.untype_run = functools.partial(bitmap.untype_slots, a.mheap.arenas)
        try:
            self._gc = Collector(a, gogc, self._debug, verify=lambda: self.verify())
            self._gc.pacer.set_memory_limit(memlimit)
            self._roots = self._gc.roots
            self._counted = self._roots.counted    # the same dict for the heap's life
            self._new_handle = self._roots.new_handle
            # for handle(), which makes its Handles itself (see there)
            self._roots_ref = self._roots.ref
            self._pop_pin = self._roots._free_slots.pop
            self._handle_table = self._roots.handle_addrs
            self._scavenger: Scavenger | None = None
            if scavenger or (scavenger is None and self._debug.scavenger):
                self._scavenger = Scavenger(a.mheap)
            # A heap dropped without close() still gives its memory back.
            self._finalizer = weakref.finalize(self, _release, a.mheap, a.persistent,
                                               self._scavenger)
            self._init_specials()
        except BaseException:
            # A heap that failed to start keeps no thread and no reservation.
            scav = getattr(self, "_scavenger", None)
            if scav is not None:
                scav.stop()
            if hasattr(self, "_finalizer"):
                self._finalizer.detach()
            a.close()
            raise

    def _init_specials(self) -> None:
        """Special records, finalizers and the heap profile (gc/specials.py, finalizer.py,
        mprof.py): sweep and explicit free free a dead object's specials, sampled allocations
        record a profile bucket, the collector runs the finalizer pass."""
        a = self._alloc
        self._specials = Specials(a.persistent, self._gc.sweeper.ensure_swept)
        self._mprof = MemProfiler(a.mheap.span_of, self._specials, a.persistent,
                                  a.stats.buckhash_sys)
        self._specials.on_profile_free = self._mprof.free
        self._mprof.install(self._gc)
        self._finalizers = Finalizers(self._gc, self._specials)
        self._weak = WeakAndCleanups(self._gc, self._specials, self._finalizers)
        self._gc.sweeper.on_free_objects = self._specials.free_objects
        # Locks a stopped C thread must not hold (gc/cthreads.py): the cycle takes them.
        self._gc.cthreads.quiesce += [self._specials.lock, self._mprof.lock,
                                      self._finalizers.queue._cond]
        # A heap dropped without close() stops its finalizer thread (not at exit: a daemon).
        self._stop_finalizers = weakref.finalize(self, self._finalizers.queue.stop)
        self._stop_finalizers.atexit = False

    # --- allocation, free, lookup: the allocator's (bound per instance in __init__) -------

    def alloc(self, size: int, type: object = None, noscan: bool = False,
              zero: bool = True) -> int:
        """mallocgc: allocate ``size`` bytes and return the address (a raw int, not a root).
        ``type`` (a ctypes type or gcalloc.Type) gives the collector the object's pointer
        layout; ``noscan=True`` says it holds no pointers (never scanned); ``zero=False``
        may leave old bytes. Size 0 returns one shared address. Raises InvalidSize,
        InvalidArgument, InvalidType, OutOfMemory, HeapClosed (see the README's table)."""
        return self._alloc.alloc(size, type, noscan, zero)

    def free(self, p: int) -> None:
        """gccgo's __go_free: free the object starting at p now (0 and size-0 objects: a
        no-op). Raises NotHeapPointer, InteriorPointer, DoubleFree, TinyObjectFree,
        InvalidArgument, HeapClosed, all before anything changes."""
        self._alloc.free(p)

    def lookup(self, p: int) -> tuple[int, int] | None:
        """gccgo's mlookup: (base, usable size) of the allocated object holding p, or None.
        Raises InvalidArgument, HeapClosed."""
        return self._alloc.lookup(p)

    def usable_size(self, p: int) -> int:
        """Bytes usable at object start p (its size class, or the page-rounded size of a
        large object). Raises NotHeapPointer, InteriorPointer, InvalidArgument, HeapClosed."""
        return self._alloc.usable_size(p)

    def read_memstats(self) -> MemStats:
        """runtime.ReadMemStats: a snapshot of the heap's statistics. Raises HeapClosed."""
        return self._alloc.read_memstats()

    @property
    def closed(self) -> bool:
        """Whether close() ran (closing is for good)."""
        return self._alloc.closed

    def _check_open(self) -> None:
        self._alloc.check_open()

    @property
    def capi(self) -> int:
        """The address of this heap's ``gcalloc_api`` (gcalloc/include/gcalloc.h), for C
        code: made on first read, the same int after. Valid for the life of the process:
        after close() every call through it fails (NULL / -1, "HeapClosed"). See
        docs/capi.md. Raises HeapClosed when first read after close()."""
        if self._capi is None:
            with self._gc.lock:
                if self._capi is None:
                    self._check_open()
                    self._capi = CApi(self)
        return self._capi.addr

    # --- typed allocation and Handles ---------------------------------------------------

    def _alloc_typed(self, size: int, type: object, noscan: bool, zero: bool) -> int:
        """``alloc(size, type=T)`` off the fast path: size must be a multiple of T's size.
        A zero-size T only allocates size 0 (the zerobase): n bytes of it would be no whole
        number of Ts, and handing out the zerobase for them would let the caller write over
        the allocator's own memory. Raises InvalidSize, InvalidArgument, InvalidType.

        A small object comes from the run of its layout's typed alloc index (its bits are
        written per run: gc/bitmap.py) and (type, size) goes into the allocator's typed fast
        table, so the next ones take the fast path. A large object's bits are written now,
        as are those of each small object of a layout past the allocator's bound on typed
        indexes (MAX_TYPED_RUNS): those always take this path."""
        plan: _TypedPlan | None
        try:
            plan = self._typed_plans[(type, size)]
        except (KeyError, TypeError):
            plan = self._typed_plan(type, size)
        if plan is None:
            return self._alloc.zerobase
        scan = not (noscan or plan.type.noscan)
        a = self._alloc
        if plan.spc < 0:                       # large
            if not scan:
                return self.alloc(size, None, True, zero)
            arenas = a.mheap.arenas

            def write(s: MSpan) -> None:
                bitmap.type_object(arenas, s, s.base, plan.large_layout(s.npages << PAGE_SHIFT))

            return a.alloc_large_typed(size, zero, write)
        if noscan:
            return self.alloc(size, None, True, zero)
        if not scan:
            p = self.alloc(size, None, True, zero)
            a.typed_fast[type] = (size, plan.spc | 1)
            return p
        lay = plan.layout
        assert lay is not None     # small
        if plan.index is None:
            plan.index = a.typed_index(plan.spc, (plan.spc, lay.ptr, lay.scan), lay)
        if plan.index < 0 or a.efence:
            return self._alloc_written(size, zero, lay)
        a.typed_fast[type] = (size, plan.index)
        return a.alloc_indexed(plan.index, zero)

    def _alloc_written(self, size: int, zero: bool, lay: bitmap.Layout) -> int:
        """A small untyped allocation whose bits are written at once."""
        a = self._alloc
        # No cycle between the allocation and its bits: a cycle could free p and hand its
        # slot to another object, which would then get this type's bits.
        with self._gc.lock:
            p = self.alloc(size, None, False, zero)
            entered = a._enter()     # close() must not unmap the bitmap under this write
            try:
                s = a.mheap.span_of(p)
                assert s is not None   # p was just allocated: its span is in use
                bitmap.type_object(a.mheap.arenas, s, p, lay)
            finally:
                a._leave(entered)
        return p

    def _typed_plan(self, type: object, size: int) -> _TypedPlan | None:
        """Check T against size (the errors of _alloc_typed) and remember the result."""
        t = type_of(type)
        if size == 0:
            return None
        if t.size == 0:
            raise InvalidSize(f"{size} bytes of a zero-size type: only size 0 is possible")
        if size % t.size:
            raise InvalidSize(f"size {size} is not a multiple of the type's size {t.size}")
        check_array(t, size)
        plan = _TypedPlan(t, size)
        if len(self._typed_plans) < 4096:      # a bound for callers with endless sizes
            self._typed_plans[(type, size)] = plan
        return plan

    def alloc_many(self, size: int, n: int, type: object = None,
                   noscan: bool = False) -> np.ndarray:
        """Boehm's GC_malloc_many: ``n`` zeroed objects of ``size`` bytes (``type`` and
        ``noscan`` as for alloc) as a numpy uint64 array of their addresses, carved from
        whole spans at once (gcalloc/batch.py). The array is a root: every object it holds
        stays alive while the array, or any view of it, lives; a copy (``arr.copy()``,
        ``arr.tolist()``) is not a root. Overwriting an element drops that object from the
        roots; the array cannot be resized. See docs/batch.md. Raises InvalidSize (negative
        n or size, too large, not a multiple of the type), InvalidArgument (n or size not an
        int, a bad type), InvalidType, HeapClosed, before anything is allocated;
        OutOfMemory up front for a batch the heap can never hold, or when the OS refuses
        memory midway, after the batch gave back what it took (the heap stays valid)."""
        size = self._alloc.check_size(size)
        if isinstance(n, bool) or not isinstance(n, int):
            raise InvalidArgument(f"n must be an int, not {n.__class__.__name__}")
        if n < 0:
            raise InvalidSize(f"n must be >= 0, got {n}")
        if n and size * n > MAX_ALLOC:
            raise InvalidSize(f"{n} x {size} bytes exceeds the maximum allocation")
        t = None
        if type is not None:
            t = type_of(type)
            if size and t.size == 0:
                raise InvalidSize(f"{size} bytes of a zero-size type: only size 0 is possible")
            if size and size % t.size:
                raise InvalidSize(f"size {size} is not a multiple of the type's size {t.size}")
            check_array(t, size)
            noscan = noscan or t.noscan
        self._check_open()
        if n == 0 or size == 0:      # the zero-size address is never freed: no root needed
            return np.full(n, self._alloc.zerobase, dtype=np.uint64)
        gc = self._gc
        with gc.lock:        # no cycle between the carving and the root
            addrs, spans, elemsize, due = self._alloc.alloc_many(size, n, bool(noscan))
            with self._alloc.inside():
                if t is not None and not noscan:
                    type_batch(self._alloc.mheap.arenas, spans, elemsize, t, size)
                arr = rooted_array(gc.roots, addrs)
        if due:
            gc.poll(int(arr[0]))
        return arr

    def new(self, ctype: type | Type, n: int = 1) -> Handle:
        """Allocate ``n`` objects of ctypes type ``ctype`` (an array when n > 1), zeroed and
        rooted while the returned Handle lives. ``ctype`` may be a gcalloc.Type: the object is
        allocated with its layout and the Handle's ``view`` is its bytes (a ``c_ubyte``
        array of the Type's size). Raises InvalidArgument, InvalidType, InvalidSize,
        OutOfMemory, HeapClosed, all before anything is allocated."""
        if n.__class__ is int and n == 1:
            try:
                size, view_type, index = self._new_plans[ctype]
            except (KeyError, TypeError):
                pass
            else:
                # No lock: the object is a run's slot, and a cycle between the allocation
                # and the root treats each run's last slot as a root (flush_mcaches). The
                # next slot of the plan's run is the allocator's typed fast path itself; an
                # empty run (used up, exhausted by a world stop or close) or no mcache yet
                # takes alloc, which does every check.
                try:
                    p = next(self._alloc._tls.mcache.runs[index], 0)
                except AttributeError:
                    p = 0
                return self._new_handle(p or self.alloc(size, ctype), view_type, 1)
        t = type_of(ctype)
        view_type = ctypes.c_ubyte * t.size if isinstance(ctype, Type) else ctype
        if isinstance(n, bool) or not isinstance(n, int):
            raise InvalidArgument(f"n must be an int, not {type(n).__name__}")
        if n < 1:
            raise InvalidSize(f"n must be >= 1, got {n}")
        size = t.size * n
        if size > MAX_ALLOC:
            raise InvalidSize(f"{n} x {t.size} bytes exceeds the maximum allocation")
        with self._gc.lock:   # no cycle between the allocation and its root
            p = self.alloc(size, ctype)
            handle = self._new_handle(p, view_type, n)
        entry = self._alloc.typed_fast.get(ctype)
        if (n == 1 and 16 <= size <= MAX_SMALL_SIZE and entry is not None and entry[0] == size
                and not self._alloc.efence and len(self._new_plans) < 4096):
            # checked, small but not tiny (a tiny object is inside a block, not a run's
            # slot) and on the allocator's typed fast path (not past its bound on typed
            # runs): the next new(ctype) skips the checks and the lock and takes the next
            # slot of that entry's run itself (a (type, size)'s alloc index is fixed)
            self._new_plans[ctype] = (size, view_type, entry[1])
        return handle

    def handle(self, p: int, ctype: type | None = None) -> Handle:
        """Root the object holding p for the life of the returned Handle; its ``view`` is
        ``ctype`` at the object's start. ``ctype`` must be a ctypes type no bigger than the
        object (its usable_size): a bigger view would read and write the next object.
        Raises NotHeapPointer, InvalidArgument (ctype not a ctypes type), InvalidType,
        InvalidSize (ctype larger than the object), HeapClosed."""
        base = self._find_base(p) if ctype is None else -1
        if base > 0:
            # RootSet.new_handle, inlined (one frame less: a Handle is made per object)
            h = Handle()
            h.addr = base
            h.ctype = None
            h.count = 1
            h._view = None
            h._roots = self._roots_ref
            try:
                pin = self._pop_pin()
            except IndexError:
                pin = self._roots._grow_handles()
            h._pin = pin
            self._handle_table[pin] = base
            return h
        found = self._find_slow(p) if base < 0 else None
        if found is None:
            raise NotHeapPointer(f"{p:#x} is not an allocated object of this heap", p)
        base, objsize = found
        if ctype is not None:
            size = ctype_size(ctype)
            if size > objsize:
                raise InvalidSize(f"a {size}-byte {ctype.__name__} does not fit the "
                                  f"{objsize}-byte object at {base:#x}")
        return self._new_handle(base, ctype, 1)

    def _find_base(self, p: int) -> int:
        """The base of the allocated object holding p, 0 if there is none, -1 where this
        road cannot tell (then ``_find_slow``): lookup(p) by a shorter road for the usual
        case (Handles and roots are made per object). The arena's first page from a dict,
        the page map and alloc bits read through memoryviews (Python ints, no numpy
        scalars), the safepoint region inlined, and as few operations on p as can be (an
        address is a multi-digit int: each one makes a new object). The same tests as
        free.py's find_object, in the same order; anything unusual (no mcache yet, inside
        a region, the world stopped or the heap closed, an address in no arena seen yet)
        answers -1."""
        if p.__class__ is not int:    # a bool, an int subclass, anything: checked
            p = check_addr(p)
        a = self._alloc
        try:
            c = a._tls.mcache
            page0 = self._arena_page0[p >> LOG_HEAP_ARENA_BYTES]
        except (AttributeError, KeyError):
            return -1
        if c.mallocing:
            return -1
        c.mallocing = True     # a safepoint region (Allocator._enter): close() waits for it
        try:
            if self._world.stopped:       # also once closed: close() stops it for good
                return -1
            s = self._spans[self._page_span[(p >> PAGE_SHIFT) - page0]]
            if s is None or s.state != SPAN_IN_USE or not s.base <= p < s.limit:
                return 0
            if not s.sizeclass:
                return s.base if s.allocCount else 0
            elemsize = s.elemsize
            idx = (p - s.base) // elemsize
            owner = s.cached_by
            if (owner is not None and p < s.run_end
                    and s.run_end - length_hint(owner.runs[s.run_index]) * elemsize <= p):
                return 0       # reserved by an mcache, not yet handed out
            if idx >= s.freeindex and not (
                    self._bits8[s.allocBits + (idx >> 3)] >> (idx & 7)) & 1:
                return 0
            if s.pending_frees and idx in s.pending_frees:
                return 0
            return s.base + idx * elemsize
        finally:
            c.mallocing = False

    def _find_slow(self, p: int) -> tuple[int, int] | None:
        """lookup(p) but not counted in MemStats.lookups, which counts Heap.lookup calls
        (docs/mheap.md): as _find_base, which counts nothing (it is the road of handle and
        add_root, made per object)."""
        a = self._alloc
        p = check_addr(p)
        with a.inside():
            a.check_open()
            found = find_object(a, p)
            arena = a.mheap.arenas.arena_of(p)
        if arena is not None:     # arenas stay until close: remember it for _find_base
            self._arena_page0[p >> LOG_HEAP_ARENA_BYTES] = ((arena.base >> PAGE_SHIFT)
                                                           - arena.pages_off)
        if found is None:
            return None
        s, idx = found
        return s.base + idx * s.elemsize, s.elemsize

    # --- roots -------------------------------------------------------------------------

    def add_root(self, p: int) -> None:
        """Keep the object holding p alive until a matching remove_root (counted). Raises
        NotHeapPointer, HeapClosed."""
        if not self._count_here(p, True):
            self._count_root(self._base_of(p), True)

    def remove_root(self, p: int) -> None:
        """Undo one add_root. Raises NotARoot, NotHeapPointer, HeapClosed."""
        if not self._count_here(p, False):
            self._count_root(self._base_of(p), False)

    def _count_here(self, p: object, add: bool) -> bool:
        """add_root's and remove_root's usual case, the safepoint region inlined (one is
        made per object): the count of p's object one up or down; False where it cannot
        tell (the slow road then does it, or raises). A key is an allocated object's base
        (gc/roots.py), so p being a key needs no look-up; any other p is looked up first
        (``_find_base``). The region matters: the collector prunes emptied counts with the
        world stopped, so an entry list read inside it is still the dict's when it is
        appended to."""
        if p.__class__ is not int:
            return False
        counted = self._counted
        base = p
        key = True                    # p was a key when looked at (remove_root: not checked)
        if add and p not in counted:
            key = False
            base = self._find_base(p)  # type: ignore[arg-type]  # an int
            if base <= 0:
                return False
        a = self._alloc
        try:
            c = a._tls.mcache
        except AttributeError:
            return False
        if c.mallocing:
            return False
        c.mallocing = True
        try:
            if self._world.stopped:       # also once closed
                return False
            entries = counted.get(base)
            if not add:
                if not entries:
                    return False          # not a root: the slow road says so
                entries.pop()
                return True
            if entries is None:
                if key:
                    # A cycle pruned the key since it was seen (and may have freed its
                    # object): it is not known to be a base now, so the slow road decides.
                    return False
                entries = counted.setdefault(base, [])   # another thread may have made it
            entries.append(None)
            return True
        finally:
            c.mallocing = False

    def _base_of(self, p: int) -> int:
        base = self._find_base(p)
        if base < 0:
            found = self._find_slow(p)
            base = found[0] if found is not None else 0
        if not base:
            raise NotHeapPointer(f"{p:#x} is not an allocated object of this heap", p)
        return base

    def _count_root(self, base: int, add: bool) -> None:
        """One more (or one less) counted root at base, inside a safepoint region (the
        collector prunes emptied entries with the world stopped: gc/roots.py): the slow
        road of add_root and remove_root. Raises NotARoot, HeapClosed."""
        a = self._alloc
        a._this_mcache()   # a thread that only roots gets one: a region, not a world stop
        with a.inside():
            a.check_open()
            if add:
                self._roots.add(base)
            else:
                self._roots.remove(base)

    def add_root_range(self, addr: int, size: int, conservative: bool = True,
                       type: object = None) -> int:
        """Scan [addr, addr+size) (memory outside the heap) for pointers at every collection
        until remove_root_range(token). ``conservative=False`` needs ``type`` (a ctypes type
        or gcalloc.Type; size a multiple of its size).

        The range must be readable memory of this process now, inside the user address
        space, and outside this heap's arenas (heap objects are rooted with add_root or a
        Handle; a range over heap pages would read pages the heap may unmap or make
        inaccessible). Readability is probed when the range is added, without faulting
        (gcalloc/os/probe.py); unmapping the memory while it is a root range is the caller's
        error, as in C. Raises InvalidArgument, InvalidSize, InvalidType, InvalidRootRange,
        HeapClosed."""
        addr = check_addr(addr)
        size = self._alloc.check_size(size)
        self._check_open()
        if conservative:
            if type is not None:
                raise InvalidArgument("a conservative range takes no type")
            start, nbytes = align_range(addr, size)
            self._check_range(addr, size, start, nbytes)
            return self._gc.roots.add_range(start, nbytes, None)
        if type is None:
            raise InvalidArgument("a precise root range needs a type")
        t = type_of(type)
        if addr % 8 or t.size == 0 or size % t.size:
            raise InvalidSize(f"precise range {addr:#x}+{size} must be 8-byte aligned and "
                              f"a multiple of the type's size {t.size}")
        check_array(t, size)
        self._check_range(addr, size, addr, size)
        return self._gc.roots.add_range(addr, size, t)

    def _check_range(self, addr: int, size: int, start: int, nbytes: int) -> None:
        """Refuse a root range the collector could not read: [start, start+nbytes) is what
        it will read of the caller's [addr, addr+size)."""
        if not ADDRESS_SPACE_BASE <= addr <= ADDRESS_SPACE_END - size:
            raise InvalidRootRange(f"root range {addr:#x}+{size} is outside the user "
                                   f"address space", addr)
        if not nbytes:
            return
        end = start + nbytes
        for base, length in self._alloc.mheap.arenas.reservations:
            if start < base + length and base < end:
                raise InvalidRootRange(f"root range {addr:#x}+{size} overlaps the heap's "
                                       f"arenas at {base:#x}", addr)
        if not readable(start, nbytes):
            raise InvalidRootRange(f"root range {addr:#x}+{size} is not mapped readable",
                                   addr)

    def remove_root_range(self, token: int) -> None:
        """Stop scanning a range. Raises NotARoot, HeapClosed."""
        self._check_open()
        self._gc.roots.remove_range(token)

    # --- collection control ------------------------------------------------------------

    def collect(self) -> None:
        """runtime.GC: a full collection, with sweeping finished before it returns.
        Raises HeapClosed."""
        self._check_open()
        self._gc.collect(forced=True)

    def set_gc_percent(self, n: int) -> int:
        """debug.SetGCPercent: set GOGC, return the previous value (-1 means off). Raises
        InvalidArgument, HeapClosed."""
        self._check_open()
        return self._gc.pacer.set_gc_percent(n)

    @property
    def gc_percent(self) -> int:
        return self._gc.pacer.gc_percent

    def set_memory_limit(self, n: int) -> int:
        """debug.SetMemoryLimit (Go 1.19): a soft limit, in bytes, on what the heap holds from
        the OS (``sys - heap_released``); returns the previous limit. A negative n only reads;
        MAX_INT64 (``(1 << 63) - 1``, Go's math.MaxInt64) means none, the default, or
        GCALLOC_MEMLIMIT. See docs/memlimit.md. Raises InvalidArgument, HeapClosed."""
        n = check_limit(n)
        self._check_open()
        with self._gc.lock:
            old = self._gc.pacer.set_memory_limit(n)
            if 0 <= n < MAX_INT64:
                self._gc.scavenge_for_limit(0)
        return old

    def read_memlimit(self) -> MemLimitStats:
        """The memory limit beside what it bounds: mapped_ready (``sys - heap_released``), the
        heap goal and the limit's goal, bytes scavenged for it, the CPU limiter's accounting
        (Go's runtime/metrics for GOMEMLIMIT). Raises HeapClosed."""
        self._check_open()
        gc = self._gc
        with self._alloc.inside(), self._alloc.mheap.lock:
            ready, _ = gc.pacer.measure()
        lim = gc.limiter
        return MemLimitStats(
            limit=gc.pacer.memory_limit, mapped_ready=ready, heap_goal=gc.pacer.next_gc,
            limit_goal=gc.pacer.limit_goal, scavenged=gc.limit_scavenged,
            limiter_skipped=lim.skipped, limiter_enabled_cycles=lim.enabled_cycles,
            gc_time=lim.gc_time, mutator_time=lim.mutator_time)

    @contextlib.contextmanager
    def no_gc(self) -> Iterator[None]:
        """No collection starts while this block runs (in any thread): for code that writes
        heap pointers outside gcalloc calls while other threads allocate. Raises HeapClosed
        on entry."""
        self._check_open()
        with self._gc.lock:
            self._gc.inhibit += 1
            try:
                yield
            finally:
                self._gc.inhibit -= 1

    def scavenge(self, limit: float = 0.0) -> int:
        """Return to the OS the pages of free spans idle more than ``limit`` seconds (a
        negative limit: every free page). Returns the bytes released. Raises
        InvalidArgument (limit not a real number), HeapClosed."""
        limit = _check_seconds("limit", limit)
        self._check_open()
        return scavenge(self._alloc.mheap, limit)

    def free_os_memory(self) -> int:
        """debug.FreeOSMemory: collect, then return every free page to the OS. Returns the
        bytes released. Raises HeapClosed."""
        self.collect()
        return self.scavenge(-1.0)


    # --- finalizers and the heap profile -----------------------------------------------

    def set_finalizer(self, p: int, fn: Callable[[int], object] | None) -> None:
        """runtime.SetFinalizer: when a collection finds the object starting at p
        unreachable, it clears the association, keeps the object (and what it references)
        alive, and ``fn(p)`` runs on the heap's finalizer thread; the object is freed by a
        later collection if still unreachable. ``fn=None`` clears the finalizer (fine when
        none is set). p must be the start of an object, or any address inside a tiny
        (noscan, < 16 B) block; size-0 objects are accepted and never finalized.
        See docs/finalizers.md. Raises FinalizerNotCallable (TypeError), NotHeapPointer,
        InteriorPointer, FinalizerAlreadySet (ValueError), InvalidArgument, HeapClosed;
        a raising call changes nothing."""
        self._finalizers.set(p, fn)

    def make_weak(self, p: int) -> WeakPointer:
        """weak.Make (Go 1.24): a weak pointer to the object holding p (p may point inside
        it). ``w.value()`` is p while the object is reachable, None once a collection found
        it unreachable (before its finalizer, if any, is queued; a resurrected object's old
        weak pointers stay None) or it was freed; the weak pointer does not keep it alive.
        Weak pointers made to one address compare and hash equal. See docs/finalizers.md.
        Raises NotHeapPointer, InvalidArgument, HeapClosed."""
        return self._weak.make_weak(p)

    def add_cleanup(self, p: int, fn: Callable[[Any], object], arg: object = None) -> Cleanup:
        """runtime.AddCleanup (Go 1.24): ``fn(arg)`` runs on the finalizer thread once the
        object holding p is unreachable (or freed); fn never receives p. Several cleanups may
        attach to one object; ``.stop()`` on the returned Cleanup cancels one not yet queued.
        An object with a finalizer runs its cleanups only after it was finalized and found
        unreachable again. See docs/finalizers.md. Raises CleanupNotCallable (TypeError),
        CleanupArgIsObject (ValueError: arg is an address inside the object or a Handle to
        it), NotHeapPointer, InvalidArgument, HeapClosed."""
        return self._weak.add_cleanup(p, fn, arg)

    def run_finalizers(self, timeout: float | None = None) -> bool:
        """Wait until no finalizer is queued or running (for tests and shutdown). Returns
        False if ``timeout`` seconds passed first, or at once when called from a finalizer.
        ``timeout`` is None (wait for good) or a number of seconds >= 0. Raises
        InvalidArgument (not a number), InvalidSize (negative or NaN), HeapClosed."""
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout)
            if not timeout >= 0:
                raise InvalidSize(f"timeout must be >= 0 seconds, got {timeout!r}")
            if timeout == float("inf"):
                timeout = None     # threading's waits refuse an infinite timeout
        self._check_open()
        return self._finalizers.run(timeout)

    def memprofile(self, inuse_zero: bool = True) -> list[MemProfileRecord]:
        """runtime.MemProfile: the heap profile as of the last completed collection, one
        record per (allocation stack, object size), with raw sampled counts.
        ``inuse_zero=False`` leaves out records with no bytes in use. Raises HeapClosed."""
        self._check_open()
        return self._mprof.records(inuse_zero)

    def write_heap_profile(self, path: pprof.ProfileDest) -> None:
        """pprof.WriteHeapProfile: write the heap profile as gzipped profile.proto, counts
        scaled by ``mem_profile_rate`` to estimates (``go tool pprof -top path``).

        ``path`` is a file name (str, bytes or os.PathLike; created or truncated) or a file
        object open for binary writing (written, neither flushed nor closed). An int is
        refused: ``open()`` would take it for a file descriptor and close it. Raises
        InvalidArgument (an int, a text file, anything else), HeapClosed, and OSError from
        the file system."""
        if isinstance(path, (str, bytes, os.PathLike)):
            pass
        elif isinstance(path, io.TextIOBase) or not callable(getattr(path, "write", None)):
            raise InvalidArgument(f"write_heap_profile needs a path or a binary file object, "
                                  f"not {type(path).__name__}")
        pprof.write_heap_profile(path, self.memprofile(True), self.mem_profile_rate)

    @property
    def mem_profile_rate(self) -> int:
        """Average bytes allocated between heap-profile samples; 0 off, 1 every allocation.
        Setting it raises InvalidArgument (not an int), InvalidSize (negative), HeapClosed."""
        return self._alloc.mem_profile_rate

    @mem_profile_rate.setter
    def mem_profile_rate(self, rate: int) -> None:
        self._check_open()
        self._alloc.mem_profile_rate = rate

    # --- the allocator's hooks (GCHooks, gcalloc/hooks.py, documents each) -------------

    def _sweep_span(self, s: MSpan, preserve: bool) -> bool:
        return self._gc.sweeper.sweep(s, preserve)

    def _ensure_swept(self, s: MSpan) -> None:
        self._gc.sweeper.ensure_swept(s)

    def _charge_live(self, n: int) -> bool:
        return self._gc.pacer.charge(n)

    def _gc_poll(self, p: int) -> None:
        self._gc.poll(p)

    def _on_sample(self, p: int, size: int) -> None:
        self._mprof.record(p, size)

    def _gc_memstats(self) -> dict:
        return self._gc.memstats()

    def _init_span_bits(self, spans: list[MSpan]) -> None:
        """New in-use spans of a scan class start with all-pointer heap bits."""
        first = spans[0]
        if first.noscan:
            return
        nbytes = sum(s.npages for s in spans) << PAGE_SHIFT
        bitmap.fill_span(self._alloc.mheap.arenas, first.base, nbytes, bitmap.ALL_ONES)

    def _on_free(self, s: MSpan, idx: int, refund: int) -> None:
        # A counted-root key names an allocated object (see add_root): an emptied one goes
        # with its object (a rooted object freed explicitly stays the caller's root).
        base = s.base + idx * s.elemsize
        if self._roots.counted.get(base) == []:
            del self._roots.counted[base]
        if s.typed and s.sizeclass:
            bitmap.reset_slots(self._alloc.mheap.arenas, s, [idx])
        if refund:
            self._gc.pacer.refund(refund)
        if s.specials:
            self._specials.free_objects(s, [idx], explicit=True)

    def _reclaim(self, npages: int) -> None:
        if not self._gc.sweeper.done():
            self._gc.sweeper.reclaim(npages)
        # Scavenge rather than grow past the limit, unless the CPU limiter is on: then the
        # limit is not being met anyway (Go 1.19 mheap.go allocSpan does the same).
        gc = self._gc
        if gc.pacer.memory_limit < MAX_INT64 and not gc.limiter.limiting():
            gc.scavenge_for_limit(npages << PAGE_SHIFT)

    # --- verify and close --------------------------------------------------------------

    def verify(self) -> None:
        """Raise HeapCorruption if any invariant of any layer is broken. Call it with no
        other thread allocating. Raises HeapClosed."""
        with self._alloc.inside():
            self._alloc.verify()
            problems = (self._specials.verify() + self._bitmap_problems()
                        + self._root_problems())
        if problems:
            raise HeapCorruption("collector: " + "; ".join(problems[:20]))

    def _bitmap_problems(self) -> list[str]:
        """The heap-bitmap invariants: every scan span holding no typed object has all-ones
        bits, and a span with a span type has its layout's bits in every slot
        (gc/bitmap.py)."""
        out = []
        arenas = self._alloc.mheap.arenas
        with self._alloc.mheap.lock:
            spans = [s for s in self._alloc.mheap.in_use_spans()
                     if not s.noscan and s.typed is not True and not s.faulted]
        for s in spans:
            nbytes = s.npages << PAGE_SHIFT
            if not s.typed:
                if not bitmap.span_all_ones(arenas, s.base, nbytes):
                    out.append(f"untyped scan span without all-ones heap bits: {s!r}")
            elif not bitmap.span_has_layout(arenas, s, s.typed):   # type: ignore[arg-type]
                out.append(f"span type {s.typed!r} not in every slot's bits: {s!r}")
        return out + self._typed_run_problems()

    def _typed_run_problems(self) -> list[str]:
        """Every mcache's typed runs: their span is typed and the slots not handed out yet
        have the run's layout (written when the run was taken)."""
        a = self._alloc
        out = []
        with a.mheap.lock:
            caches = list(a.mcaches)
            layouts = list(a.typed_layout)
        for c in caches:
            for k, lay in enumerate(layouts):
                s = c.alloc[NUM_SPAN_CLASSES + k]
                if s is EMPTY_SPAN:
                    continue
                if not s.typed:
                    out.append(f"typed run in a span without typed bits: {s!r}")
                left = c.run_left(s)
                if left and not bitmap.run_has_layout(a.mheap.arenas,
                                                      s.run_end - left * s.elemsize, left,
                                                      lay):  # type: ignore[arg-type]
                    out.append(f"typed run without its layout's bits: {s!r}")
        return out

    def _root_problems(self) -> list[str]:
        """The root table's bookkeeping agrees with itself."""
        return self._gc.roots.table_problems()

    def close(self) -> None:
        """Stop the world for good, stop background threads and return every mapping to the
        OS. Every later call, from any thread, raises HeapClosed. Idempotent. Raises
        SysMemoryError if the OS refused to unmap something: the heap is closed anyway, and
        the next close() retries what is left."""
        if self._alloc.closed:
            if self._alloc.unreleased:      # an earlier close could not unmap everything
                self._alloc.release_memory()
                self._finalizer.detach()
            return
        if not self._alloc.shut_down():
            return
        # The C threads too, while the C ABI (its on_close) closes its api and empties their
        # buckets: none is halfway through a bump. They resume and fail from then on.
        self._gc.cthreads.close()
        # No thread is inside the allocator or the collector now and none will enter: each
        # raises HeapClosed. The background threads may still be running (a finalizer, a
        # scavenge); the memory stays mapped until they have stopped.
        self._finalizers.close()        # waits for a running finalizer; drops queued ones
        self._stop_finalizers.detach()
        if self._scavenger is not None:
            self._scavenger.stop()
            self._scavenger = None
        self._gc.roots.close()
        self._gc.close()
        try:
            self._alloc.release_memory()
        finally:
            self._specials.close()
            self._mprof.close()
        self._finalizer.detach()

    def __enter__(self) -> Heap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ("closed" if self._alloc.closed
                 else f"{self._alloc.stats.heap_inuse >> 10} KiB in use")
        return f"<gcalloc.Heap {state}>"



class _TypedPlan:
    """A checked (type, size) of alloc(size, type=T): its Type, its scan span class (-1:
    large), the Layout of its slot and its typed alloc index (None: not asked yet; -1: past
    the bound)."""

    __slots__ = ("type", "size", "spc", "layout", "index", "_large")

    def __init__(self, t: Type, size: int) -> None:
        self.type = t
        self.size = size
        self.index: int | None = None
        self._large: tuple[int, bitmap.Layout] | None = None
        if size > MAX_SMALL_SIZE:
            self.spc = -1
            self.layout = None
        else:
            sc = size_to_class(size)
            self.spc = int(make_span_class(sc, False))
            self.layout = bitmap.Layout.of(t, class_to_size[sc], size)

    def large_layout(self, extent: int) -> bitmap.Layout:
        if self._large is None or self._large[0] != extent:
            self._large = (extent, bitmap.Layout.of(self.type, extent, self.size))
        return self._large[1]


def _check_seconds(name: str, value: object) -> float:
    """A duration argument: an int or float (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name} must be a number of seconds, not "
                              f"{type(value).__name__}")
    return float(value)


def _weak_method(obj: object, name: str):
    """A function calling obj.<name>(...) while obj lives, doing nothing after."""
    ref = weakref.ref(obj)

    def call(*args):
        target = ref()
        if target is not None:
            return getattr(target, name)(*args)
        return None

    return call


def _release(mheap, persistent, scavenger) -> None:
    if scavenger is not None:
        scavenger.stop()
    try:
        mheap.release()
    finally:
        persistent.release_all()



