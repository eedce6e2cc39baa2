"""Batch allocation (Heap.alloc_many) against what Boehm documents for GC_malloc_many (gc.h,
mallocx.c): n objects of one size in one call, carved from whole blocks, cleared, each an
ordinary collectable object that lives while something points to it. Boehm's caller holds
the list head; here the returned numpy array is the root while it lives."""

from __future__ import annotations

import ctypes
import gc as pygc

import numpy as np
import pytest

import gcalloc
from gcalloc.errors import InvalidArgument, InvalidSize, InvalidType, OutOfMemory


class Node(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_int64)]


def test_objects_are_distinct_zeroed_and_allocated(heap) -> None:
    """GC_malloc_many: n separate objects of the requested size, cleared."""
    # dirty memory first: a batch reuses freed slots' pages only after they were cleared
    junk = heap.alloc_many(64, 5000)
    for p in junk[:2000].tolist():
        ctypes.memset(p, 0xAB, 64)
    del junk
    pygc.collect()
    heap.collect()
    a = heap.alloc_many(64, 10_000)
    assert a.dtype == np.uint64 and a.shape == (10_000,)
    ps = a.tolist()
    assert len(set(ps)) == len(ps)
    assert all(p % 16 == 0 for p in ps)
    assert all(heap.lookup(p) == (p, 64) for p in ps[::97])
    assert all(ctypes.string_at(p, 64) == bytes(64) for p in ps[::13])
    ordered = sorted(ps)
    assert all(b - a_ >= 64 for a_, b in zip(ordered, ordered[1:], strict=False))
    heap.verify()


@pytest.mark.parametrize("size", [1, 8, 15, 16, 24, 100, 1000, 4096, 32768, 40000, 200_000])
def test_sizes(heap, size: int) -> None:
    n = 50 if size > 32768 else 3000
    a = heap.alloc_many(size, n, noscan=size % 2 == 1)
    usable = heap.usable_size(int(a[0]))
    assert usable >= size
    assert all(heap.usable_size(p) == usable for p in a[::7].tolist())
    heap.collect()
    assert all(heap.lookup(p) is not None for p in a.tolist())
    heap.verify()


def test_the_array_is_a_root_and_its_death_frees(heap) -> None:
    """The objects live while the array lives and are collectable once it dies and nothing
    else points to them (Boehm: ordinary collectable objects)."""
    a = heap.alloc_many(48, 2000)
    ps = a.tolist()
    heap.collect()
    assert all(heap.lookup(p) for p in ps)
    del a
    pygc.collect()
    heap.collect()
    assert not any(heap.lookup(p) for p in ps)
    heap.verify()


def test_views_keep_alive_copies_do_not(heap) -> None:
    a = heap.alloc_many(32, 1000)
    ps = a.tolist()
    view = a[100:200]
    copy = a.copy()
    del a
    pygc.collect()
    heap.collect()
    assert all(heap.lookup(p) for p in ps), "a view keeps the whole array a root"
    with pytest.raises(ValueError):
        view.resize(5)          # the root range covers a buffer that must not move
    del view
    pygc.collect()
    heap.collect()
    assert not any(heap.lookup(p) for p in copy.tolist()), "a copy is not a root"


def test_overwritten_element_is_no_longer_rooted(heap) -> None:
    a = heap.alloc_many(64, 100)
    dropped = int(a[7])
    a[7] = 0
    heap.collect()
    assert heap.lookup(dropped) is None
    assert heap.lookup(int(a[8])) is not None


def test_objects_are_scanned(heap) -> None:
    """A batch object (conservative, like GC_malloc_many's) keeps what it points to."""
    a = heap.alloc_many(64, 10)
    target = heap.alloc(128)
    ctypes.c_uint64.from_address(int(a[3]) + 8).value = target
    heap.collect()
    assert heap.lookup(target) is not None
    ctypes.c_uint64.from_address(int(a[3]) + 8).value = 0
    heap.collect()
    assert heap.lookup(target) is None


def test_noscan_objects_are_not_scanned(heap) -> None:
    a = heap.alloc_many(64, 10, noscan=True)
    target = heap.alloc(128)
    ctypes.c_uint64.from_address(int(a[3])).value = target
    heap.collect()
    assert heap.lookup(target) is None


def test_typed_objects_are_precise(heap) -> None:
    """type=Node: only the pointer field is a pointer (the heap bitmap says so), so an
    address in the value field does not keep its target alive, one in next does."""
    a = heap.alloc_many(ctypes.sizeof(Node), 3000, type=Node)
    kept, not_kept = heap.alloc(64), heap.alloc(64)
    nodes = [Node.from_address(p) for p in (int(a[0]), int(a[2999]), int(a[1500]))]
    nodes[0].next = kept
    nodes[1].value = not_kept
    heap.collect()
    assert heap.lookup(kept) is not None
    assert heap.lookup(not_kept) is None
    heap.verify()
    arr = heap.alloc_many(3 * ctypes.sizeof(Node), 100, type=Node)   # arrays of Node
    other = heap.alloc(64)
    Node.from_address(int(arr[50]) + 2 * ctypes.sizeof(Node)).next = other
    heap.collect()
    assert heap.lookup(other) is not None
    del a, arr
    pygc.collect()
    heap.collect()
    heap.verify()      # freed typed slots got their conservative bits back


def test_pacing_charges_and_collects_with_the_batch_rooted() -> None:
    """The batch's bytes count toward the GOGC goal; the cycle it triggers keeps the batch."""
    with gcalloc.Heap(100, debug="") as h:
        before = h.read_memstats().num_gc
        live0 = h._gc.pacer.heap_live
        a = h.alloc_many(1024, 3000)            # 3 MiB
        assert h._gc.pacer.heap_live - live0 >= 3000 * 1024 or h.read_memstats().num_gc > before
        b = h.alloc_many(1024, 6000)            # past the 4 MiB minimum goal
        assert h.read_memstats().num_gc > before
        assert all(h.lookup(p) for p in a.tolist() + b.tolist())
        ms = h.read_memstats()
        assert ms.mallocs - ms.frees >= 9000
        h.verify()


def test_heap_profile_samples_batch_objects() -> None:
    """MemProfileRate=1 samples every allocation: every batch object is a sample."""
    with gcalloc.Heap(-1, debug="") as h:
        h.mem_profile_rate = 1
        a = h.alloc_many(64, 500)
        h.collect()
        recs = h.memprofile()
        assert sum(r.alloc_objects for r in recs if r.alloc_bytes // max(r.alloc_objects, 1)
                   == 64) == 500
        del a


def test_efence_gives_each_object_a_span() -> None:
    with gcalloc.Heap(-1, debug="efence=1") as h:
        a = h.alloc_many(64, 20)
        spans = {h._alloc.mheap.span_of(p).id for p in a.tolist()}
        assert len(spans) == 20
        h.verify()


def test_zero_and_empty(heap) -> None:
    assert heap.alloc_many(64, 0).shape == (0,)
    z = heap.alloc_many(0, 5)
    assert set(z.tolist()) == {heap.alloc(0)}


def test_bad_input_changes_nothing(heap) -> None:
    before = heap.read_memstats()
    for call, exc in [
        (lambda: heap.alloc_many(-1, 5), InvalidSize),
        (lambda: heap.alloc_many(16, -5), InvalidSize),
        (lambda: heap.alloc_many(16, 1.5), InvalidArgument),
        (lambda: heap.alloc_many("16", 5), InvalidArgument),
        (lambda: heap.alloc_many(20, 5, type=Node), InvalidSize),
        (lambda: heap.alloc_many(16, 5, type="Node"), InvalidArgument),
        (lambda: heap.alloc_many(1 << 20, 1 << 20), OutOfMemory),
        (lambda: heap.alloc_many(1 << 40, 1 << 10), InvalidSize),
    ]:
        with pytest.raises(exc):
            call()
    class NoFields(ctypes.Structure):
        pass
    with pytest.raises(InvalidType):
        heap.alloc_many(8, 5, type=NoFields)
    after = heap.read_memstats()
    assert (after.heap_inuse, after.mallocs) == (before.heap_inuse, before.mallocs)
    heap.verify()


def test_array_outliving_its_heap() -> None:
    """close() with a batch array alive; the array dies later: nothing raises, nothing is
    read."""
    h = gcalloc.Heap(-1, debug="")
    a = h.alloc_many(64, 100)
    h.close()
    assert a.shape == (100,)
    del a
    pygc.collect()


def test_threads_batch_while_collecting() -> None:
    """Several threads batch-allocating while automatic cycles run: every batch survives
    every cycle while its array lives."""
    import threading
    with gcalloc.Heap(100, debug="") as h:
        errors: list[BaseException] = []

        def work(seed: int) -> None:
            try:
                for _ in range(30):
                    a = h.alloc_many(64 + 16 * (seed % 4), 2000)
                    for p in a[::250].tolist():
                        ctypes.c_uint64.from_address(p).value = seed
                    h.alloc_many(512, 500)          # garbage: drives the pacer
                    assert all(ctypes.c_uint64.from_address(p).value == seed
                               for p in a[::250].tolist())
                    assert all(h.lookup(p) for p in a[::100].tolist())
            except BaseException as e:      # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert h.read_memstats().num_gc > 0
        h.verify()


def test_an_os_failure_at_any_call_leaves_a_valid_heap() -> None:
    """Every OS call alloc_many makes for a batch that takes two page-heap calls (three full
    64-page spans and a smaller one), failed in turn until the batch needs no more: the call
    raises, the heap verifies and collects, and the pages the batch took before the failure
    are free again."""
    import gcalloc.os as gos

    n = 64 * 128 * 3 + 7
    failed = 0
    for k in range(64):
        h = gcalloc.Heap(-1, scavenger=False, debug="")
        try:
            h.alloc(8)
            h.free_os_memory()      # released pages: each page-heap call maps some back
            in_use = h.read_memstats().heap_inuse
            gos.inject_nth_failure(k)
            try:
                h.alloc_many(64, n)
            except gcalloc.errors.GcallocError:
                failed += 1
            else:
                break               # k is past the batch's last OS call
            finally:
                gos.clear_injected_failures()
            h.verify()
            h.collect()
            assert h.read_memstats().heap_inuse == in_use, k
        finally:
            h.close()
    assert failed >= 2      # both page-heap calls' OS work was failed at least once
