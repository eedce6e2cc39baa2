"""Heap arenas: placement at Go's hints, the arena index (scalar and numpy), hint fallback,
disjoint heaps, and the page -> span map."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest

import gcalloc
import gcalloc.os as gos
from gcalloc.arena import (
    ARENA_BITS,
    ARENA_L2_BITS,
    HEAP_ARENA_BYTES,
    IS_AMD64,
    IS_ARM64,
    LOG_HEAP_ARENA_BYTES,
    MASK64,
    PAGES_PER_ARENA,
    ArenaHint,
    arena_base,
    arena_index,
    initial_hints,
)
from gcalloc.mspan import SPAN_DEAD
from gcalloc.sizeclasses import PAGE_SHIFT, PAGE_SIZE, make_span_class

LARGE = make_span_class(0, True)
FIRST_HINT = 0x0040 << 32 if IS_ARM64 else 0x00C0 << 32


def _arena_floor(p: int) -> int:
    return p & ~(HEAP_ARENA_BYTES - 1)


def _run_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GCALLOC_DEBUG", "GCALLOC_GOGC")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


# --- placement -------------------------------------------------------------------------------

def test_first_object_of_fresh_process_lands_at_first_hint():
    code = "import gcalloc; h = gcalloc.Heap(); print(hex(h.alloc(8)))"
    assert _run_python(code) == hex(FIRST_HINT)


def test_hint_series_is_gos():
    hints = initial_hints()
    assert len(hints) == 0x80
    assert hints[-1].addr == FIRST_HINT          # a stack: tried first
    low = 0x0040 << 32 if IS_ARM64 else 0x00C0 << 32
    assert [h.addr for h in reversed(hints)] == [i << 40 | low for i in range(0x80)]
    assert not any(h.down for h in hints)


def test_heap_grows_upward_from_the_hint(heap):
    heap._alloc.mheap.alloc(1, LARGE, False)
    base, size = heap._alloc.mheap.arenas.reservations[0]
    # needs more arenas
    heap._alloc.mheap.alloc((HEAP_ARENA_BYTES >> PAGE_SHIFT) + 1, LARGE, False)
    if base == FIRST_HINT:   # first hint was free (no other heap in the way)
        assert heap._alloc.mheap.arenas.reservations[1][0] == base + size
    assert heap._alloc.mheap.arenas.hints[-1].addr == sum(heap._alloc.mheap.arenas.reservations[-1])
    heap._alloc.mheap.verify()


# --- the index -------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [
    0, 1, 0xC000000000, 0xC000000000 + HEAP_ARENA_BYTES - 1, 0x7FFFFFFFFFFF,
    0xFFFF800000000000, 0xFFFF800000000000 + 12345, MASK64,
])
def test_arena_index_base_round_trip(p):
    ri = arena_index(p)
    assert arena_base(ri) == _arena_floor(p)
    assert arena_index(arena_base(ri)) == ri


def test_arena_index_covers_both_halves_on_amd64():
    rng = random.Random(7)
    canonical = [rng.randrange(0, 1 << 47) for _ in range(200)]
    canonical += [rng.randrange(MASK64 - (1 << 47) + 1, MASK64 + 1) for _ in range(200)]
    for p in canonical:
        ri = arena_index(p)
        assert arena_base(ri) == _arena_floor(p)
        if IS_AMD64:
            assert ri < 1 << ARENA_BITS
    if IS_AMD64:
        assert arena_index(0xFFFF800000000000) == 0
        assert arena_index(0) == 1 << (47 - LOG_HEAP_ARENA_BYTES)
        assert arena_index(0x0000800000000000) >> ARENA_BITS    # non-canonical: off the index


def test_arena_of_heap_and_non_heap(heap):
    p = heap.alloc(100)
    arenas = heap._alloc.mheap.arenas
    a = arenas.arena_of(p)
    assert a is not None and a.base == _arena_floor(p)
    assert arenas.all[a.slot] is a
    assert arenas.arena_of(a.base + HEAP_ARENA_BYTES - 1) is a
    buf = np.zeros(16, np.uint8)
    for q in (0, buf.ctypes.data, 0x800000000000, MASK64, p + (1 << 64), -p):
        assert arenas.arena_of(q) is None
    assert heap.lookup(p + (1 << 64)) is None


def _random_pointers(heap, rng: random.Random) -> list[int]:
    arenas = heap._alloc.mheap.arenas
    ptrs = []
    for a in arenas.all:
        ptrs += [a.base, a.base + HEAP_ARENA_BYTES - 1, a.base - 1, a.base + HEAP_ARENA_BYTES]
        ptrs += [a.base + rng.randrange(HEAP_ARENA_BYTES) for _ in range(50)]
    ptrs += [rng.randrange(1 << 64) for _ in range(300)]
    ptrs += [rng.randrange(1 << 47) for _ in range(300)]
    ptrs += [0, MASK64, 0x800000000000, 0xFFFF800000000000]
    return ptrs


def test_slots_of_agrees_with_arena_of(heap):
    heap._alloc.mheap.alloc(1, LARGE, False)
    heap._alloc.mheap.alloc(2 * (HEAP_ARENA_BYTES >> PAGE_SHIFT), LARGE, False)   # 3+ arenas
    arenas = heap._alloc.mheap.arenas
    assert len(arenas.all) >= 3
    ptrs = _random_pointers(heap, random.Random(1))
    got = arenas.slots_of(np.array(ptrs, dtype=np.uint64))
    want = []
    for p in ptrs:
        a = arenas.arena_of(p)
        want.append(0 if a is None else a.slot + 1)
    assert got.tolist() == want
    assert sum(1 for w in want if w) >= 50 * len(arenas.all)


def test_l2_entries_name_each_arena(heap):
    heap._alloc.mheap.alloc(HEAP_ARENA_BYTES >> PAGE_SHIFT, LARGE, False)
    arenas = heap._alloc.mheap.arenas
    for a in arenas.all:
        ri = arena_index(a.base)
        l2 = arenas.l1[ri >> ARENA_L2_BITS]
        assert int(l2[ri & ((1 << ARENA_L2_BITS) - 1)]) == a.slot + 1
    assert int(np.count_nonzero(arenas.l1[0])) == len(arenas.all)


# --- hints failing ---------------------------------------------------------------------------

def test_fallback_when_every_hint_is_taken():
    held = []
    try:
        for hint in initial_hints():
            v = gos.sys_reserve(hint.addr, HEAP_ARENA_BYTES)
            assert v is not None
            held.append(v)   # at the hint, or elsewhere if something already sits there
        with gcalloc.Heap(-1, scavenger=False, debug="") as h:
            p = h.alloc(8)
            (v, size), = h._alloc.mheap.arenas.reservations
            assert v <= p < v + size
            assert v % HEAP_ARENA_BYTES == 0
            assert v not in {hint.addr for hint in initial_hints()}
            hints = h._alloc.mheap.arenas.hints
            assert [(x.addr, x.down) for x in hints] == [(v, True), (v + size, False)]
            h.verify()
    finally:
        for v in held:
            gos.sys_free(v, HEAP_ARENA_BYTES, None)


def test_fallback_then_growth_tries_the_new_up_hint(heap, monkeypatch):
    occupied, size = gos.sys_reserve_aligned(None, HEAP_ARENA_BYTES, HEAP_ARENA_BYTES)
    try:
        arenas = heap._alloc.mheap.arenas
        monkeypatch.setattr(arenas, "hints", [ArenaHint(occupied, down=False)])
        heap.alloc(8)
        (v, vsize), = arenas.reservations
        assert v != occupied and v % HEAP_ARENA_BYTES == 0
        assert [(x.addr, x.down) for x in arenas.hints] == [(v, True), (v + vsize, False)]

        tried = []
        real = gos.sys_reserve

        def spy(hint, n):
            tried.append(hint)
            return real(hint, n)

        monkeypatch.setattr(gos, "sys_reserve", spy)
        p = heap.alloc(HEAP_ARENA_BYTES, noscan=True)    # more than the first arena holds
        assert tried[0] == v + vsize                      # up hint first, as Go
        assert len(arenas.reservations) == 2
        nb, nsize = arenas.reservations[1]
        assert nb % HEAP_ARENA_BYTES == 0
        if nb == v + vsize:     # the up hint held: the object may run across both regions
            assert v <= p and p + HEAP_ARENA_BYTES <= nb + nsize
        else:
            assert nb <= p and p + HEAP_ARENA_BYTES <= nb + nsize
        assert heap._alloc.mheap.span_of(p + HEAP_ARENA_BYTES - 1) is heap._alloc.mheap.span_of(p)
        heap.verify()
    finally:
        gos.sys_free(occupied, size, None)


def test_two_heaps_get_disjoint_arenas(heap):
    with gcalloc.Heap(-1, scavenger=False, debug="") as other:
        p1 = heap.alloc(64)
        p2 = other.alloc(64)
        r1 = heap._alloc.mheap.arenas.reservations
        r2 = other._alloc.mheap.arenas.reservations
        for b1, n1 in r1:
            for b2, n2 in r2:
                assert b1 + n1 <= b2 or b2 + n2 <= b1
        assert heap._alloc.mheap.span_of(p2) is None and other._alloc.mheap.span_of(p1) is None
        assert heap.lookup(p2) is None and other.lookup(p1) is None
        assert heap.lookup(p1) == (p1, 64)


# --- page -> span map ------------------------------------------------------------------------

def _workload(heap) -> None:
    keep = []
    for i in range(300):
        keep.append(heap.alloc([8, 100, 3000, 20000, 70000, 300000][i % 6], noscan=bool(i & 1)))
    for p in keep[::3]:
        heap.free(p)
    heap._alloc.mheap.alloc_manual(5)
    heap._alloc.mheap.alloc((HEAP_ARENA_BYTES >> PAGE_SHIFT) + 7, LARGE, False).allocCount = 1


def test_page_map_exact_for_every_page(heap):
    _workload(heap)
    heap.verify()
    mh = heap._alloc.mheap
    arenas = mh.arenas
    seen = 0
    for s in mh.live_spans():
        for i in range(s.npages):
            idx = arenas.page_index(s.base + (i << PAGE_SHIFT))
            assert int(arenas.page_span[idx]) == s.id
        seen += s.npages
        for q in (s.base, s.base + (s.npages << PAGE_SHIFT) - 1):
            assert mh.span_of(q) is s
    assert any(s.npages > (HEAP_ARENA_BYTES >> PAGE_SHIFT) for s in mh.live_spans())
    grown = sum(n for _, n in arenas.reservations) >> PAGE_SHIFT
    assert seen == grown - ((mh.cur_end - mh.cur_base) >> PAGE_SHIFT)
    if mh.cur_end > mh.cur_base:                           # not carved yet: no span
        assert mh.span_of(mh.cur_base) is None
        assert mh.span_of(mh.cur_end - 1) is None
    # Only live spans appear in the (mapped part of the) map: no dead record is named.
    mapped = arenas.page_span[:len(arenas.all) * PAGES_PER_ARENA]
    live = {s.id for s in mh.live_spans()}
    dead = {s.id for s in mh.spans[1:] if s is not None and s.state == SPAN_DEAD}
    named = set(np.unique(mapped).tolist()) - {0}
    assert named == live and not named & dead


def test_span_of_in_heap_and_find_object(heap):
    p = heap.alloc(48)
    big = heap.alloc(100000, noscan=True)
    mh = heap._alloc.mheap
    s = mh.span_of(p)
    assert s is not None and s.base <= p < s.limit
    assert mh.in_heap(p) and mh.in_heap(p + 47)
    assert heap.lookup(p + 20) == (p, 48)
    assert heap._alloc.find_object(p + 47) == (s, (p - s.base) // 48)
    ls = mh.span_of(big)
    whole = ls.npages * PAGE_SIZE                             # a large object owns its span
    assert whole == 13 * PAGE_SIZE and ls.limit == big + whole
    assert mh.in_heap(big + 99999) and mh.in_heap(big + 100000)
    assert heap.lookup(big + whole - 1) == (big, whole)
    assert mh.span_of(big + whole) is not ls
    manual = mh.alloc_manual(1)
    assert mh.span_of(manual.base) is manual and not mh.in_heap(manual.base)
    assert heap.lookup(manual.base) is None
    heap.free(big)
    assert not mh.in_heap(big) and heap.lookup(big) is None
    assert mh.span_of(big) is not None                        # now part of a free span
    assert not mh.in_heap(0) and mh.span_of(PAGE_SIZE) is None
