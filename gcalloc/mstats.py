"""Memory statistics: the counters the allocator keeps and Go's runtime.MemStats built from them.

Two halves, as in Go's mstats.go:
- ``HeapStats`` holds the live counters. The OS-facing ones are ``SysMemStat`` objects that the
  OS layer moves on every map/unmap, so "every byte mapped is counted" holds by construction.
  The others are plain ints moved under the heap lock by the page heap, or per class by
  mcentral/mcache when spans change hands (never on the allocation fast path).
- ``MemStats`` is the frozen snapshot ``Heap.read_memstats()`` returns, with Go's field names in
  snake_case.

Invariants (checked by ``HeapStats.check`` and the tests):
    heap_inuse + heap_idle == heap_sys         (heap_idle is derived)
    heap_released <= heap_idle
    sys == the sum of the *_sys fields
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gcalloc.errors import HeapCorruption
from gcalloc.os import SysMemStat
from gcalloc.sizeclasses import NUM_SIZE_CLASSES, NUM_SPAN_CLASSES, class_to_size


class HeapStats:
    """The live counters of one heap."""

    __slots__ = (
        "heap_sys", "stacks_sys", "mspan_sys", "mcache_sys", "buckhash_sys", "gc_sys",
        "other_sys", "heap_inuse", "heap_released", "stacks_inuse", "mspan_inuse",
        "mcache_inuse", "large_alloc", "large_alloc_count", "large_free", "large_free_count",
        "small_alloc_count", "small_free_count", "tiny_allocs", "lookups",
    )

    def __init__(self) -> None:
        # Bytes mapped from the OS, by purpose. heap_sys: arenas mapped for the heap, less
        # what manual spans took out (they count in stacks_inuse instead, as in Go 1.16).
        self.heap_sys = SysMemStat("heap_sys")
        self.stacks_sys = SysMemStat("stacks_sys")
        self.mspan_sys = SysMemStat("mspan_sys")
        self.mcache_sys = SysMemStat("mcache_sys")
        self.buckhash_sys = SysMemStat("buckhash_sys")
        self.gc_sys = SysMemStat("gc_sys")
        self.other_sys = SysMemStat("other_sys")
        # Bytes of heap pages in in-use (object) spans; heap_inuse <= heap_sys.
        self.heap_inuse = 0
        # Bytes of free heap pages returned to the OS; heap_released <= heap_sys - heap_inuse.
        self.heap_released = 0
        # Bytes in manual (non-object) spans.
        self.stacks_inuse = 0
        # Bytes of span / mcache records in use, charged by their fixallocs.
        self.mspan_inuse = SysMemStat("mspan_inuse")
        self.mcache_inuse = SysMemStat("mcache_inuse")
        # Object counts and bytes, flushed from mcaches (never touched by the fast path).
        # Large objects (size class 0): written under the heap lock by the page heap.
        self.large_alloc = 0
        self.large_alloc_count = 0
        self.large_free = 0
        self.large_free_count = 0
        # Per span class: objects handed to mcaches (a whole span's free slots at refill,
        # corrected at uncache) and objects freed (by sweep or explicit free). Entry spc is
        # only written under that class's mcentral lock, so threads never race on it.
        self.small_alloc_count = [0] * NUM_SPAN_CLASSES
        self.small_free_count = [0] * NUM_SPAN_CLASSES
        self.tiny_allocs = 0
        self.lookups = 0

    def sys_counters(self) -> tuple[SysMemStat, ...]:
        return (self.heap_sys, self.stacks_sys, self.mspan_sys, self.mcache_sys,
                self.buckhash_sys, self.gc_sys, self.other_sys)

    def total_sys(self) -> int:
        return self.heap_sys.value + self.stacks_inuse + sum(
            s.value for s in self.sys_counters()[1:])

    def check(self) -> None:
        """Raise HeapCorruption if the counters contradict each other."""
        problems = []
        heap_sys = self.heap_sys.value
        if not 0 <= self.heap_inuse <= heap_sys:
            problems.append(f"heap_inuse {self.heap_inuse} outside [0, heap_sys {heap_sys}]")
        if not 0 <= self.heap_released <= heap_sys - self.heap_inuse:
            problems.append(f"heap_released {self.heap_released} > heap_idle "
                            f"{heap_sys - self.heap_inuse}")
        for counter in self.sys_counters():
            if counter.value < 0:
                problems.append(f"{counter.name} is negative: {counter.value}")
        if problems:
            raise HeapCorruption("memory statistics inconsistent: " + "; ".join(problems))


@dataclass(frozen=True)
class SizeClassStats:
    """One row of MemStats.by_size (Go's BySize entry)."""

    size: int
    mallocs: int
    frees: int


@dataclass(frozen=True)
class MemStats:
    """A snapshot of the heap's statistics: Go's runtime.MemStats in snake_case.

    Byte counts are in bytes; times in nanoseconds (``last_gc`` and ``pause_end`` since the
    Unix epoch). ``pause_ns`` and ``pause_end`` are circular buffers of 256 entries indexed by
    ``(num_gc + 255) % 256`` for the most recent cycle, as in Go.
    """

    alloc: int
    total_alloc: int
    sys: int
    lookups: int
    mallocs: int
    frees: int
    heap_alloc: int
    heap_sys: int
    heap_idle: int
    heap_inuse: int
    heap_released: int
    heap_objects: int
    stack_inuse: int
    stack_sys: int
    mspan_inuse: int
    mspan_sys: int
    mcache_inuse: int
    mcache_sys: int
    buck_hash_sys: int
    gc_sys: int
    other_sys: int
    next_gc: int
    last_gc: int
    pause_total_ns: int
    pause_ns: tuple[int, ...] = field(repr=False)
    pause_end: tuple[int, ...] = field(repr=False)
    num_gc: int
    num_forced_gc: int
    gc_cpu_fraction: float
    enable_gc: bool
    debug_gc: bool
    by_size: tuple[SizeClassStats, ...] = field(repr=False)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def by_size_rows(mallocs: list[int], frees: list[int]) -> tuple[SizeClassStats, ...]:
    """Go's BySize: one row per size class, class 0 included (its size is 0)."""
    return tuple(SizeClassStats(class_to_size[i], mallocs[i], frees[i])
                 for i in range(NUM_SIZE_CLASSES))


class _CountingCache(Protocol):
    """What memstats reads of a thread cache (gcalloc.mcache.MCache)."""

    tiny_allocs: int

    def uncounted_slots(self) -> Iterable[tuple[int, int]]: ...


def object_counts(st: HeapStats, mcaches: Iterable[_CountingCache]
                  ) -> tuple[list[int], list[int], int]:
    """Per size class (mallocs, frees) and tiny allocations, with cached spans' unused
    slots taken back out (exact when no other thread is allocating)."""
    mallocs = [0] * NUM_SIZE_CLASSES
    frees = [0] * NUM_SIZE_CLASSES
    for spc in range(NUM_SPAN_CLASSES):
        mallocs[spc >> 1] += st.small_alloc_count[spc]
        frees[spc >> 1] += st.small_free_count[spc]
    tiny = st.tiny_allocs
    for c in list(mcaches):
        tiny += c.tiny_allocs
        for spc, unused in c.uncounted_slots():
            mallocs[spc >> 1] -= unused
    mallocs[0] = st.large_alloc_count
    frees[0] = st.large_free_count
    return mallocs, frees, tiny


def memstats(st: HeapStats, mcaches: Iterable[_CountingCache], gc_fields: dict[str, Any]
             ) -> MemStats:
    """The MemStats snapshot of the counters ``st``, the thread caches ``mcaches`` and the
    collector's fields ``gc_fields`` (call under the heap lock, inside a safepoint region)."""
    mallocs, frees, tiny = object_counts(st, mcaches)
    total_alloc = st.large_alloc + sum(mallocs[i] * class_to_size[i]
                                       for i in range(1, NUM_SIZE_CLASSES))
    total_free = st.large_free + sum(frees[i] * class_to_size[i]
                                     for i in range(1, NUM_SIZE_CLASSES))
    nmalloc = sum(mallocs) + tiny
    nfree = sum(frees) + tiny
    heap_sys = st.heap_sys.value
    return MemStats(
        alloc=total_alloc - total_free, total_alloc=total_alloc, sys=st.total_sys(),
        lookups=st.lookups, mallocs=nmalloc, frees=nfree,
        heap_alloc=total_alloc - total_free, heap_sys=heap_sys,
        heap_idle=heap_sys - st.heap_inuse, heap_inuse=st.heap_inuse,
        heap_released=st.heap_released, heap_objects=nmalloc - nfree,
        stack_inuse=st.stacks_inuse, stack_sys=st.stacks_inuse + st.stacks_sys.value,
        mspan_inuse=st.mspan_inuse.value, mspan_sys=st.mspan_sys.value,
        mcache_inuse=st.mcache_inuse.value, mcache_sys=st.mcache_sys.value,
        buck_hash_sys=st.buckhash_sys.value, gc_sys=st.gc_sys.value,
        other_sys=st.other_sys.value,
        by_size=by_size_rows(mallocs, frees), **gc_fields,
    )
