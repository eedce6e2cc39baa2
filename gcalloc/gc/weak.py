"""Weak pointers and cleanups (Go 1.24: weak/pointer.go's weak.Make and Pointer.Value,
mcleanup.go's runtime.AddCleanup and Cleanup.Stop), built on the specials (gc/specials.py:
KIND_WEAK is Go's _KindSpecialWeakHandle, KIND_CLEANUP its _KindSpecialCleanup).

``Heap.make_weak(p)`` finds or makes the weak record at p's address (p may point inside the
object, as in Go) and returns a ``WeakPointer`` over the record's cell. Every weak pointer made
to one address shares the cell, so they compare (and hash) equal; pointers to different
addresses inside one object do not (Go documents the same). ``value()`` reads the cell: the
address, or None. A weak pointer roots nothing.

``Heap.add_cleanup(p, fn, arg)`` adds ``fn(arg)`` to the cleanup record at p's address and
returns a ``Cleanup`` whose ``stop()`` takes it off again. Several cleanups may attach to one
object; they run in no promised order, one at a time, on the finalizer thread (Go runs them
on a goroutine of its own). fn never receives p, so it cannot resurrect the object; an
``arg`` that is the object itself (an address inside it, or a Handle to it) is refused, as Go
panics on ``arg == ptr``: the cleanup would never run, or would run holding a dead address.

The collector's pass (``after_mark``), world stopped, after the finalizer pass: an object is
dead for its weak records if it is unmarked or was revived by the finalizer pass this cycle
(Go: "weak pointers are cleared before the object's finalizer is queued"; a resurrected
object's old weak pointers stay None, and a new make_weak gives a new cell). Dead records are
unlinked: a weak cell reads 0 from then on; a cleanup record's cleanups are queued, unless
the object was only revived: those wait until it dies without a finalizer (Go: a cleanup on
an object with a finalizer runs only after the finalizer ran and the object became
unreachable again). Objects marked only because a finalizer object references them are
reachable for this purpose, as in Go (markrootSpans marks them).

Explicit free (Heap.free) and sweep reach the records through Specials.free_objects: the
cell is cleared (the address may be reused at once: a weak pointer must not return it) and
the cleanups are queued, since the object died. close() clears every cell and drops the
cleanups not yet run, as finalizers are dropped (Go runs neither at exit).

Invariant: a cell is non-zero only while its object is allocated and was reachable at the
last collection (or was allocated since).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numpy as np

from gcalloc.errors import CleanupArgIsObject, CleanupNotCallable, HeapClosed, NotHeapPointer
from gcalloc.gc.roots import Handle
from gcalloc.gc.specials import KIND_CLEANUP, KIND_WEAK, SpecialCleanup, WeakCell
from gcalloc.sizeclasses import PAGE_SHIFT

if TYPE_CHECKING:
    from gcalloc.gc.finalizer import Finalizers
    from gcalloc.gc.mgc import Collector
    from gcalloc.gc.specials import Special, Specials
    from gcalloc.mspan import MSpan

class WeakPointer:
    """A weak pointer (Go's weak.Pointer): ``value()`` is the address it was made for while
    the object is reachable, None once a collection found it unreachable or it was freed.

    The address returned is a raw int, not a root: to keep the object, root it before the
    next collection can run (``heap.handle(w.value())`` from a thread that is the only one
    allocating, or inside ``heap.no_gc()``)."""

    __slots__ = ("_cell", "__weakref__")

    def __init__(self, cell: WeakCell) -> None:
        self._cell = cell

    def value(self) -> int | None:
        return self._cell.addr or None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeakPointer):
            return NotImplemented
        return self._cell is other._cell

    def __hash__(self) -> int:
        return id(self._cell)

    def __repr__(self) -> str:
        addr = self._cell.addr
        return f"<WeakPointer {addr:#x}>" if addr else "<WeakPointer None>"


class Cleanup:
    """What add_cleanup returns (Go's runtime.Cleanup). ``stop()`` cancels the cleanup if it
    has not been queued yet; True if it did. Stopping twice, after the cleanup ran, or on a
    closed heap does nothing."""

    __slots__ = ("_owner", "_span", "_offset", "_id")

    def __init__(self, owner: WeakAndCleanups, s: MSpan | None, offset: int, cid: int) -> None:
        self._owner = owner
        self._span = s
        self._offset = offset
        self._id = cid

    def stop(self) -> bool:
        s = self._span
        if s is None:
            return False
        self._span = None
        return self._owner.stop(s, self._offset, self._id)


class WeakAndCleanups:
    """The weak-pointer and cleanup side of one heap."""

    def __init__(self, collector: Collector, specials: Specials,
                 finalizers: Finalizers) -> None:
        self.collector = collector
        self.allocator = collector.allocator
        self.specials = specials
        self.finalizers = finalizers
        self.queue = finalizers.queue
        self._ids = itertools.count(1)
        self.cleared = 0          # weak records cleared by collections
        self.queued = 0           # cleanups queued
        specials.on_cleanups = self._queue_now
        collector.after_mark.append(self.after_mark)   # after the finalizer pass

    # --- the calls -------------------------------------------------------------------

    def make_weak(self, p: int) -> WeakPointer:
        """weak.Make; see Heap.make_weak."""
        allocator = self.allocator
        with self.collector.lock, allocator.inside():
            p = allocator.check_addr(p)
            allocator.check_open()
            if p == allocator.zerobase:
                return WeakPointer(self.specials.zero_weak_cell(p))
            s = self._span(p, "make_weak")
            return WeakPointer(self.specials.weak_cell(s, p - s.base, p))

    def add_cleanup(self, p: int, fn: Callable[[object], object], arg: object) -> Cleanup:
        """runtime.AddCleanup; see Heap.add_cleanup."""
        if not callable(fn):
            raise CleanupNotCallable(f"cleanup must be callable, not {type(fn).__name__}")
        allocator = self.allocator
        with self.collector.lock, allocator.inside():
            p = allocator.check_addr(p)
            allocator.check_open()
            cid = next(self._ids)
            if p == allocator.zerobase:
                return Cleanup(self, None, 0, cid)       # never runs, as in Go
            s = self._span(p, "add_cleanup")
            found = allocator.find_object(p)
            assert found is not None     # _span checked it
            base = s.base + found[1] * s.elemsize
            end = base + (s.npages << PAGE_SHIFT if s.sizeclass == 0 else s.elemsize)
            target = arg.addr if isinstance(arg, Handle) else arg
            if (isinstance(target, int) and not isinstance(target, bool)
                    and base <= target < end):
                raise CleanupArgIsObject(f"add_cleanup: arg {arg!r} is the object at "
                                         f"{base:#x} itself: the cleanup would keep it "
                                         f"alive or receive its dead address", p)
            self.queue.start()
            self.specials.add_cleanup(s, p - s.base, cid, fn, arg)
            return Cleanup(self, s, p - s.base, cid)

    def stop(self, s: MSpan, offset: int, cid: int) -> bool:
        try:
            self.allocator.check_open()
        except HeapClosed:
            return False       # close() dropped every cleanup
        return self.specials.stop_cleanup(s, offset, cid)

    def _span(self, p: int, what: str) -> MSpan:
        """The span of the allocated object holding p, swept first (so a dead object is
        not taken for a live one)."""
        s = self.allocator.mheap.span_of_heap(p)
        if s is not None:
            self.collector.sweeper.ensure_swept(s)
        found = self.allocator.find_object(p)
        if found is None:
            raise NotHeapPointer(f"{what}: {p:#x} is not an allocated object of this heap", p)
        return found[0]

    # --- the collector's pass (world stopped) ------------------------------------------

    def after_mark(self, marker) -> None:
        if not self.specials.weak_or_cleanup:
            return
        records = [(s, rec) for s, rec in self.specials.weak_and_cleanup_records()
                   if marker.in_snapshot[s.id]]
        if not records:
            return
        revived = self.finalizers.revived
        slots = np.array([0 if s.sizeclass == 0 else rec.offset // s.elemsize
                          for s, rec in records], dtype=np.int64)
        calls: list[tuple[Callable[[object], object], object]] = []
        dead: dict[MSpan, list[Special]] = {}
        for (s, rec), idx in zip(records, slots.tolist(), strict=True):
            if marker.is_marked(s, idx) and (s.id, idx) not in revived:
                continue
            if rec.kind == KIND_WEAK:
                dead.setdefault(s, []).append(rec)
                self.cleared += 1
            elif rec.kind == KIND_CLEANUP and (s.id, idx) not in revived:
                calls.extend(cast(SpecialCleanup, rec).cleanups.values())
                dead.setdefault(s, []).append(rec)
        for s, recs in dead.items():
            self.specials.take(s, recs)
        if calls:
            self.queued += len(calls)
            self.queue.push_calls(calls)   # woken after the cycle, with the finalizers

    def _queue_now(self, calls: list[tuple[Callable[[object], object], object]]) -> None:
        """Cleanups of objects freed outside a collection (explicit free)."""
        self.queued += len(calls)
        self.queue.push_calls(calls)
        self.queue.wake()
