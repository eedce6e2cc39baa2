"""A Heap's life as a whole: a Heap dropped without close() is collected by Python, and its
mappings and threads go with it."""

from __future__ import annotations

import gc
import threading
import weakref

import gcalloc


def _maps_ranges() -> list[tuple[int, int]]:
    with open("/proc/self/maps") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        lo, hi = line.split()[0].split("-")
        out.append((int(lo, 16), int(hi, 16)))
    return out


def test_dropped_heap_is_collected_and_unmapped():
    h = gcalloc.Heap(scavenger=True)
    keep = [h.new(gcalloc.Type(24, 0b11)) for _ in range(10)]
    for _ in range(5000):
        h.alloc(100)
    h.set_finalizer(keep[0].addr, lambda p: None)
    reservations = list(h._alloc.mheap.arenas.reservations)
    assert reservations
    ref = weakref.ref(h)
    threads_before = {t.name for t in threading.enumerate()}
    assert any(name.startswith("gcalloc") for name in threads_before)
    del h, keep
    gc.collect()
    assert ref() is None
    maps = _maps_ranges()
    for base, size in reservations:
        assert not any(lo < base + size and base < hi for lo, hi in maps), hex(base)
    assert not any(t.name.startswith("gcalloc-scavenger") for t in threading.enumerate())
