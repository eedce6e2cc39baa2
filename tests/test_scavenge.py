"""The scavenger: RSS really falls, the idle limit, reuse of released spans, npreleased through
coalescing, and the background thread (Heap(scavenger=True), GCALLOC_DEBUG, stop on close)."""

from __future__ import annotations

import ctypes
import threading
import types

import pytest

import gcalloc
import gcalloc.mheap
import gcalloc.scavenge
from gcalloc.scavenge import Scavenger, scavenge
from gcalloc.sizeclasses import PAGE_SHIFT, make_span_class

MiB = 1 << 20
LARGE = make_span_class(0, True)


def _touched(heap, size: int) -> int:
    p = heap.alloc(size, noscan=True)
    ctypes.memset(p, 0xA5, size)
    return p


HANG = 120.0     # seconds: a hang guard only


@pytest.fixture
def scavenged(monkeypatch):
    """wait(cond): block until cond() holds after some background scavenger pass (each pass
    notifies; no polling, no sleep). False only if HANG seconds pass first."""
    real = gcalloc.scavenge.scavenge
    passed = threading.Condition()

    def scavenge_and_notify(*args, **kwargs):
        released = real(*args, **kwargs)
        with passed:
            passed.notify_all()
        return released

    monkeypatch.setattr(gcalloc.scavenge, "scavenge", scavenge_and_notify)

    def wait(cond) -> bool:
        with passed:
            return passed.wait_for(cond, HANG)
    return wait


@pytest.fixture
def clock(monkeypatch):
    """A fake monotonic clock for mheap's unusedsince stamps: clock[0] is 'now'."""
    now = [1000.0]
    monkeypatch.setattr(gcalloc.mheap, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


# --- RSS -------------------------------------------------------------------------------------

def test_free_os_memory_returns_rss(heap, rss):
    objs = [_touched(heap, 4 * MiB) for _ in range(64)]          # 256 MiB, all resident
    for p in objs[:8]:
        heap.add_root(p)                    # free_os_memory collects first: keep survivors
    for p in objs[8:]:
        heap.free(p)
    freed = 56 * 4 * MiB
    released_before = heap.read_memstats().heap_released
    rss_before = rss()
    got = heap.free_os_memory()
    rss_after = rss()
    m = heap.read_memstats()
    assert rss_before - rss_after >= 0.9 * freed, (rss_before, rss_after)
    assert got >= freed
    assert m.heap_released - released_before == got
    assert m.heap_released <= m.heap_idle
    for p in objs[:8]:                                            # survivors untouched
        assert ctypes.string_at(p, 8) == b"\xa5" * 8
    heap.verify()


# --- the idle limit --------------------------------------------------------------------------

def test_scavenge_respects_limit(heap, clock):
    mh = heap._alloc.mheap
    a = mh.alloc(4, LARGE, False)
    mh.alloc(1, LARGE, False)
    b = mh.alloc(4, LARGE, False)
    mh.alloc(1, LARGE, False)
    clock[0] = 2000.0
    mh.free_span(a)                  # idle since 2000
    clock[0] = 2010.0
    mh.free_span(b)                  # idle since 2010
    assert a.state == b.state and a.npreleased == b.npreleased == 0
    released0 = mh.stats.heap_released
    assert scavenge(mh, limit=30.0, now=2030.0) == 0          # a: 30 s idle, not more
    assert scavenge(mh, limit=30.0, now=2035.0) == 4 << PAGE_SHIFT
    assert a.npreleased == 4 and b.npreleased == 0
    assert scavenge(mh, limit=30.0, now=2035.0) == 0          # nothing new
    assert scavenge(mh, limit=30.0, now=2041.0) == 4 << PAGE_SHIFT
    assert b.npreleased == 4
    assert mh.stats.heap_released - released0 == 8 << PAGE_SHIFT
    mh.verify()


def test_free_os_memory_releases_everything(heap):
    p = _touched(heap, 2 * MiB)
    heap.alloc(8)
    heap.free(p)
    heap.free_os_memory()
    m = heap.read_memstats()
    assert all(s.npreleased == s.npages for s in heap._alloc.mheap.free_spans())
    assert m.heap_released == m.heap_idle
    heap.verify()


# --- reuse of released memory ----------------------------------------------------------------

def test_released_span_reused_is_ready_and_zero(heap):
    p = _touched(heap, 1 * MiB)
    heap.add_root(heap.alloc(100000))      # keeps p's span from merging with the tail
    heap.free(p)
    assert heap.free_os_memory() >= 1 * MiB
    m0 = heap.read_memstats()
    q = heap.alloc(1 * MiB, noscan=True)
    m1 = heap.read_memstats()
    assert q == p
    assert m0.heap_released - m1.heap_released == 1 * MiB
    assert ctypes.string_at(q, 1 * MiB) == bytes(1 * MiB)
    ctypes.memset(q, 0x11, 1 * MiB)
    assert ctypes.string_at(q + MiB - 4, 4) == b"\x11" * 4
    heap.verify()


# --- coalescing keeps npreleased right -------------------------------------------------------

def test_coalescing_released_and_dirty_spans(heap):
    mh = heap._alloc.mheap
    a = mh.alloc(4, LARGE, False)
    b = mh.alloc(6, LARGE, False)
    mh.alloc(1, LARGE, False)
    a_base = a.base
    ctypes.memset(a.base, 1, 10 << PAGE_SHIFT)
    mh.free_span(a)
    assert scavenge(mh, -1) == 4 << PAGE_SHIFT                # a alone: released
    mh.free_span(b)                                           # dirty, merges with a
    merged = mh.span_of(a_base)
    assert merged.npages == 10 and merged.npreleased == 4
    mh.verify()
    r0 = mh.stats.heap_released
    assert scavenge(mh, -1) == 6 << PAGE_SHIFT                # only b's pages are new
    assert merged.npreleased == merged.npages == 10
    assert mh.stats.heap_released - r0 == 6 << PAGE_SHIFT
    mh.verify()


def test_split_of_partly_released_span_makes_it_ready(heap):
    mh = heap._alloc.mheap
    a = mh.alloc(4, LARGE, False)
    b = mh.alloc(6, LARGE, False)
    mh.alloc(1, LARGE, False)
    a_base = a.base
    mh.free_span(a)
    scavenge(mh, -1)                                          # a: 4 pages released
    mh.free_span(b)                                           # merged: 10 pages, 4 released
    assert mh.span_of(a_base).npreleased == 4
    r0 = mh.stats.heap_released
    c = mh.alloc(5, LARGE, False)
    rest = mh.span_of(a_base + (5 << PAGE_SHIFT))
    assert c.base == a_base and c.npreleased == 0
    assert rest.npages == 5 and rest.npreleased == 0          # which pages were is unknown
    assert r0 - mh.stats.heap_released == 4 << PAGE_SHIFT
    mh.verify()


def test_split_of_fully_released_span_keeps_rest_released(heap):
    mh = heap._alloc.mheap
    s = mh.alloc(8, LARGE, False)
    mh.alloc(1, LARGE, False)
    base = s.base
    mh.free_span(s)
    scavenge(mh, -1)
    r0 = mh.stats.heap_released
    t = mh.alloc(3, LARGE, False)
    rest = mh.span_of(base + (3 << PAGE_SHIFT))
    assert t.base == base and t.npreleased == 0
    assert rest.npages == rest.npreleased == 5
    assert r0 - mh.stats.heap_released == 3 << PAGE_SHIFT
    mh.verify()


# --- the background thread -------------------------------------------------------------------

def _scavenger_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "gcalloc-scavenger")


def test_background_scavenger_releases_and_stops(heap, scavenged):
    p = _touched(heap, 2 * MiB)
    heap.alloc(100000)
    heap.free(p)
    r0 = heap.read_memstats().heap_released
    sc = Scavenger(heap._alloc.mheap, period=0.05, limit=0)
    try:
        assert scavenged(lambda: sc.released >= 2 * MiB)
        assert heap.read_memstats().heap_released - r0 >= 2 * MiB
    finally:
        sc.stop()
    assert not sc._thread.is_alive()
    heap.verify()


def test_heap_scavenger_option_runs_and_stops_on_close(scavenged):
    n0 = _scavenger_threads()
    h = gcalloc.Heap(-1, scavenger=True, debug="")
    try:
        assert _scavenger_threads() == n0 + 1
        sc = h._scavenger
        sc.period, sc.limit = 0.02, 0.0        # the defaults (1 s, 5 s) would make this slow
        p = _touched(h, 1 * MiB)
        h.alloc(100000)
        h.free(p)
        assert scavenged(lambda: sc.released >= 1 * MiB)
    finally:
        h.close()
    assert not sc._thread.is_alive()
    assert _scavenger_threads() == n0


def test_scavenger_off_by_default(monkeypatch):
    monkeypatch.delenv("GCALLOC_DEBUG", raising=False)
    n0 = _scavenger_threads()
    with gcalloc.Heap() as h:
        assert h._scavenger is None and _scavenger_threads() == n0


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_debug_flag_starts_scavenger(monkeypatch, how):
    n0 = _scavenger_threads()
    if how == "argument":
        monkeypatch.delenv("GCALLOC_DEBUG", raising=False)
        h = gcalloc.Heap(debug="scavenger=1")
    else:
        monkeypatch.setenv("GCALLOC_DEBUG", "scavenger=1")
        h = gcalloc.Heap()
    with h:
        assert h._scavenger is not None and _scavenger_threads() == n0 + 1
    assert _scavenger_threads() == n0


def test_scavenge_after_close_raises(heap):
    heap.close()
    with pytest.raises(gcalloc.errors.HeapClosed):
        heap.free_os_memory()
    with pytest.raises(gcalloc.errors.HeapClosed):
        heap.scavenge()
