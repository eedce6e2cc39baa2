"""The collection cycle (Go's mgc.go: gcStart, gcMarkDone, gcMarkTermination), stop-the-world.

    collect ─ stop the world ─ stop the C threads ─ finish the last sweep ─ flush the mcaches
            ─ mark from the roots (+ the object a triggering allocation just made)
            ─ specials hooks (finalizers) ─ write gcmarkBits ─ h.sweepgen += 2
            ─ batch-sweep the spans that need no per-object work
            ─ pacing, statistics ─ [collect(): sweep everything] ─ resume the C threads
            ─ start the world

Stopping the world (world.World, shared with close()): every thread that enters the
allocator's slow paths (or free, or the calls that read heap memory) passes a safepoint that
parks it while a collection runs; the collector waits until no other thread is inside one (the
mcaches' ``mallocing`` flags). The allocation fast path is a single atomic step (a run
iterator's ``next``), so a thread parked anywhere is never halfway through it; flushing the
mcaches exhausts the runs, which sends every thread to a safepoint on its next allocation.
Once the heap is closed, stopping the world raises HeapClosed, so no cycle starts; close()
itself waits for a cycle in progress to start the world again. C threads registered through
the C ABI are stopped right after the world, by signal or in their call (gc/cthreads.py,
docs/capi_threads.md), and their stacks are roots; other memory that Python or C code writes
without calling gcalloc is not stopped: see docs/gc.md ("what stops").

Automatic cycles start from the slow paths when the pacer says heap_live reached the goal,
with the triggering allocation treated as a root for that cycle so the caller receives a live
object. With a soft memory limit (gc/memlimit.py) the goal may be the limit's; such a cycle is
skipped while the CPU limiter is full, and after each cycle, and before the page heap grows,
free pages go back to the OS to keep under the limit (``scavenge_for_limit``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gcalloc.debug import DebugFlags
from gcalloc.gc import marknative, trace
from gcalloc.gc.cthreads import CThreads
from gcalloc.gc.mark import Marker, MarkScratch
from gcalloc.gc.memlimit import MAX_INT64, SCAVENGE_REDUCE_PERCENT, CPULimiter, mapped_ready
from gcalloc.gc.pacer import Pacer
from gcalloc.gc.roots import RootSet
from gcalloc.gc.sweep import Sweeper
from gcalloc.gc.view import AllocatorView
from gcalloc.scavenge import scavenge_bytes


class Collector:
    """The collector of one heap."""

    def __init__(self, allocator: AllocatorView, gc_percent: int, debug: DebugFlags,
                 verify: Callable[[], None]) -> None:
        self.allocator = allocator
        self.verify = verify      # the whole heap's verify, for debug=verify=1
        self.roots = RootSet()
        self.sweeper = Sweeper(allocator)
        self.pacer = Pacer(gc_percent)
        self.pacer.measure = lambda: mapped_ready(allocator.stats)
        self.limiter = CPULimiter()
        self.limit_scavenged = 0      # bytes scavenge_for_limit returned to the OS
        self.lock = threading.RLock()       # one cycle at a time; Heap.no_gc() holds it
        self.inhibit = 0                    # no_gc() depth: automatic cycles wait
        self.debug = debug
        self.num_gc = 0
        self.num_forced_gc = 0
        self.pause_ns = [0] * 256
        self.pause_end = [0] * 256
        self.pause_total_ns = 0
        self.last_gc = 0
        self.gc_seconds = 0.0
        self.created = time.monotonic()
        self.last_marker: Marker | None = None
        # Specials hooks (gc/finalizer.py, gc/mprof.py): called with the Marker.
        self.extra_roots: list = []     # fn() -> array of candidate pointers
        self.after_mark: list = []      # fn(marker): may mark more (finalizer resurrection)
        self.after_cycle: list = []     # fn(): the cycle is over and the world restarted
        self.scalar_frontier: int | None = None   # tests force a mark path with this
        # C threads (gc/cthreads.py): stopped after the world, their stacks as roots. The
        # locks are those marking takes that a thread may hold outside a safepoint region.
        self.cthreads = CThreads(quiesce=[self.roots.lock, allocator.mheap.lock])
        self.extra_roots.append(self.cthreads.candidates)
        self.graph_cost: float | None = None      # and the graph path on (0) or off (inf)
        # The compiled drain (gc/marknative.py) once numba has loaded it (prepare: in the
        # background); False keeps the numpy paths (the tests that force a path set it).
        self.native_mark = True
        marknative.prepare()
        # Sweep plain spans as one batch at the end of automatic cycles too (see
        # Sweeper.sweep_batch); False leaves them all to lazy sweeping, as Go does.
        self.batch_sweep = True
        # Mark workers: Go's GOMAXPROCS-sized pool, here at most two (numpy's parallelism
        # beyond two threads is eaten by the interpreter lock between array operations).
        self.mark_workers = min(2, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        # The mark workers' scratch arrays and the mark words, kept from cycle to cycle.
        self.mark_scratch = MarkScratch()

    # --- triggering --------------------------------------------------------------------

    def poll(self, p: int) -> None:
        """A slow path allocated p; start a cycle if the heap reached its goal (not inside a
        ``Heap.no_gc()`` block: other threads wait on the lock, its own thread sees
        ``inhibit``)."""
        if self.pacer.should_collect() and not self.inhibit:
            if self.pacer.limit_driven() and self.limiter.limiting():
                self.limiter.skipped += 1     # only the memory limit asks: GC CPU capped
                return
            self.collect(forced=False, extra=[p])

    def collect(self, forced: bool = True, extra: list[int] = ()) -> None:  # type: ignore
        """Run one full cycle. ``forced`` cycles (runtime.GC) also sweep everything."""
        with self.lock:
            if not forced and not self.pacer.should_collect():
                return  # another thread collected while this one waited
            self._cycle(forced, list(extra))
            if self.pacer.memory_limit < MAX_INT64:
                self.scavenge_for_limit(0, SCAVENGE_REDUCE_PERCENT)
        for hook in self.after_cycle:
            hook()

    # --- the cycle ---------------------------------------------------------------------

    def _cycle(self, forced: bool, extra: list[int]) -> None:
        allocator = self.allocator
        wall0, cpu0 = time.perf_counter(), time.process_time()
        start_s = time.monotonic() - self.created
        heap_start = self.pacer.heap_live
        allocator.stop_the_world()
        try:
            self.cthreads.suspend_all()
            self.sweeper.finish()
            allocator.flush_mcaches(extra)
            wall1, cpu1 = time.perf_counter(), time.process_time()
            marker = self._mark(extra)
            heap_end = self.pacer.heap_live
            wall2, cpu2 = time.perf_counter(), time.process_time()
            marked_bytes = self._terminate(marker)
            if forced or self.batch_sweep:
                self.sweeper.sweep_batch(marker.spans, marker.marked_per_span(), forced)
            if forced:
                self.sweeper.finish()
            if self.pacer.memory_limit < MAX_INT64:
                self.pacer.commit()     # the sweep freed pages: the limit goal moved
            wall3, cpu3 = time.perf_counter(), time.process_time()
            self._account(forced, wall0, wall3)
            if self.debug.verify:
                self.verify()   # world still stopped: no thread changes what it reads
        finally:
            # A cycle that raised leaves no marker behind: allocating black into it would
            # slow every allocation and grow its list until the next cycle.
            allocator.marking = None
            self.cthreads.resume_all()
            allocator.start_the_world()
        if self.debug.gctrace:
            trace.emit(trace.CycleTimes(
                self.num_gc, start_s, wall1 - wall0, wall2 - wall1, wall3 - wall2,
                cpu1 - cpu0, cpu2 - cpu1, cpu3 - cpu2, heap_start, heap_end, marked_bytes,
                self.pacer.next_gc, forced, self.gc_cpu_fraction(), self.mark_workers,
                self.pacer.memory_limit))

    def _mark(self, extra: list[int]) -> Marker:
        allocator = self.allocator
        with allocator.mheap.lock:
            # Faulted (efence) spans hold no object and must not be read.
            spans = allocator.mheap.in_use_spans()
            if allocator.efence:
                spans = [s for s in spans if not s.faulted]
        kwargs = {} if self.scalar_frontier is None else {"scalar_frontier":
                                                          self.scalar_frontier}
        marker = Marker(allocator.mheap, spans, pool=self._mark_pool(),
                        scratch=self.mark_scratch, graph_cost=self.graph_cost,
                        native=self.native_mark, **kwargs)
        allocator.marking = marker
        # What threads hold without a root yet: tiny blocks and each run's last slot.
        held = [c.tiny for c in allocator.mcaches if c.tiny] + allocator.in_flight
        with self.roots.lock:
            candidates = self.roots.candidates(extra + held)
        parts = [candidates] + [fn() for fn in self.extra_roots]
        marker.mark_from(np.concatenate(parts) if len(parts) > 1 else candidates)
        for hook in self.after_mark:
            hook(marker)
        return marker

    def _terminate(self, marker: Marker) -> int:
        allocator = self.allocator
        marker.finish()
        allocator.marking = None
        marked = _marked_bytes(marker)
        self.sweeper.start_cycle(marker.spans)
        self.pacer.cycle_done(marked)
        self.last_marker = marker
        return marked

    def _account(self, forced: bool, wall0: float, wall3: float) -> None:
        pause = int((wall3 - wall0) * 1e9)
        end = time.time_ns()
        i = self.num_gc % 256
        self.pause_ns[i] = pause
        self.pause_end[i] = end
        self.pause_total_ns += pause
        self.last_gc = end
        self.num_gc += 1
        self.num_forced_gc += forced
        self.gc_seconds += wall3 - wall0
        self.limiter.cycle(wall0, wall3)

    def _mark_pool(self):
        """The second mark worker (a one-thread executor), on machines with two cores or
        more; created on first use, shut down by ``close``."""
        if self.mark_workers < 2:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcalloc-mark")
        return self._pool

    def scavenge_for_limit(self, grow: int, reduce_percent: int = 0) -> int:
        """Return free pages to the OS so that what the heap holds, plus ``grow`` bytes about
        to be taken, stays at most the limit less ``reduce_percent``. Returns the bytes
        released. The limit goal is recomputed first: metadata grows with the heap (a new
        arena maps its bitmaps at once), and what it takes the heap cannot have."""
        self.pacer.commit()
        limit = self.pacer.memory_limit
        goal = limit - limit // 100 * reduce_percent
        ready, _ = mapped_ready(self.allocator.stats)
        if ready + grow <= goal:
            return 0
        released = scavenge_bytes(self.allocator.mheap, ready + grow - goal)
        self.limit_scavenged += released
        return released

    def close(self) -> None:
        self.cthreads.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.mark_scratch = MarkScratch()

    def gc_cpu_fraction(self) -> float:
        elapsed = time.monotonic() - self.created
        return self.gc_seconds / elapsed if elapsed > 0 else 0.0

    def memstats(self) -> dict:
        return dict(next_gc=self.pacer.next_gc if self.pacer.next_gc < MAX_INT64 else 0,
                    last_gc=self.last_gc, pause_total_ns=self.pause_total_ns,
                    pause_ns=tuple(self.pause_ns), pause_end=tuple(self.pause_end),
                    num_gc=self.num_gc, num_forced_gc=self.num_forced_gc,
                    gc_cpu_fraction=self.gc_cpu_fraction(),
                    enable_gc=self.pacer.gc_percent >= 0, debug_gc=bool(self.debug.verify))


def _marked_bytes(marker: Marker) -> int:
    """Bytes of the objects the cycle marked."""
    if not marker.total:
        return 0
    per_span = marker.marked_per_span()
    return int((per_span * marker.objsize[marker.ids].astype(np.int64)).sum())
