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
"""

from __future__ import annotations

from gcalloc.errors import InvalidArgument

HEAP_MINIMUM = 4 << 20


class Pacer:
    __slots__ = ("gc_percent", "heap_marked", "next_gc", "heap_live")

    def __init__(self, gc_percent: int) -> None:
        self.gc_percent = check_gc_percent(gc_percent)
        self.heap_marked = 0     # bytes marked by the last cycle
        self.heap_live = 0       # bytes allocated since + marked (approximate between cycles)
        self.next_gc = 0
        self.commit()

    def commit(self) -> None:
        """Recompute the goal from heap_marked and gc_percent (Go's gcSetTriggerRatio)."""
        if self.gc_percent < 0:
            self.next_gc = (1 << 63) - 1
            return
        minimum = HEAP_MINIMUM * self.gc_percent // 100
        self.next_gc = max(self.heap_marked * (100 + self.gc_percent) // 100, minimum)

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
        return self.gc_percent >= 0 and self.heap_live >= self.next_gc

    def cycle_done(self, marked_bytes: int) -> None:
        self.heap_marked = marked_bytes     # the world is stopped: no charge runs now
        self.heap_live = marked_bytes
        self.commit()


def check_gc_percent(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgument(f"gc_percent must be an int, not {type(n).__name__}")
    return -1 if n < 0 else n
