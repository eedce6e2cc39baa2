"""Pacing: when the next collection starts (Go's GOGC, gcController, memstats.next_gc).

After a cycle marks ``heap_marked`` bytes, the goal is

    next_gc = max(heap_marked * (1 + GOGC/100), heapMinimum)

with Go's heapMinimum of 4 MiB scaled by GOGC/100. ``heap_live`` counts the bytes of objects
allocated since plus those marked: like Go 1.16 it charges a span's free slots when an mcache
takes the span (and refunds what it gives back), large objects when allocated, and subtracts
explicit frees. It is checked only on slow paths (refill, large allocation), as Go's
``shouldhelpgc`` is, so the fast path never looks at it.

Charge and refund balance slot by slot. Between cycles heap_live counts every slot of a span an
mcache holds (refill charged the free ones) and every allocated slot of the other spans. So an
explicit free (gccgo's __go_free; Go itself has none) refunds a slot only when it stops being
counted: a large object, a slot of an uncached span, a slot of a span another thread caches
(that thread's release_all does not see it as free). A slot freed into a span the freeing
thread itself caches stays charged: the thread hands it out again without a new charge, or
release_all refunds it with the span's other free slots. Refunding it at the free as well made
every alloc+free pair on a cached span count its bytes out twice, and heap_live fell below zero
(20,000 x alloc(1024)+free: -20 MiB, the first cycle 24 MiB late).

gcalloc stops the world for the whole cycle, so it triggers at the goal itself; Go triggers
earlier (its trigger ratio) only because its marking runs concurrently with allocation.

GOGC < 0 ("off") disables automatic collections; ``collect()`` still works.

A soft memory limit (``set_memory_limit``, gc/memlimit.py) gives a second goal, Go 1.19's
memoryLimitHeapGoal, and the pacer aims at the smaller: ``next_gc = min(gogc_goal,
limit_goal)``, so a limit triggers cycles with GOGC off too. The limit goal depends on what
the heap holds from the OS now, which ``measure()`` reads (set by the collector); it is
recomputed at the end of each cycle, after the sweep, and when the limit changes.
``limit_driven()`` says that only the limit asks for a cycle now: those are the cycles the
CPU limiter may refuse.
"""

from __future__ import annotations

from collections.abc import Callable

from gcalloc.errors import InvalidArgument
from gcalloc.gc.memlimit import MAX_INT64, limit_heap_goal

HEAP_MINIMUM = 4 << 20


class Pacer:
    __slots__ = ("gc_percent", "heap_marked", "next_gc", "heap_live", "memory_limit",
                 "gogc_goal", "limit_goal", "measure")

    def __init__(self, gc_percent: int) -> None:
        self.gc_percent = check_gc_percent(gc_percent)
        self.heap_marked = 0     # bytes marked by the last cycle
        self.heap_live = 0       # bytes allocated since + marked (approximate between cycles)
        self.next_gc = 0
        self.memory_limit = MAX_INT64
        self.gogc_goal = self.limit_goal = MAX_INT64
        # (mapped_ready, heap pages ready) now: what the heap holds from the OS and the part
        # of it that may hold objects without growing (memlimit.mapped_ready).
        self.measure: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.commit()

    def commit(self) -> None:
        """Recompute the goal from heap_marked, gc_percent and the memory limit (Go's
        gcSetTriggerRatio, gcControllerCommit)."""
        if self.gc_percent < 0:
            self.gogc_goal = MAX_INT64
        else:
            minimum = HEAP_MINIMUM * self.gc_percent // 100
            self.gogc_goal = max(self.heap_marked * (100 + self.gc_percent) // 100, minimum)
        if self.memory_limit < MAX_INT64:
            mapped, heap_ready = self.measure()
            self.limit_goal = limit_heap_goal(self.memory_limit, mapped,
                                              max(heap_ready - self.heap_live, 0),
                                              self.heap_live, self.heap_marked)
        else:
            self.limit_goal = MAX_INT64
        self.next_gc = min(self.gogc_goal, self.limit_goal)

    def set_memory_limit(self, n: int) -> int:
        """debug.SetMemoryLimit: n < 0 only reads. Returns the previous limit."""
        old = self.memory_limit
        if n >= 0:
            self.memory_limit = n
            self.commit()
        return old

    def limit_driven(self) -> bool:
        """The heap reached the memory-limit goal but not the GOGC one."""
        return self.heap_live < self.gogc_goal

    def set_gc_percent(self, n: int) -> int:
        old = self.gc_percent
        self.gc_percent = check_gc_percent(n)
        self.commit()
        return old

    def charge(self, nbytes: int) -> bool:
        """Add nbytes to heap_live; True if it has reached the goal (time to poll)."""
        # No lock: this runs on every refill, and a rare lost update between two threads
        # only moves the next trigger by one span's bytes until the next cycle resets it.
        self.heap_live += nbytes
        return self.heap_live >= self.next_gc

    def refund(self, nbytes: int) -> None:
        """Take back nbytes an earlier charge added (an explicit free). Never below zero: a
        refund cannot exceed what was charged, except after a lost update between two
        unlocked threads (see charge), and the floor keeps that from pushing the goal away."""
        live = self.heap_live - nbytes
        self.heap_live = live if live > 0 else 0

    def should_collect(self) -> bool:
        # next_gc is MAX_INT64 with GOGC off and no limit: never reached
        return self.heap_live >= self.next_gc

    def cycle_done(self, marked_bytes: int) -> None:
        self.heap_marked = marked_bytes     # the world is stopped: no charge runs now
        self.heap_live = marked_bytes
        self.commit()


def check_gc_percent(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgument(f"gc_percent must be an int, not {type(n).__name__}")
    return -1 if n < 0 else n
