"""MemStats: Go's field set, the accounting invariants after various workloads, every mapped
byte counted, exact object counts, and close() returning every mapping."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import sys

import pytest

import gcalloc
from gcalloc.errors import HeapClosed
from gcalloc.sizeclasses import PAGE_SHIFT, make_span_class

MiB = 1 << 20
LARGE = make_span_class(0, True)

GO_FIELDS = {
    "alloc", "total_alloc", "sys", "lookups", "mallocs", "frees", "heap_alloc", "heap_sys",
    "heap_idle", "heap_inuse", "heap_released", "heap_objects", "stack_inuse", "stack_sys",
    "mspan_inuse", "mspan_sys", "mcache_inuse", "mcache_sys", "buck_hash_sys", "gc_sys",
    "other_sys", "next_gc", "last_gc", "pause_total_ns", "pause_ns", "pause_end", "num_gc",
    "num_forced_gc", "gc_cpu_fraction", "enable_gc", "debug_gc", "by_size",
}
# Go 1.16's class_to_size, written out independently of gcalloc's generated table.
GO_SIZES = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288,
    320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536,
    1792, 2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192,
    9472, 9728, 10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576,
    27264, 28672, 32768,
]


# --- workloads -------------------------------------------------------------------------------

def _empty(heap):
    pass


def _small(heap):
    ps = [heap.alloc(n, noscan=bool(i & 1)) for i, n in enumerate(range(1, 3000, 7))]
    for p in ps[::2]:
        heap.free(p)


def _large(heap):
    ps = [heap.alloc(n * 40000, noscan=True) for n in range(1, 30)]
    for p in ps[1::2]:
        heap.free(p)


def _manual(heap):
    heap.alloc(64)
    spans = [heap._alloc.mheap.alloc_manual(n) for n in (1, 4, 9)]
    heap._alloc.mheap.free_manual(spans[1])


def _scavenged(heap):
    _large(heap)
    p = heap.alloc(3 * MiB, noscan=True)
    ctypes.memset(p, 7, 3 * MiB)
    heap.free(p)
    heap.free_os_memory()
    heap.alloc(MiB, noscan=True)        # reuses part of what was released


def _multi_arena(heap):
    p = heap.alloc(70 * MiB, noscan=True)
    heap.alloc(100)
    heap.free(p)


WORKLOADS = [_empty, _small, _large, _manual, _scavenged, _multi_arena]


def _sum_sys(m) -> int:
    return (m.heap_sys + m.stack_sys + m.mspan_sys + m.mcache_sys + m.buck_hash_sys
            + m.gc_sys + m.other_sys)


def _mapped_bytes(heap) -> int:
    """Bytes the heap really holds from the OS, counted from its own records."""
    arenas = heap._alloc.mheap.arenas
    return (sum(n for _, n in arenas.reservations)
            + arenas._bitmap_region.mapped_bytes + arenas._pages_region.mapped_bytes
            + heap._alloc.mheap.gcbits._linear.mapped_bytes + heap._alloc.persistent.mapped_bytes)


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda f: f.__name__.strip("_"))
def test_invariants(heap, workload):
    workload(heap)
    m = heap.read_memstats()
    assert m.heap_idle + m.heap_inuse == m.heap_sys
    assert m.sys == _sum_sys(m)
    assert 0 <= m.heap_released <= m.heap_idle
    assert m.heap_alloc == m.alloc <= m.heap_inuse
    assert m.heap_objects == m.mallocs - m.frees
    assert m.total_alloc >= m.alloc
    assert m.mspan_inuse <= m.mspan_sys and m.mcache_inuse <= m.mcache_sys
    assert m.stack_inuse <= m.stack_sys
    # heap_sys is the arena space, less what manual spans took out.
    reserved = sum(n for _, n in heap._alloc.mheap.arenas.reservations)
    assert m.heap_sys == reserved - m.stack_inuse
    # Every byte mapped is counted: sys is what is mapped plus the notional fixalloc chunks
    # (mspan/mcache records live on the Python heap and are charged as Go would).
    assert m.sys - m.mspan_sys - m.mcache_sys == _mapped_bytes(heap)
    heap.verify()


def test_sys_counts_growth_exactly(heap):
    before = heap.read_memstats()
    mapped_before = _mapped_bytes(heap)
    heap.alloc(130 * MiB, noscan=True)
    after = heap.read_memstats()
    def real(m):      # sys less the notional fixalloc chunks
        return m.sys - m.mspan_sys - m.mcache_sys

    assert real(after) - real(before) == _mapped_bytes(heap) - mapped_before
    assert after.heap_sys - before.heap_sys >= 130 * MiB


def test_rss_is_within_sys(heap, rss):
    r0 = rss()
    p = heap.alloc(64 * MiB, noscan=True)
    ctypes.memset(p, 1, 64 * MiB)
    m = heap.read_memstats()
    assert rss() - r0 <= m.sys
    assert m.heap_inuse >= 64 * MiB


# --- the snapshot ----------------------------------------------------------------------------

def test_fields_are_gos():
    assert {f.name for f in dataclasses.fields(gcalloc.MemStats)} == GO_FIELDS


def test_snapshot_is_frozen(heap):
    m = heap.read_memstats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.heap_sys = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.by_size[1].mallocs = 5
    heap.alloc(100000)
    assert heap.read_memstats().heap_inuse > m.heap_inuse       # a new snapshot moved on


def test_by_size_rows(heap):
    heap.alloc(100)
    by = heap.read_memstats().by_size
    assert len(by) == 68
    assert [r.size for r in by] == GO_SIZES


def test_object_counts_exact(heap):
    def counts():
        m = heap.read_memstats()
        return m.mallocs, m.frees, m.heap_objects

    assert counts() == (0, 0, 0)
    tiny = [heap.alloc(4, noscan=True) for _ in range(3)]     # one 16-byte block + 2 combined
    assert tiny[1] == tiny[0] + 4
    assert counts() == (3, 2, 1)
    small = [heap.alloc(100) for _ in range(5)]
    assert counts() == (8, 2, 6)
    heap.free(small[0])
    heap.free(small[3])
    assert counts() == (8, 4, 4)
    large = [heap.alloc(100000, noscan=True) for _ in range(3)]
    heap.free(large[1])
    assert counts() == (11, 5, 6)
    m = heap.read_memstats()
    by = {r.size: r for r in m.by_size}
    assert (by[0].mallocs, by[0].frees) == (3, 1)
    assert (by[16].mallocs, by[16].frees) == (1, 0)
    assert (by[112].mallocs, by[112].frees) == (5, 2)
    large_bytes = 13 << PAGE_SHIFT                                # 100000 B -> 13 pages
    assert m.total_alloc == 16 + 5 * 112 + 3 * large_bytes
    assert m.heap_alloc == 16 + 3 * 112 + 2 * large_bytes


def test_lookups_counted(heap):
    p = heap.alloc(64)
    for _ in range(3):
        heap.lookup(p)
    assert heap.read_memstats().lookups == 3


# --- close -----------------------------------------------------------------------------------

def _heap_ranges(heap) -> list[tuple[int, int]]:
    """Every address range the heap took from the OS: arenas, metadata regions, gcBits,
    persistentalloc chunks."""
    arenas = heap._alloc.mheap.arenas
    ranges = [(b, b + n) for b, n in arenas.reservations]
    for region in (arenas._bitmap_region, arenas._pages_region, heap._alloc.mheap.gcbits._linear):
        ranges.append((region.base, region.end))
    ranges += [(b, b + n) for b, n in heap._alloc.persistent.mappings()]
    return ranges


def _proc_maps() -> list[tuple[int, int]]:
    buf = bytearray(4 << 20)          # preallocated: reading makes no new mappings
    fd = os.open("/proc/self/maps", os.O_RDONLY)
    try:
        n = 0
        while True:
            k = os.readv(fd, [memoryview(buf)[n:]])
            if not k:
                break
            n += k
    finally:
        os.close(fd)
    out = []
    for line in bytes(buf[:n]).decode().splitlines():
        lo, hi = line.split()[0].split("-")
        out.append((int(lo, 16), int(hi, 16)))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_close_returns_every_mapping():
    h = gcalloc.Heap(-1, scavenger=False, debug="")
    for workload in WORKLOADS:
        workload(h)
    ranges = _heap_ranges(h)
    assert len(ranges) >= 6
    maps = _proc_maps()
    for lo, hi in ranges:                                   # all present while open
        assert any(a <= lo and hi <= b or lo < b and a < hi for a, b in maps)
    h.close()
    maps = _proc_maps()
    overlaps = [(hex(lo), hex(hi)) for lo, hi in ranges
                for a, b in maps if lo < b and a < hi]
    assert overlaps == []


def test_calls_after_close_raise_heap_closed():
    h = gcalloc.Heap(-1, scavenger=False, debug="")
    p = h.alloc(64)
    big = h.alloc(100000)
    h.close()
    h.close()                                               # idempotent
    assert h.closed
    calls = [
        lambda: h.alloc(8), lambda: h.alloc(4, noscan=True), lambda: h.alloc(100000),
        lambda: h.alloc(5000), lambda: h.free(p), lambda: h.free(big), lambda: h.lookup(p),
        h.read_memstats, h.verify, h.free_os_memory, lambda: h.usable_size(p),
    ]
    for call in calls:
        with pytest.raises(HeapClosed):
            call()
