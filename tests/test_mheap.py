"""The page heap: best fit, split and coalesce, growth, needzero, manual spans, state checks,
busy_large and verify() catching corruption."""

from __future__ import annotations

import ctypes

import pytest

from gcalloc.errors import HeapCorruption
from gcalloc.mheap import GROW_MIN_BYTES, GROW_QUANTUM
from gcalloc.mspan import SPAN_DEAD, SPAN_FREE, SPAN_IN_USE, SPAN_MANUAL
from gcalloc.sizeclasses import PAGE_SHIFT, PAGE_SIZE, make_span_class

LARGE = make_span_class(0, True)
SMALL = make_span_class(5, False)     # 48-byte objects, one page


@pytest.fixture
def mh(heap):
    return heap._alloc.mheap


def _pages(npages: int) -> int:
    return npages << PAGE_SHIFT


def _layout(mh, sizes: list[int]) -> list:
    """Allocate spans of the given sizes back to back, each followed by a 1-page separator
    that stays in use; return the spans (not the separators)."""
    spans = []
    for n in sizes:
        spans.append(mh.alloc(n, LARGE, False))
        mh.alloc(1, LARGE, False)
    return spans


# --- best fit --------------------------------------------------------------------------------

def test_best_fit_smallest_then_earliest(mh):
    a3, b2, c3, d5, e3 = _layout(mh, [3, 2, 3, 5, 3])
    assert a3.base < b2.base < c3.base < d5.base < e3.base
    bases = {s.id: s.base for s in (a3, b2, c3, d5, e3)}
    for s in (e3, d5, c3, b2, a3):                      # free out of address order
        mh.free_span(s)
    mh.verify()

    def take(n):
        return mh.alloc(n, LARGE, False).base

    assert take(3) == bases[a3.id]            # three 3-page spans: the earliest wins
    assert take(3) == bases[c3.id]
    assert take(4) == bases[d5.id]            # 5 is the best fit for 4: split, 1 page left
    assert take(2) == bases[b2.id]
    assert take(1) == bases[d5.id] + _pages(4)   # the remainder of the split
    assert take(3) == bases[e3.id]
    tail = take(3)                            # nothing small left: from the big free tail
    assert tail > bases[e3.id]
    mh.verify()


def test_best_fit_prefers_small_span_over_earlier_large_one(mh):
    big, small = _layout(mh, [8, 2])
    big_base, small_base = big.base, small.base      # records are recycled after free
    mh.free_span(big)
    mh.free_span(small)
    assert mh.alloc(2, LARGE, False).base == small_base
    assert mh.alloc(7, LARGE, False).base == big_base


# --- split and coalesce ----------------------------------------------------------------------

def test_split_leaves_exact_free_remainder(mh):
    (s,) = _layout(mh, [10])
    base = s.base
    mh.free_span(s)
    t = mh.alloc(4, LARGE, False)
    assert t.base == base and t.npages == 4
    rest = mh.span_of(base + _pages(4))
    assert rest.state == SPAN_FREE and rest.npages == 6 and rest.base == base + _pages(4)
    assert mh.span_of(base + _pages(10) - 1) is rest
    mh.verify()


def test_coalesce_both_neighbours(mh):
    x, y, z = (mh.alloc(4, LARGE, False) for _ in range(3))
    mh.alloc(1, LARGE, False)                          # keep z away from the free tail
    assert y.base == x.base + _pages(4) and z.base == y.base + _pages(4)
    mh.free_span(x)
    mh.free_span(z)
    nfree = len(mh.free)
    mh.free_span(y)
    merged = mh.span_of(x.base)
    assert merged.state == SPAN_FREE and merged.base == x.base and merged.npages == 12
    assert mh.span_of(z.base + _pages(4) - 1) is merged
    assert len(mh.free) == nfree - 1
    assert sum(1 for s in (x, y, z) if s.state == SPAN_DEAD) == 2
    mh.verify()


def test_free_next_to_tail_merges_into_it(mh):
    s = mh.alloc(3, LARGE, False)
    tail = mh.span_of(s.base + _pages(3))
    tail_pages = tail.npages
    mh.free_span(s)
    merged = mh.span_of(s.base)
    assert merged.npages == tail_pages + 3 and len(mh.free) == 1
    mh.verify()


# --- grow ------------------------------------------------------------------------------------

@pytest.mark.parametrize("npages", [1, 129, 200, 9000])
def test_grow_asks_quantum_multiples_of_at_least_1mib(heap, mh, monkeypatch, npages):
    asked = []
    real = mh._add_fresh_pages

    def spy(v, nbytes):
        asked.append(nbytes)
        real(v, nbytes)

    monkeypatch.setattr(mh, "_add_fresh_pages", spy)
    before = heap.read_memstats()
    s = mh.alloc(npages, LARGE, False)
    after = heap.read_memstats()
    (ask,) = asked
    assert ask >= GROW_MIN_BYTES and ask % GROW_QUANTUM == 0 and ask >= _pages(npages)
    assert ask - GROW_QUANTUM < max(_pages(npages), GROW_MIN_BYTES)   # the smallest such
    grown = after.heap_sys - before.heap_sys
    assert grown > 0 and grown == sum(n for _, n in mh.arenas.reservations)
    # Fresh arena space counts as released (Go 1.16) except what the span took.
    assert after.heap_released - before.heap_released == grown - _pages(npages)
    assert after.heap_inuse - before.heap_inuse == _pages(npages) == _pages(s.npages)
    mh.verify()


def test_no_grow_while_free_space_fits(heap, mh):
    mh.alloc(1, LARGE, False)
    sys_before = heap.read_memstats().heap_sys
    cur = mh.cur_base
    for _ in range(100):
        mh.alloc(1, LARGE, False)     # 100 more pages: inside the first 1 MiB
    assert heap.read_memstats().heap_sys == sys_before and mh.cur_base == cur


# --- needzero --------------------------------------------------------------------------------

class _MemsetSpy:
    """Stands in for the ctypes module inside gcalloc.mheap, recording memset calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def memset(self, p, c, n):
        self.calls.append((p, c, n))
        return ctypes.memset(p, c, n)

    def __getattr__(self, name):
        return getattr(ctypes, name)


@pytest.fixture
def memset_calls(monkeypatch):
    import gcalloc.mheap
    spy = _MemsetSpy()
    monkeypatch.setattr(gcalloc.mheap, "ctypes", spy)
    return spy.calls


def test_fresh_memory_is_not_cleared(mh, memset_calls):
    s = mh.alloc(4, LARGE, True)
    spans = mh.alloc_spans(1, SMALL, 8, True)
    assert memset_calls == []
    assert not s.needzero and not any(t.needzero for t in spans)
    assert ctypes.string_at(s.base, _pages(4)) == bytes(_pages(4))


def test_dirty_span_cleared_once_when_asked(mh, memset_calls):
    s = mh.alloc(4, LARGE, True)
    mh.alloc(1, LARGE, False)                               # separator
    ctypes.memset(s.base, 0xAB, _pages(4))
    base = s.base
    mh.free_span(s)
    t = mh.alloc(4, LARGE, True)
    assert t.base == base
    assert memset_calls == [(base, 0, _pages(4))]
    assert not t.needzero
    assert ctypes.string_at(base, _pages(4)) == bytes(_pages(4))


def test_dirty_span_not_cleared_without_needzero(mh, memset_calls):
    s = mh.alloc(2, LARGE, False)
    mh.alloc(1, LARGE, False)
    ctypes.memset(s.base, 0x5A, 16)
    mh.free_span(s)
    t = mh.alloc(2, LARGE, False)
    assert t.base == s.base and t.needzero and memset_calls == []
    assert ctypes.string_at(t.base, 16) == b"\x5a" * 16


def test_batch_from_dirty_run_cleared_in_one_call(mh, memset_calls):
    s = mh.alloc(8, LARGE, False)
    mh.alloc(1, LARGE, False)
    ctypes.memset(s.base, 0xFF, _pages(8))
    mh.free_span(s)
    spans = mh.alloc_spans(1, SMALL, 8, True)
    assert [t.base for t in spans] == [s.base + _pages(i) for i in range(8)]
    assert memset_calls == [(s.base, 0, _pages(8))]
    assert ctypes.string_at(s.base, _pages(8)) == bytes(_pages(8))
    assert not any(t.needzero for t in spans)
    mh.verify()


# --- manual spans ----------------------------------------------------------------------------

def test_alloc_free_manual_accounting(heap, mh):
    mh.alloc(1, LARGE, False)
    m0 = heap.read_memstats()
    s = mh.alloc_manual(3)
    m1 = heap.read_memstats()
    assert s.state == SPAN_MANUAL and s.npages == 3
    assert m1.stack_inuse - m0.stack_inuse == _pages(3)
    assert m0.heap_sys - m1.heap_sys == _pages(3)
    assert m1.stack_sys - m0.stack_sys == _pages(3)
    assert m1.sys == m0.sys and m1.heap_inuse == m0.heap_inuse
    assert m0.heap_released - m1.heap_released == _pages(3)     # fresh pages made Ready
    assert s.id not in mh.busy_large
    ctypes.memset(s.base, 1, _pages(3))                           # usable memory
    mh.verify()
    mh.free_manual(s)
    m2 = heap.read_memstats()
    assert (m2.stack_inuse, m2.heap_sys, m2.sys) == (m0.stack_inuse, m0.heap_sys, m0.sys)
    mh.verify()


# --- state checks ----------------------------------------------------------------------------

def test_state_checks_raise_and_change_nothing(heap, mh):
    s = mh.alloc(2, LARGE, False)
    m = mh.alloc_manual(1)
    mh.alloc(1, LARGE, False)
    mh.free_span(s)
    before = heap.read_memstats()
    with pytest.raises(HeapCorruption, match="not in use"):
        mh.free_span(s)                          # double free of a free span
    with pytest.raises(HeapCorruption, match="not in use"):
        mh.free_span(m)                          # manual span through free_span
    live = mh.alloc(1, LARGE, False)
    with pytest.raises(HeapCorruption, match="not manual"):
        mh.free_manual(live)
    with pytest.raises(HeapCorruption):
        mh.alloc(0, LARGE, False)
    assert live.state == SPAN_IN_USE and m.state == SPAN_MANUAL
    after = heap.read_memstats()
    assert after.heap_inuse == before.heap_inuse + PAGE_SIZE
    mh.verify()


def test_busy_large_tracks_large_spans(mh):
    large = mh.alloc(3, LARGE, False)
    small = mh.alloc(1, SMALL, False)
    assert mh.busy_large.get(large.id) is large
    assert small.id not in mh.busy_large
    mh.free_span(large)
    assert large.id not in mh.busy_large
    mh.verify()


# --- verify catches corruption ---------------------------------------------------------------

def _corrupted(mh, match: str) -> None:
    with pytest.raises(HeapCorruption, match=match):
        mh.verify()


def test_verify_page_map(mh):
    s = mh.alloc(3, LARGE, False)
    other = mh.alloc(1, LARGE, False)
    i = mh.arenas.page_index(s.base + PAGE_SIZE)
    mh.arenas.page_span[i] = other.id
    _corrupted(mh, "page map")
    mh.arenas.page_span[i] = s.id
    mh.verify()


def test_verify_stats(mh):
    mh.alloc(3, LARGE, False)
    st = mh.stats
    for name, delta, match in [("heap_inuse", PAGE_SIZE, "heap_inuse"),
                               ("heap_released", -PAGE_SIZE, "heap_released"),
                               ("stacks_inuse", PAGE_SIZE, "stacks_inuse")]:
        setattr(st, name, getattr(st, name) + delta)
        _corrupted(mh, match)
        setattr(st, name, getattr(st, name) - delta)
        mh.verify()
    st.heap_sys.add(PAGE_SIZE)
    _corrupted(mh, "heap_sys")
    st.heap_sys.sub(PAGE_SIZE)
    mh.verify()


def test_verify_adjacent_free_spans(mh):
    s = mh.alloc(6, LARGE, False)
    mh.alloc(1, LARGE, False)
    mh.free_span(s)
    free = mh.span_of(s.base)
    mh._remove_free(free)
    front = mh._carve_front(free, 2)       # bypasses coalescing: two free neighbours
    mh._insert_free(front)
    _corrupted(mh, "not coalesced")
    mh._remove_free(front)
    mh._coalesce_and_insert(front)
    assert mh.span_of(s.base).npages == 6
    mh.verify()


def test_verify_free_set_and_busy_list(mh):
    s = mh.alloc(2, LARGE, False)
    mh.alloc(1, LARGE, False)
    mh.free_span(s)
    free = mh.span_of(s.base)
    mh.free.remove((free.npages, free.base))
    mh.free.add((free.npages + 1, free.base))
    _corrupted(mh, "free set entry")
    mh.free.remove((free.npages + 1, free.base))
    mh.free.add((free.npages, free.base))
    mh.verify()
    big = mh.alloc(2, LARGE, False)
    del mh.busy_large[big.id]
    _corrupted(mh, "busy_large")
    mh.busy_large[big.id] = big
    mh.verify()


def test_verify_state_disagreeing_with_lists(mh):
    s = mh.alloc(2, LARGE, False)
    mh.alloc(1, LARGE, False)
    s.state = SPAN_FREE                          # claims free, but in no free list
    _corrupted(mh, "missing from the free set")
    s.state = SPAN_IN_USE
    mh.table.mark_dirty(s)
    mh.verify()
