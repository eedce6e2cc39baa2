"""FixAlloc: recycling, the zero/reset and first hooks, and Go's notional-chunk accounting."""

from __future__ import annotations

import pytest

from gcalloc.errors import HeapCorruption, InvalidSize
from gcalloc.fixalloc import FIX_ALLOC_CHUNK, FixAlloc
from gcalloc.os import SysMemStat

SPAN_SIZE = 160  # about a Go 1.16 mspan


class Rec:
    __slots__ = ("sweepgen", "npages")

    def __init__(self) -> None:
        self.sweepgen = 0
        self.npages = 0


def reset_rec(r: Rec) -> None:
    r.sweepgen = 0
    r.npages = 0


def make(size: int = SPAN_SIZE, **kw) -> tuple[FixAlloc[Rec], SysMemStat, SysMemStat]:
    inuse, sys = SysMemStat("mspan_inuse"), SysMemStat("mspan_sys")
    return FixAlloc(Rec, size, inuse, sys, **kw), inuse, sys


def test_free_then_alloc_returns_the_same_object_lifo():
    f, _, _ = make()
    a, b = f.alloc(), f.alloc()
    assert a is not b
    f.free(a)
    f.free(b)
    assert f.free_count == 2
    assert f.alloc() is b  # last freed comes back first
    assert f.alloc() is a
    assert f.alloc() not in (a, b)


@pytest.mark.parametrize("zero, kept", [(False, (6, 3)), (True, (0, 0))])
def test_reuse_keeps_fields_or_resets_them(zero, kept):
    """zero=False hands a freed record back as it was (reset is ignored); zero=True runs
    reset on it first."""
    f, _, _ = make(zero=zero, reset=reset_rec)
    s = f.alloc()
    s.sweepgen, s.npages = 6, 3
    f.free(s)
    again = f.alloc()
    assert again is s
    assert (again.sweepgen, again.npages) == kept


def test_first_hook_runs_once_per_fresh_record_not_on_reuse():
    seen: list[Rec] = []
    f, _, _ = make(first=seen.append)
    a, b = f.alloc(), f.alloc()
    assert seen == [a, b]
    f.free(a)
    assert f.alloc() is a
    assert seen == [a, b]  # recycled: Go calls first only "the first time p is returned"
    c = f.alloc()
    assert seen == [a, b, c]


def test_accounting_crosses_16k_chunk_boundaries():
    f, inuse, sys = make()
    per_chunk = FIX_ALLOC_CHUNK // SPAN_SIZE  # 102: the 64-byte tail of each chunk is wasted
    recs = [f.alloc() for _ in range(per_chunk)]
    assert (f.sys_bytes, sys.value) == (FIX_ALLOC_CHUNK, FIX_ALLOC_CHUNK)
    assert f.inuse_bytes == inuse.value == per_chunk * SPAN_SIZE
    recs.append(f.alloc())  # does not fit the tail: a second chunk
    assert f.sys_bytes == sys.value == 2 * FIX_ALLOC_CHUNK
    assert f.live == per_chunk + 1
    assert f.inuse_bytes == inuse.value == (per_chunk + 1) * SPAN_SIZE

    for r in recs[:10]:
        f.free(r)
    assert f.inuse_bytes == inuse.value == (per_chunk - 9) * SPAN_SIZE
    assert f.live == per_chunk - 9
    for _ in range(10):  # reuse costs no chunk
        f.alloc()
    assert f.sys_bytes == 2 * FIX_ALLOC_CHUNK
    for _ in range(per_chunk - 1):  # the rest of chunk 2
        f.alloc()
    assert f.sys_bytes == 2 * FIX_ALLOC_CHUNK
    f.alloc()
    assert f.sys_bytes == sys.value == 3 * FIX_ALLOC_CHUNK


def test_exact_fit_size_wastes_nothing():
    f, _, sys = make(size=FIX_ALLOC_CHUNK // 2)
    f.alloc()
    f.alloc()
    assert sys.value == FIX_ALLOC_CHUNK
    f.alloc()
    assert sys.value == 2 * FIX_ALLOC_CHUNK


def test_inuse_stat_may_be_none():
    sys = SysMemStat("sys")
    f = FixAlloc(Rec, 64, None, sys)
    f.free(f.alloc())
    assert (f.inuse_bytes, f.live, sys.value) == (0, 0, FIX_ALLOC_CHUNK)


@pytest.mark.parametrize("size", [0, -1, FIX_ALLOC_CHUNK + 1])
def test_bad_record_size_raises(size):
    with pytest.raises(InvalidSize):
        FixAlloc(Rec, size, None, SysMemStat())


def test_free_without_live_records_raises():
    f, inuse, _ = make()
    with pytest.raises(HeapCorruption):
        f.free(Rec())
    assert inuse.value == 0


def test_debug_detects_double_free_and_leaves_state():
    f, inuse, _ = make(debug=True)
    a, _b = f.alloc(), f.alloc()
    f.free(a)
    with pytest.raises(HeapCorruption):
        f.free(a)
    assert (f.live, f.free_count, inuse.value) == (1, 1, SPAN_SIZE)
    assert f.alloc() is a
    f.free(a)  # freeing it again after reuse is legal


def test_raising_factory_changes_nothing():
    inuse, sys = SysMemStat(), SysMemStat()

    def boom() -> Rec:
        raise RuntimeError("factory failed")

    f = FixAlloc(boom, SPAN_SIZE, inuse, sys)
    with pytest.raises(RuntimeError):
        f.alloc()
    assert (f.live, f.inuse_bytes, f.sys_bytes, inuse.value, sys.value) == (0, 0, 0, 0, 0)


def test_clear_returns_the_accounting():
    f, inuse, sys = make()
    inuse.add(1000)  # other allocators share these counters; clear takes back only its own
    sys.add(5000)
    recs = [f.alloc() for _ in range(300)]
    f.free(recs[0])
    f.clear()
    assert (f.live, f.inuse_bytes, f.sys_bytes, f.free_count) == (0, 0, 0, 0)
    assert (inuse.value, sys.value) == (1000, 5000)
    assert f.alloc() is not recs[0]  # the free list was dropped
    assert sys.value == 5000 + FIX_ALLOC_CHUNK
