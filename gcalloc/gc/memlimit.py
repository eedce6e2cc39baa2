"""The soft memory limit (Go 1.19 debug.SetMemoryLimit / GOMEMLIMIT) and the GC CPU limiter
(Go 1.19 mgclimit.go).

What the limit counts is Go's ``mappedReady``: every byte the heap holds from the OS and has
not returned, ``sys - heap_released`` in MemStats terms (heap pages in use or free but not
scavenged, span and bitmap metadata, persistent chunks). It is kept under the limit three
ways, as Go keeps it:

1. the pacer's goal becomes ``min(GOGC goal, memory-limit goal)``, even with GOGC off
   (``limit_heap_goal`` below: Go 1.21 mgcpacer.go's memoryLimitHeapGoal, its 3% / 1 MiB
   headroom included);
2. before the page heap grows (its ``reclaim`` hook), free pages are returned to the OS when
   the growth would take ``mappedReady`` over the limit (Go 1.19 mheap.go allocSpan's
   forced scavenge);
3. after every cycle the scavenger brings ``mappedReady`` down to 95% of the limit (Go 1.19
   mgcscavenge.go: the memory-limit goal is the limit less ``reduceExtraPercent`` = 5%).
   Go's background scavenger paces this over time; gcalloc does it at the end of the cycle,
   because its cycles are stop-the-world and Python programs are short-lived.

The limit is soft: a live heap bigger than the limit cannot be collected below it. Then the
goal is the live heap itself and every refill would start a cycle. The CPU limiter stops
that. It is Go's leaky bucket: GC time fills it, mutator time drains it; while it is full,
cycles that only the memory limit asks for are skipped (GOGC-paced cycles always run), so
over any stretch of time GC takes at most half of it plus one bucket (Go caps GC CPU at 50%).
Go's bucket holds one CPU-second per P; gcalloc's holds ``LIMITER_CAPACITY`` seconds of wall
time (one mutator, stop-the-world cycles), smaller so that the cap shows over the seconds a
Python program or test runs. Time is the collector's own accounting (perf_counter around the
cycle, as ``gc_cpu_fraction`` uses), so the bound holds by construction whatever the machine
does meanwhile.

Invariants: ``0 <= fill <= capacity + the longest cycle``; ``limit`` is in [0, MAX_INT64].
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gcalloc.debug import MAX_INT64
from gcalloc.errors import InvalidArgument

if TYPE_CHECKING:
    from gcalloc.mstats import HeapStats

HEADROOM_MIN = 1 << 20           # memoryLimitMinHeapGoalHeadroom
HEADROOM_PERCENT = 3             # memoryLimitHeapGoalHeadroomPercent
SCAVENGE_REDUCE_PERCENT = 5      # mgcscavenge.go reduceExtraPercent
LIMITER_CAPACITY = 0.1           # seconds (Go's capacityPerProc: 1 s per P)

def check_limit(n: object) -> int:
    """The argument of set_memory_limit: an int (a negative one reads). Raises
    InvalidArgument for anything else."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgument(f"memory limit must be an int, not {type(n).__name__}")
    return min(n, MAX_INT64)


def limit_heap_goal(limit: int, mapped_ready: int, heap_free: int, heap_alloc: int,
                    heap_marked: int) -> int:
    """Go's memoryLimitHeapGoal: the heap size at which the next cycle must start for the
    total to stay under ``limit``. ``mapped_ready - heap_free - heap_alloc`` is what counts
    against the limit and can never hold objects (metadata, fragmentation); it and the
    overage past the limit come off, then the headroom; never below the marked heap."""
    if limit >= MAX_INT64:
        return MAX_INT64
    non_heap = max(mapped_ready - heap_free - heap_alloc, 0)
    overage = max(mapped_ready - limit, 0)
    if non_heap + overage >= limit:
        return heap_marked
    goal = limit - (non_heap + overage)
    headroom = max(goal // 100 * HEADROOM_PERCENT, HEADROOM_MIN)
    goal = headroom if goal - headroom < headroom else goal - headroom
    return max(goal, heap_marked)


def mapped_ready(stats: HeapStats) -> tuple[int, int]:
    """(what the heap holds from the OS, the heap pages of it): Go's mappedReady, and the heap
    part that may hold objects without growing. Free slots of swept spans waiting in their
    mcentral count as heap too (Go frees an empty span to the page heap at once; gcalloc keeps
    it for a cycle), so what is left over is the metadata."""
    heap_ready = stats.heap_sys.value - stats.heap_released
    return stats.total_sys() - stats.heap_released, heap_ready


class CPULimiter:
    """Go's gcCPULimiter: a bucket of ``capacity`` seconds that GC time fills and mutator time
    drains. ``limiting()`` while it is full. Accounting (seconds, since the heap was made):
    ``gc_time`` and ``mutator_time`` so far, ``skipped`` cycles the limiter refused."""

    __slots__ = ("capacity", "fill", "gc_time", "mutator_time", "skipped", "_last",
                 "enabled_cycles")

    def __init__(self, capacity: float = LIMITER_CAPACITY) -> None:
        self.capacity = capacity
        self.fill = 0.0
        self.gc_time = 0.0
        self.mutator_time = 0.0
        self.skipped = 0
        self.enabled_cycles = 0     # cycles that ended with the bucket full
        self._last = time.perf_counter()

    def _drain_to(self, now: float) -> float:
        """Fill after the mutator time since the last update is drained (not applied)."""
        return max(self.fill - (now - self._last), 0.0)

    def limiting(self) -> bool:
        """Whether a cycle only the memory limit asks for must be skipped now."""
        return self._drain_to(time.perf_counter()) >= self.capacity

    def cycle(self, start: float, end: float) -> None:
        """A cycle ran from ``start`` to ``end`` (perf_counter): the mutator time before it
        drains the bucket, its own time fills it."""
        mut = max(start - self._last, 0.0)
        self.mutator_time += mut
        self.fill = max(self.fill - mut, 0.0) + (end - start)
        self.gc_time += end - start
        self._last = end
        if self.fill >= self.capacity:
            self.enabled_cycles += 1

    def gc_share(self) -> float:
        """GC time over GC plus mutator time, from this accounting."""
        total = self.gc_time + self.mutator_time
        return self.gc_time / total if total else 0.0


@dataclass(frozen=True)
class MemLimitStats:
    """What ``Heap.read_memlimit()`` returns: the limit and what it is measured against
    (Go's runtime/metrics /gc/gomemlimit:bytes, /memory/classes/total:bytes less released,
    /gc/heap/goal:bytes, /gc/limiter/last-enabled:gc-cycle), in bytes and seconds."""

    limit: int                # MAX_INT64: none
    mapped_ready: int         # sys - heap_released: what the limit bounds
    heap_goal: int            # the pacer's goal: min(GOGC goal, memory-limit goal)
    limit_goal: int           # the memory-limit goal alone (MAX_INT64 without a limit)
    scavenged: int            # bytes returned to the OS to keep under the limit
    limiter_skipped: int      # cycles the CPU limiter refused
    limiter_enabled_cycles: int
    gc_time: float            # the limiter's accounting (seconds)
    mutator_time: float

    @property
    def gc_share(self) -> float:
        total = self.gc_time + self.mutator_time
        return self.gc_time / total if total else 0.0
