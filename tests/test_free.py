"""Explicit free (gccgo's __go_free through Heap.free), lookup and usable_size.

Every rejected free must raise its own exception class and leave the heap exactly as it was:
the same live objects, the same MemStats, and verify() passing. Accepted frees return a small
object's slot to its span (reused later, the span moving between mcentral sets or back to the
page heap as it empties) or a large object's span to the page heap; a free by one thread into
a span another thread is allocating from is queued and applied when that thread lets go.

Heaps here run with ``gc_percent=-1`` (raw addresses in Python lists are not roots).
"""

from __future__ import annotations

import ctypes
import gc
import threading

import pytest

import gcalloc
from gcalloc.errors import (
    DoubleFree,
    GcallocError,
    HeapClosed,
    InteriorPointer,
    InvalidArgument,
    InvalidPointer,
    InvalidSize,
    NotHeapPointer,
    TinyObjectFree,
)
from gcalloc.mspan import SPAN_FREE, SPAN_IN_USE
from gcalloc.sizeclasses import PAGE_SIZE, class_to_size

ERRORS = (NotHeapPointer, InteriorPointer, DoubleFree, TinyObjectFree, InvalidSize,
          InvalidArgument)


def live_objects(heap) -> list[tuple[int, int]]:
    """(base, size) of every allocated object, found slot by slot."""
    out = []
    with heap._alloc.mheap.lock:
        spans = [s for s in heap._alloc.mheap.live_spans() if s.state == SPAN_IN_USE]
    for s in spans:
        for i in range(s.nelems):
            found = heap._alloc.find_object(s.base + i * s.elemsize)
            if found is not None:
                out.append((s.base + i * s.elemsize, s.elemsize))
    return out


def snapshot(heap) -> tuple:
    ms = heap.read_memstats().as_dict()
    ms.pop("gc_cpu_fraction")
    ms.pop("lookups")          # lookup() counts there; tested on its own below
    return ms, live_objects(heap)


def assert_rejected(heap, exc, fn, *args):
    """fn(*args) raises exactly exc and changes nothing."""
    before = snapshot(heap)
    with pytest.raises(exc) as info:
        fn(*args)
    assert type(info.value) is exc
    assert snapshot(heap) == before
    heap.verify()
    return info.value


def span_class_of(heap, p: int) -> int:
    return heap._alloc.mheap.span_of(p).spanclass


# --- the error classes ------------------------------------------------------------------------

def test_error_classes_are_distinct():
    assert len(set(ERRORS)) == len(ERRORS)
    for exc in ERRORS:
        assert issubclass(exc, GcallocError)
    for exc in (NotHeapPointer, InteriorPointer, DoubleFree, TinyObjectFree):
        assert issubclass(exc, InvalidPointer) and issubclass(exc, ValueError)
        for other in (NotHeapPointer, InteriorPointer, DoubleFree, TinyObjectFree):
            assert exc is other or not issubclass(exc, other)


def test_double_free_small(heap):
    ps = [heap.alloc(64) for _ in range(5)]
    heap.free(ps[2])
    err = assert_rejected(heap, DoubleFree, heap.free, ps[2])
    assert err.addr == ps[2]
    heap.free(ps[3])
    assert_rejected(heap, DoubleFree, heap.free, ps[3])


def test_double_free_in_uncached_span(heap):
    size = 1024                            # 8 objects per one-page span
    ps = [heap.alloc(size) for _ in range(30)]
    old = ps[0]
    s = heap._alloc.mheap.span_of(old)
    assert s.cached_by is None
    heap.free(old)
    assert_rejected(heap, DoubleFree, heap.free, old)


def test_double_free_large(heap):
    p = heap.alloc(100000)
    q = heap.alloc(50000)                     # keeps p's pages from coalescing into q's
    heap.free(p)
    # The span is free now: the address is no longer a heap object at all.
    assert_rejected(heap, NotHeapPointer, heap.free, p)
    assert heap.lookup(q) == (q, 7 * PAGE_SIZE)


def test_interior_pointer_small(heap):
    p = heap.alloc(100)
    for off in (1, 8, 50, 111):
        err = assert_rejected(heap, InteriorPointer, heap.free, p + off)
        assert err.addr == p + off
    heap.free(p)


def test_interior_pointer_large(heap):
    p = heap.alloc(40000)
    for off in (1, 8, PAGE_SIZE, 39999, 40000, 5 * PAGE_SIZE - 1):   # usable: 5 pages
        assert_rejected(heap, InteriorPointer, heap.free, p + off)
    heap.free(p)


def test_interior_pointer_into_freed_small_object(heap):
    p = heap.alloc(64)
    heap.alloc(64)
    heap.free(p)
    with pytest.raises((InteriorPointer, DoubleFree)):
        heap.free(p + 8)
    heap.verify()


def test_tiny_object_free(heap):
    a = heap.alloc(4, noscan=True)
    b = heap.alloc(8, noscan=True)
    for p in (a, b, a + 1):
        assert_rejected(heap, TinyObjectFree, heap.free, p)


def test_not_heap_pointers(heap):
    p = heap.alloc(32)
    buf = ctypes.create_string_buffer(64)
    stack_like = ctypes.addressof(buf)
    for addr in (stack_like, 0x1234, 1 << 46, p - (1 << 30), id(heap)):
        assert_rejected(heap, NotHeapPointer, heap.free, addr)


def test_address_in_a_free_span(heap):
    heap.alloc(32)
    free_span = next(iter(heap._alloc.mheap.free_spans()))
    assert free_span.state == SPAN_FREE
    for addr in (free_span.base, free_span.base + 4096):
        assert_rejected(heap, NotHeapPointer, heap.free, addr)
        assert heap.lookup(addr) is None


def test_address_in_a_span_tail(heap):
    p = heap.alloc(48)                        # 8192 // 48 = 170 objects, 32 bytes of tail
    s = heap._alloc.mheap.span_of(p)
    assert s.limit == s.base + 170 * 48
    assert_rejected(heap, NotHeapPointer, heap.free, s.limit)
    assert heap.lookup(s.limit) is None


@pytest.mark.parametrize("bad", ["0xc000000000", 1.0, None, b"x", True, [1]])
def test_free_non_int_raises_invalid_argument(heap, bad):
    heap.alloc(8)
    assert_rejected(heap, InvalidArgument, heap.free, bad)
    assert_rejected(heap, InvalidArgument, heap.lookup, bad)
    assert_rejected(heap, InvalidArgument, heap.usable_size, bad)


def test_free_of_zero_and_zerobase_are_noops(heap):
    heap.alloc(8)
    before = snapshot(heap)
    heap.free(0)
    heap.free(heap.alloc(0))
    assert snapshot(heap) == before


def test_new_size_errors(heap):
    assert_rejected(heap, InvalidSize, heap.new, ctypes.c_uint64, 0)
    assert_rejected(heap, InvalidSize, heap.new, ctypes.c_uint64, -3)
    assert_rejected(heap, InvalidSize, heap.new, ctypes.c_uint64, 1 << 46)        # 2**49 bytes
    assert_rejected(heap, InvalidSize, heap.new, ctypes.c_uint64 * 1024, 1 << 62)
    assert_rejected(heap, InvalidArgument, heap.new, ctypes.c_uint64, "2")
    assert_rejected(heap, InvalidArgument, heap.new, ctypes.c_uint64, 2.0)
    assert_rejected(heap, InvalidArgument, heap.new, 42)
    assert_rejected(heap, InvalidArgument, heap.new, ctypes.c_uint64(3))


def test_handle_errors(heap):
    p = heap.alloc(64)
    assert_rejected(heap, NotHeapPointer, heap.handle, 0x1234)
    assert_rejected(heap, InvalidArgument, heap.handle, "p")
    heap.free(p)
    assert_rejected(heap, NotHeapPointer, heap.handle, p)


def test_usable_size_errors(heap):
    p = heap.alloc(64)
    assert_rejected(heap, InteriorPointer, heap.usable_size, p + 8)
    assert_rejected(heap, NotHeapPointer, heap.usable_size, 0x1234)
    heap.free(p)
    assert_rejected(heap, NotHeapPointer, heap.usable_size, p)


# --- slot reuse and span movement -------------------------------------------------------------

def test_freed_slot_is_reused(heap):
    ps = [heap.alloc(256) for _ in range(10)]
    heap.free(ps[4])
    assert heap.lookup(ps[4]) is None
    assert heap.alloc(256) == ps[4]
    assert heap.lookup(ps[4]) == (ps[4], 256)
    heap.verify()


def test_freed_slot_in_an_old_span_is_reused_eventually(heap):
    size = 1024                            # 8 per span
    ps = [heap.alloc(size) for _ in range(40)]
    victim = ps[3]
    assert heap._alloc.mheap.span_of(victim).cached_by is None
    heap.free(victim)
    again = [heap.alloc(size) for _ in range(200)]
    assert victim in again
    heap.verify()


def test_free_into_own_cached_span_with_a_reserved_run(heap):
    p0, p1, p2 = (heap.alloc(80) for _ in range(3))
    s = heap._alloc.mheap.span_of(p0)
    c = s.cached_by
    assert c is not None and c.run_left(s) > 0          # a run is reserved after p2
    heap.free(p1)
    assert c.run_left(s) == 0                            # the run went back to the span
    heap.verify()
    assert heap.lookup(p1) is None and heap.lookup(p2) == (p2, 80)
    assert heap.alloc(80) == p1
    assert heap.alloc(80) == p2 + 80                        # p2 stays allocated
    assert s.allocCount - c.run_left(s) == 4             # run slots count as allocated
    assert heap.read_memstats().heap_objects == 4
    heap.verify()


def _full_uncached_span(heap, size: int = 1024):
    """(objects, their span, slots per span): one span's worth of objects and one more, so
    the mcache has moved on and the first span is full and back in its mcentral."""
    nelems = 8192 // size
    ps = [heap.alloc(size) for _ in range(nelems + 1)]
    return ps, heap._alloc.mheap.span_of(ps[0]), nelems


def test_free_into_full_uncached_span_moves_it_to_partial(heap):
    ps, s, nelems = _full_uncached_span(heap)
    central = heap._alloc.central[s.spanclass]
    sg = heap._alloc.mheap.sweepgen
    assert s.cached_by is None and s.allocCount == nelems
    assert s.central_set is central.full_swept(sg)
    heap.free(ps[2])
    assert s.central_set is central.partial_swept(sg)
    assert s.allocCount == nelems - 1
    heap.verify()


def test_free_emptying_an_uncached_span_returns_it_to_the_page_heap(heap):
    size = 1024
    ps, s, nelems = _full_uncached_span(heap, size)
    assert s.cached_by is None
    for p in ps[:nelems - 1]:
        heap.free(p)
    inuse = heap.read_memstats().heap_inuse
    assert heap._alloc.mheap.span_of(ps[0]).state == SPAN_IN_USE
    heap.free(ps[nelems - 1])
    assert heap.read_memstats().heap_inuse == inuse - PAGE_SIZE
    assert heap._alloc.mheap.span_of(ps[0]).state == SPAN_FREE
    assert all(heap.lookup(p) is None for p in ps[:nelems])
    assert heap.lookup(ps[nelems]) == (ps[nelems], size)
    heap.verify()


def test_free_large_returns_pages(heap):
    before = heap.read_memstats().heap_inuse
    p = heap.alloc(300000)
    assert heap.read_memstats().heap_inuse == before + 37 * PAGE_SIZE
    heap.free(p)
    ms = heap.read_memstats()
    assert ms.heap_inuse == before
    assert (ms.by_size[0].mallocs, ms.by_size[0].frees) == (1, 1)
    assert heap.lookup(p) is None
    heap.verify()


def test_free_every_class(heap):
    ps = [heap.alloc(class_to_size[c], noscan=bool(c & 1)) for c in range(2, len(class_to_size))
          for _ in range(3)]
    for p in ps:
        heap.free(p)
    ms = heap.read_memstats()
    assert ms.heap_objects == 0 and ms.heap_alloc == 0
    assert all(heap.lookup(p) is None for p in ps)
    heap.verify()


# --- frees from another thread ----------------------------------------------------------------

def _allocating_thread(heap, size, n, out, ready, done):
    out.extend(heap.alloc(size) for _ in range(n))
    ready.set()
    done.wait()


def test_free_from_another_thread_is_pending_until_uncache(heap):
    size, n = 48, 20
    ps: list[int] = []
    ready, done = threading.Event(), threading.Event()
    t = threading.Thread(target=_allocating_thread, args=(heap, size, n, ps, ready, done))
    t.start()
    try:
        assert ready.wait(120)                 # a hang guard
        s = heap._alloc.mheap.span_of(ps[0])
        owner = s.cached_by
        assert owner is not None and owner in heap._alloc.mcaches
        freed = ps[::2]
        for p in freed:
            heap.free(p)
        assert s.cached_by is owner and sorted(s.pending_frees) == \
            sorted(s.object_index(p) for p in freed)
        assert all(heap.lookup(p) is None for p in freed)
        assert all(heap.lookup(p) == (p, size) for p in ps[1::2])
        heap.verify()
        assert_rejected(heap, DoubleFree, heap.free, freed[0])
        # A slot of the owner's run, reserved but never handed out.
        assert_rejected(heap, DoubleFree, heap.free, ps[-1] + size)
        ms = heap.read_memstats()
        assert (ms.mallocs, ms.frees, ms.heap_objects) == (n, n // 2, n - n // 2)
    finally:
        done.set()
        t.join()
    gc.collect()
    assert owner not in heap._alloc.mcaches
    assert s.cached_by is None and not s.pending_frees
    assert s.allocCount == n - n // 2
    assert all(heap.lookup(p) is None for p in freed)
    ms = heap.read_memstats()
    assert (ms.mallocs, ms.frees, ms.heap_objects) == (n, n // 2, n - n // 2)
    assert ms.heap_alloc == (n - n // 2) * size
    heap.verify()
    # The freed slots are allocatable again.
    again = {heap.alloc(size) for _ in range(n)}
    assert set(freed) <= again
    heap.verify()


def test_free_of_all_objects_from_another_thread_then_owner_exits(heap):
    size, n = 1024, 20                     # spans of 8: the first two are uncached already
    ps: list[int] = []
    ready, done = threading.Event(), threading.Event()
    t = threading.Thread(target=_allocating_thread, args=(heap, size, n, ps, ready, done))
    t.start()
    try:
        assert ready.wait(120)                 # a hang guard
        inuse = heap.read_memstats().heap_inuse
        for p in ps:
            heap.free(p)
        heap.verify()
    finally:
        done.set()
        t.join()
    gc.collect()
    ms = heap.read_memstats()
    assert ms.heap_objects == 0 and ms.frees == n
    assert ms.heap_inuse < inuse           # the emptied uncached spans went back
    heap.verify()


# --- lookup and usable_size -------------------------------------------------------------------

def test_lookup_small_and_interior(heap):
    p = heap.alloc(200)
    assert heap.usable_size(p) == 208
    for off in (0, 1, 100, 199, 207):
        assert heap.lookup(p + off) == (p, 208)


def test_lookup_tiny_blocks(heap):
    a = heap.alloc(3, noscan=True)
    b = heap.alloc(5, noscan=True)
    assert heap.lookup(a) == heap.lookup(b) == heap.lookup(a + 15) == (a, 16)
    with pytest.raises(InteriorPointer):
        heap.usable_size(b)


def test_lookup_large(heap):
    p = heap.alloc(50000)
    assert heap.usable_size(p) == 7 * PAGE_SIZE
    assert heap.lookup(p + 49999) == (p, 7 * PAGE_SIZE)
    assert heap.lookup(p + 50000) == (p, 7 * PAGE_SIZE)      # the whole span is the object's
    assert heap.lookup(p + 7 * PAGE_SIZE - 1) == (p, 7 * PAGE_SIZE)


def test_lookup_reserved_run_slot_is_not_an_object(heap):
    p = heap.alloc(96)
    s = heap._alloc.mheap.span_of(p)
    assert s.cached_by.run_left(s) > 0
    assert heap.lookup(p + 96) is None        # in this thread's run, not handed out yet
    with pytest.raises(NotHeapPointer):
        heap.usable_size(p + 96)
    q = heap.alloc(96)
    assert q == p + 96 and heap.lookup(q) == (q, 96)


def test_lookup_counts_in_memstats(heap):
    p = heap.alloc(8)
    n = heap.read_memstats().lookups
    heap.lookup(p)
    heap.lookup(0x1234)
    assert heap.read_memstats().lookups == n + 2


def test_only_lookup_calls_count_in_memstats(heap):
    """MemStats.lookups counts Heap.lookup calls (docs/mheap.md), not the look-ups of
    handle() and add_root(), on their fast road or their slow one."""
    p = heap.alloc(48)
    n = heap.read_memstats().lookups
    hs = [heap.handle(p), heap.handle(p + 8)]
    heap.add_root(p + 16)
    heap.remove_root(p)
    out: list = []
    t = threading.Thread(target=lambda: out.append(heap.handle(p)))   # no mcache: slow road
    t.start()
    t.join()
    assert heap.read_memstats().lookups == n
    assert heap.lookup(p) == (p, 48) and heap.read_memstats().lookups == n + 1
    out.clear()
    del hs


def test_lookup_outside_the_heap(heap):
    heap.alloc(8)
    buf = ctypes.create_string_buffer(16)
    assert heap.lookup(ctypes.addressof(buf)) is None
    assert heap.lookup(0) is None
    assert heap.lookup(1 << 47) is None


def test_closed_heap_raises_heap_closed():
    h = gcalloc.Heap(gc_percent=-1, debug="")
    p = h.alloc(64)
    h.close()
    for fn, args in ((h.alloc, (8,)), (h.alloc, (3, None, True)), (h.alloc, (100000,)),
                     (h.free, (p,)), (h.lookup, (p,)), (h.usable_size, (p,)),
                     (h.new, (ctypes.c_uint64,)), (h.handle, (p,)), (h.read_memstats, ()),
                     (h.verify, ())):
        with pytest.raises(HeapClosed):
            fn(*args)
    h.free(0)                              # free(NULL) stays a no-op
    h.close()                              # close is idempotent
