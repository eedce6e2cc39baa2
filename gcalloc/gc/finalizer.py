"""Finalizers: SetFinalizer, the collector's finalizer pass and the finalizer thread (Go's
mfinal.go: SetFinalizer, queuefinalizer, runfinq; mgcmark.go's markroot for specials).

``Heap.set_finalizer(p, fn)`` attaches a finalizer special (gc/specials.py) to the object
starting at p. At every collection, after the roots are marked and with the world stopped:

1. for every object with a finalizer, everything it references is marked, but not the object
   itself (Go's markrootSpans). If A points at B and both have finalizers, B is thereby
   marked, so only A's finalizer can run this cycle: dependency order. An object reachable
   from itself through its referents is marked too: a cycle containing a finalizer is never
   collected and its finalizer never runs (as Go documents: no order respects the cycle);
2. every finalizer object still unmarked is unreachable: its special is removed, ``(p, fn)``
   is queued, and the object is marked so that it, and what it references (marked in step
   1), survive this cycle.

Queued objects are roots (``extra_roots``) until their finalizer has returned. A single
thread, started with the first finalizer (Go's createfing), runs the queue in order, one call
at a time. Afterwards the object has no finalizer: the next collection frees it if it is still
unreachable, or it lives on if ``fn`` stored p somewhere reachable (resurrection, for good).
An exception from ``fn`` (any BaseException, SystemExit and KeyboardInterrupt included) is
logged (logger ``gcalloc.finalizer``, with the object's address) and the thread goes on with
the next one.

The same thread runs cleanups (gc/weak.py, Go 1.24's AddCleanup, which Go also runs on its
finalizer goroutine): an entry ``(0, fn, arg)`` calls ``fn(arg)`` and roots nothing. The pass
records the objects it revived this cycle (``revived``): their weak pointers are cleared all
the same (Go clears weak handles before it queues finalizers), their cleanups wait.

Invariants: an entry is in the queue or running on the thread, never both; a finalizer runs
at most once per set_finalizer; an object is never freed while its finalizer is attached,
queued or running (explicit free drops the finalizer without running it).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from gcalloc.errors import (
    FinalizerAlreadySet,
    FinalizerNotCallable,
    InteriorPointer,
    NotHeapPointer,
)

if TYPE_CHECKING:
    from gcalloc.gc.mgc import Collector
    from gcalloc.gc.specials import Specials

__all__ = ["FinalizerAlreadySet", "FinalizerNotCallable", "NotHeapPointer", "InteriorPointer",
           "FinalizerQueue", "Finalizers"]

_log = logging.getLogger("gcalloc.finalizer")


class FinalizerQueue:
    """Go's finq and the runfinq goroutine: a FIFO of (root, fn, arg) and the one thread that
    calls fn(arg) for each; ``root`` (0 for none) stays alive until the call returns. It holds
    no reference to the heap, so a heap dropped without close() can still be collected by
    Python (and its weakref finalizer stops this thread)."""

    def __init__(self, name: str = "gcalloc-finalizer") -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[int, Callable[[Any], object], object]] = \
            collections.deque()
        self._running: int | None = None      # address whose finalizer is running now
        self._stop = False
        self._name = name
        self._thread: threading.Thread | None = None
        self.ran = 0                          # finalizers that returned or raised
        self.failed = 0                       # ... that raised

    def start(self) -> None:
        """Start the thread if it is not running (Go's createfing)."""
        with self._cond:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name=self._name,
                                                daemon=True)
                self._thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def push(self, entries: list[tuple[int, Callable[[int], object]]]) -> None:
        """Queue finalizers (the collector, world stopped). The thread is woken by wake()."""
        with self._cond:
            self._queue.extend((p, fn, p) for p, fn in entries)

    def push_calls(self, calls: list[tuple[Callable[[Any], object], object]]) -> None:
        """Queue cleanups: fn(arg) each, rooting nothing. The thread is woken by wake()."""
        with self._cond:
            self._queue.extend((0, fn, arg) for fn, arg in calls)

    def wake(self) -> None:
        with self._cond:
            if self._queue:
                self._cond.notify_all()

    def pending_addresses(self) -> np.ndarray:
        """Addresses of the queued and running finalizers' objects: roots for the collector."""
        with self._cond:
            addrs = [p for p, _, _ in self._queue if p]
            if self._running:
                addrs.append(self._running)
        return np.array(addrs, dtype=np.uint64)

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + (self._running is not None)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running; False on timeout, or at once when called
        from the finalizer thread itself (it would wait for its own finalizer)."""
        if threading.current_thread() is self._thread:
            return False
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: (not self._queue and self._running is None) or self._stop, timeout)

    def stop(self) -> None:
        """Stop the thread after the finalizer it is running (if any) returns; queued ones
        are dropped, as Go does not run finalizers at exit. Idempotent."""
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._running = None
                self._cond.notify_all()          # wait_idle may be waiting for this
                self._cond.wait_for(lambda: self._queue or self._stop)
                if self._stop:
                    return
                p, fn, arg = self._queue.popleft()
                self._running = p
            try:
                fn(arg)
            except BaseException:
                # SystemExit and KeyboardInterrupt too: raised here they would end this
                # thread, and with it every later finalizer, without a word.
                self.failed += 1
                if p:
                    _log.exception("finalizer %r for object %#x raised", fn, p)
                else:
                    _log.exception("cleanup %r(%r) raised", fn, arg)
            self.ran += 1
            del fn, arg


class Finalizers:
    """The finalizer side of one heap: the SetFinalizer contract, the collector's pass and
    the queue, for ``collector`` and its allocator."""

    def __init__(self, collector: Collector, specials: Specials) -> None:
        self.collector = collector
        self.allocator = collector.allocator
        self.specials = specials
        self.queue = FinalizerQueue()
        self.queued_total = 0
        self.revived: set[tuple[int, int]] = set()   # (span id, slot) revived this cycle
        collector.extra_roots.append(self.queue.pending_addresses)
        collector.after_mark.append(self.after_mark)
        collector.after_cycle.append(self.queue.wake)

    # --- SetFinalizer --------------------------------------------------------------------

    def set(self, p: int, fn: Callable[[int], object] | None) -> None:
        """SetFinalizer(p, fn); see Heap.set_finalizer for the contract. Checks come before
        any change."""
        if fn is not None and not callable(fn):
            raise FinalizerNotCallable(f"finalizer must be callable or None, not "
                                       f"{type(fn).__name__}")
        allocator = self.allocator
        # No collection while the specials change; inside(): close() waits for this call.
        with self.collector.lock, allocator.inside():
            p = allocator.check_addr(p)
            allocator.check_open()
            if p == allocator.zerobase:
                return                     # zero-size objects: accepted, never run
            s, offset = self._object_offset(p)
            if fn is None:
                self.specials.remove_finalizer(s, offset)
                return
            self.queue.start()
            if not self.specials.add_finalizer(s, offset, fn):
                raise FinalizerAlreadySet(f"{p:#x} already has a finalizer")

    def _object_offset(self, p: int):
        """(span, offset of p in it) for a valid SetFinalizer target, after sweeping the span
        (so a dead object is not mistaken for a live one)."""
        s = self.allocator.mheap.span_of_heap(p)
        if s is not None:
            self.collector.sweeper.ensure_swept(s)
        found = self.allocator.find_object(p)
        if found is None:
            raise NotHeapPointer(f"set_finalizer: {p:#x} is not an allocated object of "
                                 f"this heap", p)
        s, idx = found
        base = s.base + idx * s.elemsize
        if p != base and not (s.tiny_blocks and idx in s.tiny_blocks):
            raise InteriorPointer(f"set_finalizer: {p:#x} is not the start of the object at "
                                  f"{base:#x}", p)
        return s, p - s.base

    # --- the collector's pass (world stopped) ---------------------------------------------

    def after_mark(self, marker) -> None:
        """Mark what finalizer objects reference, then queue the finalizers of the objects
        that stayed unmarked and mark those objects (see the module comment)."""
        self.revived = set()
        if not self.specials.finalizers:
            return
        records = [(s, rec) for s, rec in self.specials.finalizer_records()
                   if marker.in_snapshot[s.id]]
        if not records:
            return
        objs = [(s, 0 if s.sizeclass == 0 else rec.offset // s.elemsize) for s, rec in records]
        sids = np.array([s.id for s, _ in objs], dtype=np.int64)
        idxs = np.array([i for _, i in objs], dtype=np.int64)
        marker.mark_referents(sids, idxs)
        queued = []
        dead = []
        for (s, rec), (_, idx) in zip(records, objs, strict=True):
            if marker.is_marked(s, idx):
                continue
            fn = self.specials.take_finalizer(s, rec)
            queued.append((s.base + rec.offset, fn))
            dead.append((s, idx))
        for s, idx in dead:
            marker.mark_object(s, idx)
            self.revived.add((s.id, idx))
        if queued:
            self.queued_total += len(queued)
            self.queue.push(queued)

    # --- waiting and closing ---------------------------------------------------------------

    def run(self, timeout: float | None = None) -> bool:
        """Wake the thread and wait until no finalizer is queued or running."""
        if self.queue.thread is None:
            return True
        return self.queue.wait_idle(timeout)

    def close(self) -> None:
        self.queue.stop()
