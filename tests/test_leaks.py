"""Leak and health checks.

- Across 1,000 collections of a steady workload (Handles, finalizers, sampled allocations,
  large objects, explicit frees, root ranges, scavenging) the counts of gcalloc's own Python
  objects — spans, Handles, special records, profile buckets, everything defined in a gcalloc
  module — stay bounded: the count after cycle 1000 is at most the count after cycle 100 plus
  a small constant. Counted with objgraph over ``gc.get_objects()`` after ``gc.collect()``.
- A closed Heap leaves none of them behind, and none of its threads.
- ``Heap.verify()`` can be called at any point of a workload, and finds a broken invariant in
  each layer it covers; ``GCALLOC_DEBUG=verify=1`` runs it after every collection.
"""

from __future__ import annotations

import ctypes
import gc
import threading

import objgraph
import pytest

import gcalloc
from gcalloc.errors import HeapCorruption
from gcalloc.mspan import SPAN_IN_USE

SLACK = 8          # objects a type may gain between cycle 100 and cycle 1000
WINDOW = 16        # Handles kept alive at any time by the steady workload


class Pair(ctypes.Structure):
    _fields_ = [("other", ctypes.c_void_p), ("value", ctypes.c_int64)]


def gcalloc_counts() -> dict[str, int]:
    """Live objects of every type defined in a gcalloc module, by qualified type name."""
    gc.collect()
    return objgraph.typestats(shortnames=False, filter=_is_gcalloc_object)


def _is_gcalloc_object(o: object) -> bool:
    module = getattr(type(o), "__module__", None)    # some types have no str __module__
    return isinstance(module, str) and module.startswith("gcalloc")


def gcalloc_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("gcalloc")}


class SteadyWorkload:
    """One step per collection; what it keeps alive does not grow."""

    def __init__(self, heap: gcalloc.Heap) -> None:
        self.heap = heap
        self.handles: list[gcalloc.Handle] = []
        self.finalized = 0
        self.words = (ctypes.c_uint64 * 8)()
        heap.mem_profile_rate = 1                  # every allocation makes a profile special

    def _finalizer(self, addr: int) -> None:
        self.finalized += 1

    def step(self, i: int) -> None:
        heap = self.heap
        h = heap.new(Pair)
        h.view.value = i
        h.view.other = heap.alloc(24)              # kept alive through the Pair
        self.handles.append(h)
        del self.handles[:-WINDOW]
        for j in range(12):
            p = heap.alloc(16 + 16 * (j % 6))
            if j % 4 == 0:
                heap.set_finalizer(p, self._finalizer)
        heap.free(heap.alloc(256, noscan=True))
        token = heap.add_root_range(ctypes.addressof(self.words), ctypes.sizeof(self.words))
        self.words[0] = heap.alloc(48 * 1024, noscan=True)    # a large object, rooted
        heap.collect()
        heap.remove_root_range(token)
        assert heap.run_finalizers(timeout=120)     # a hang guard
        if i % 50 == 0:
            heap.scavenge(-1.0)


def test_counts_stay_bounded_over_1000_cycles():
    with gcalloc.Heap(-1, scavenger=False, debug="") as heap:
        work = SteadyWorkload(heap)
        snapshots = {}
        for i in range(1, 1001):
            work.step(i)
            if i in (100, 1000):
                snapshots[i] = gcalloc_counts()
        assert heap.read_memstats().num_gc == 1000
        assert work.finalized >= 3 * 999
    early, late = snapshots[100], snapshots[1000]
    grown = {name: (early.get(name, 0), n) for name, n in late.items()
             if n > early.get(name, 0) + SLACK}
    assert not grown, f"gcalloc objects grew from cycle 100 to 1000: {grown}"
    short = {name.rsplit(".", 1)[1]: n for name, n in late.items()}
    # the workload exercises what the check is about
    assert short["MSpan"] > 0 and short["Bucket"] > 0 and short["SpecialProfile"] > 0
    assert short["SpecialFinalizer"] > 0
    assert short["Handle"] == WINDOW


def test_closed_heap_leaves_nothing_behind():
    with gcalloc.Heap(-1, scavenger=False, debug="") as warm:   # module-level caches fill
        SteadyWorkload(warm).step(1)
    del warm
    threads_before = gcalloc_threads()
    before = gcalloc_counts()
    heap = gcalloc.Heap(-1, scavenger=True, debug="")
    work = SteadyWorkload(heap)
    for i in range(1, 21):
        work.step(i)
    assert gcalloc_threads() - threads_before               # it did start threads
    heap.close()
    del heap, work
    after = gcalloc_counts()
    left = {name: n - before.get(name, 0) for name, n in after.items()
            if n > before.get(name, 0)}
    if left:
        leaked = objgraph.by_type(next(iter(left)))[-1]
        chain = objgraph.find_backref_chain(leaked, objgraph.is_proper_module)
        pytest.fail(f"a closed heap left {left}; held by "
                    f"{[type(o).__name__ for o in chain]}")
    assert not {t for t in gcalloc_threads() - threads_before if t.is_alive()}


# --- verify ----------------------------------------------------------------------------------

def test_verify_is_callable_at_any_point():
    with gcalloc.Heap(100, debug="") as heap:
        heap.verify()                                    # empty heap
        keep = [heap.new(Pair) for _ in range(50)]
        heap.verify()                                    # spans cached by this thread
        for i in range(40_000):                          # enough for automatic cycles
            p = heap.alloc(8 + (i % 300))
            if i % 7 == 0:
                heap.free(p)
            if i % 5000 == 0:
                heap.verify()                            # lazy sweep under way
        assert heap.read_memstats().num_gc >= 1
        for h in keep[:10]:
            heap.set_finalizer(h.addr, lambda addr: None)
        heap.verify()                                    # specials present
        del keep
        heap.collect()
        heap.verify()                                    # finalizers queued
        assert heap.run_finalizers(timeout=120)     # a hang guard
        heap.free_os_memory()
        heap.verify()                                    # pages released
        t = threading.Thread(target=lambda: [heap.alloc(64) for _ in range(100)])
        t.start()
        t.join()
        heap.verify()                                    # another thread's cache


def _in_use_span(heap: gcalloc.Heap, small: bool = True):
    with heap._alloc.mheap.lock:
        for s in heap._alloc.mheap.live_spans():
            if s.state == SPAN_IN_USE and (s.sizeclass != 0) == small:
                return s
    raise AssertionError("no span")


def _corrupt_stats(heap):
    heap._alloc.stats.heap_inuse += 8192
    return lambda: setattr(heap._alloc.stats, "heap_inuse", heap._alloc.stats.heap_inuse - 8192)


def _corrupt_span_count(heap):
    s = _in_use_span(heap)
    s.allocCount += 1
    return lambda: setattr(s, "allocCount", s.allocCount - 1)


def _corrupt_sweepgen(heap):
    s = _in_use_span(heap)
    old = s.sweepgen
    s.sweepgen = old + 7
    return lambda: setattr(s, "sweepgen", old)


def _corrupt_large_span(heap):
    s = _in_use_span(heap, small=False)
    del heap._alloc.mheap.busy_large[s.id]
    return lambda: heap._alloc.mheap.busy_large.__setitem__(s.id, s)


def _corrupt_specials(heap):
    heap._specials.finalizers += 1
    return lambda: setattr(heap._specials, "finalizers", heap._specials.finalizers - 1)


@pytest.mark.parametrize("corrupt, layer", [
    (_corrupt_stats, "heap_inuse"),           # page heap: statistics
    (_corrupt_large_span, "busy_large"),      # page heap: span lists
    (_corrupt_span_count, "allocCount"),      # small-object allocator: spans
    (_corrupt_sweepgen, "sweepgen"),          # collector: sweep protocol
    (_corrupt_specials, "finalizer records"),  # specials
])
def test_verify_finds_a_broken_invariant_in_each_layer(corrupt, layer):
    with gcalloc.Heap(-1, debug="") as heap:
        keep = [heap.new(Pair) for _ in range(10)]
        big = heap.handle(heap.alloc(100_000))
        heap.set_finalizer(keep[0].addr, lambda addr: None)
        heap.collect()
        heap.verify()
        restore = corrupt(heap)
        with pytest.raises(HeapCorruption, match=layer):
            heap.verify()
        restore()
        heap.verify()
        del keep, big


def _count_verify_calls(heap: gcalloc.Heap, calls: list[int]) -> None:
    real = heap.verify

    def counting() -> None:
        calls.append(1)
        real()
    heap.verify = counting


@pytest.mark.parametrize("flag, expect_calls", [("verify=1", True), ("", False)])
def test_debug_verify_runs_after_every_collection(flag, expect_calls):
    calls: list[int] = []
    with gcalloc.Heap(100, debug=flag) as heap:
        _count_verify_calls(heap, calls)
        for i in range(60_000):                        # automatic cycles
            heap.alloc(64 + i % 200)
        heap.collect()                                 # and a forced one
        num_gc = heap.read_memstats().num_gc
        assert num_gc >= 2
        assert len(calls) == (num_gc if expect_calls else 0)
        assert heap.read_memstats().debug_gc is expect_calls


def test_debug_verify_stops_the_collection_that_finds_corruption():
    with gcalloc.Heap(-1, debug="verify=1") as heap:
        keep = [heap.new(Pair) for _ in range(10)]
        heap.collect()
        heap._alloc.stats.heap_inuse += 8192
        with pytest.raises(HeapCorruption, match="heap_inuse"):
            heap.collect()
        heap._alloc.stats.heap_inuse -= 8192
        heap.collect()
        del keep
