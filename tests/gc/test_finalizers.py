"""Finalizers: Heap.set_finalizer's contract (Go's SetFinalizer: Go 1.4 malloc.go, gccgo's
malloc.goc), the collector's finalizer pass and the finalizer thread (runfinq).

Objects are kept alive by roots (add_root) or by pointers from rooted objects and made
unreachable by dropping those; ``collect()`` runs a cycle and ``run_finalizers()`` waits for
the thread. Nothing here sleeps: finalizers that must block wait on Events with timeouts.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import pytest

import gcalloc
from gcalloc.errors import GcallocError, InteriorPointer, InvalidArgument, NotHeapPointer
from gcalloc.gc.finalizer import FinalizerAlreadySet, FinalizerNotCallable
from gcalloc.gc.specials import KIND_FINALIZER

WAIT = 120.0  # a hang guard: only reached when something is broken


def poke(addr: int, value: int) -> None:
    ctypes.c_uint64.from_address(addr).value = value


def peek(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def live(heap: gcalloc.Heap, p: int) -> bool:
    return heap.lookup(p) is not None


def cycle(heap: gcalloc.Heap) -> None:
    heap.collect()
    assert heap.run_finalizers(WAIT)


class Recorder:
    """A finalizer that records (address, thread) of every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.threads: set[int] = set()

    def __call__(self, p: int) -> None:
        self.calls.append(p)
        self.threads.add(threading.get_ident())


# --- the basic contract ----------------------------------------------------------------------

def test_finalizer_runs_once_on_the_finalizer_thread_then_object_is_freed(heap):
    rec = Recorder()
    p = heap.alloc(48)
    heap.add_root(p)
    heap.set_finalizer(p, rec)
    cycle(heap)
    assert rec.calls == []                       # reachable: nothing runs
    heap.remove_root(p)
    cycle(heap)
    assert rec.calls == [p]
    assert threading.get_ident() not in rec.threads
    assert live(heap, p)                         # kept for the cycle its finalizer was queued
    cycle(heap)
    assert not live(heap, p)                     # freed in a later cycle
    assert rec.calls == [p]                      # and never finalized again
    heap.verify()


def test_object_and_its_referents_survive_until_the_finalizer_ran(heap):
    a = heap.alloc(32)
    c = heap.alloc(256)
    for i in range(32):
        poke(c + 8 * i, 0xC0DE0000 + i)
    poke(a, c)
    seen = {}

    def fin(p: int) -> None:
        child = peek(p)
        seen["child"] = child
        seen["live"] = live(heap, child)
        seen["contents"] = [peek(child + 8 * i) for i in range(32)]

    heap.set_finalizer(a, fin)
    cycle(heap)
    assert seen == {"child": c, "live": True,
                    "contents": [0xC0DE0000 + i for i in range(32)]}
    cycle(heap)
    assert not live(heap, a) and not live(heap, c)


def test_queued_objects_stay_alive_while_their_finalizer_waits(heap):
    started, release = threading.Event(), threading.Event()
    calls = []

    def blocking(p: int) -> None:
        calls.append(p)
        started.set()
        release.wait(WAIT)

    a, b = heap.alloc(64), heap.alloc(64)
    child = heap.alloc(64)
    poke(b, child)
    heap.set_finalizer(a, blocking)
    heap.set_finalizer(b, calls.append)
    heap.collect()
    assert started.wait(WAIT)
    assert heap.run_finalizers(timeout=0.05) is False    # a's finalizer still running
    for _ in range(2):                                    # a is running, b is queued
        heap.collect()
        assert live(heap, a) and live(heap, b) and live(heap, child)
    release.set()
    assert heap.run_finalizers(WAIT)
    assert calls == [a, b]
    heap.collect()
    assert not any(live(heap, x) for x in (a, b, child))


def test_resurrection_is_for_good(heap):
    holder = heap.alloc(64)
    heap.add_root(holder)
    p = heap.alloc(128)
    poke(p + 8, 0xFEED)
    rec = Recorder()

    def resurrect(q: int) -> None:
        rec(q)
        poke(holder, q)                          # store p somewhere reachable

    heap.set_finalizer(p, resurrect)
    for _ in range(3):
        cycle(heap)
        assert live(heap, p) and peek(p + 8) == 0xFEED
    assert rec.calls == [p]                      # ran once; the object has no finalizer now
    poke(holder, 0)
    cycle(heap)
    assert not live(heap, p) and rec.calls == [p]


@pytest.mark.parametrize("frontier", [0, 10**9, None], ids=["vector", "scalar", "native"])
def test_dependency_order_for_many_pairs_on_both_mark_paths(heap, frontier):
    heap._gc.scalar_frontier = frontier
    heap._gc.native_mark = frontier is None
    order: list[int] = []
    pairs = []
    for _ in range(300):
        a, b = heap.alloc(64), heap.alloc(32)
        poke(a + 8, b)
        heap.set_finalizer(a, order.append)
        heap.set_finalizer(b, order.append)
        pairs.append((a, b))
    cycle(heap)
    assert sorted(order) == sorted(a for a, _ in pairs)
    cycle(heap)
    assert sorted(order[300:]) == sorted(b for _, b in pairs)
    assert not any(live(heap, a) for a, _ in pairs)
    cycle(heap)
    assert heap.read_memstats().heap_objects == 0


def test_dependency_order_a_points_at_b(heap):
    order = []
    a, b = heap.alloc(64), heap.alloc(64)
    poke(a, b)
    heap.set_finalizer(a, order.append)
    heap.set_finalizer(b, order.append)
    cycle(heap)
    assert order == [a]                          # B is reachable from A: only A's runs
    cycle(heap)
    assert order == [a, b]                       # A is gone: now B's
    assert not live(heap, a)
    cycle(heap)
    assert not live(heap, b)


def test_cycle_containing_a_finalizer_is_never_collected(heap):
    rec = Recorder()
    a, b = heap.alloc(64), heap.alloc(64)
    poke(a, b)
    poke(b, a)
    heap.set_finalizer(a, rec)
    for _ in range(3):
        cycle(heap)
    assert rec.calls == [] and live(heap, a) and live(heap, b)
    heap.set_finalizer(a, None)                  # the documented way out
    cycle(heap)
    assert not live(heap, a) and not live(heap, b)


def test_large_and_typed_objects(heap):
    class Node(ctypes.Structure):
        _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_uint64)]

    rec = Recorder()
    big = heap.alloc(100_000)
    h = heap.new(Node)
    poke(big, h.addr)
    heap.set_finalizer(big, rec)
    node = h.addr
    del h
    cycle(heap)
    assert rec.calls == [big] and live(heap, node)   # node marked through big
    cycle(heap)
    assert not live(heap, big) and not live(heap, node)


# --- the finalizer thread ------------------------------------------------------------------

def test_one_thread_runs_the_queue_in_order(heap):
    started, release = threading.Event(), threading.Event()
    order: list[int] = []
    threads: set[int] = set()
    active = [0]

    def fin(p: int) -> None:
        active[0] += 1
        assert active[0] == 1                    # never two at once
        threads.add(threading.get_ident())
        order.append(p)
        if len(order) == 1:
            started.set()
            release.wait(WAIT)
        active[0] -= 1

    first = [heap.alloc(32) for _ in range(3)]
    for p in first:
        heap.set_finalizer(p, fin)
    heap.collect()
    assert started.wait(WAIT)
    second = [heap.alloc(32) for _ in range(3)]  # queued by a later cycle
    for p in second:
        heap.set_finalizer(p, fin)
    heap.collect()
    release.set()
    assert heap.run_finalizers(WAIT)
    assert sorted(order[:3]) == sorted(first) and sorted(order[3:]) == sorted(second)
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_exception_is_logged_and_the_thread_keeps_going(heap, caplog):
    rec = Recorder()

    def bad(p: int) -> None:
        raise RuntimeError("finalizer failed on purpose")

    p, q = heap.alloc(64), heap.alloc(64)       # queued in address order: p, then q
    heap.set_finalizer(p, bad)
    heap.set_finalizer(q, rec)
    with caplog.at_level(logging.ERROR, logger="gcalloc.finalizer"):
        cycle(heap)
    assert rec.calls == [q]
    errors = [r for r in caplog.records if r.name == "gcalloc.finalizer"]
    assert len(errors) == 1 and f"{p:#x}" in errors[0].getMessage()
    assert "finalizer failed on purpose" in caplog.text
    assert heap._finalizers.queue.failed == 1


def test_finalizer_may_use_the_heap(heap):
    made = []

    def fin(p: int) -> None:
        q = heap.alloc(200)
        poke(q, peek(p))
        heap.add_root(q)
        made.append(q)

    p = heap.alloc(64)
    poke(p, 0xABCD)
    heap.set_finalizer(p, fin)
    cycle(heap)
    cycle(heap)
    assert len(made) == 1 and peek(made[0]) == 0xABCD and live(heap, made[0])


def test_run_finalizers_from_a_finalizer_returns_at_once(heap):
    result = []
    p = heap.alloc(16)
    heap.set_finalizer(p, lambda q: result.append(heap.run_finalizers(WAIT)))
    cycle(heap)
    assert result == [False]


def test_run_finalizers_without_any_finalizer(heap):
    assert heap.run_finalizers(0.0) is True


def test_close_stops_the_thread_and_drops_queued_finalizers():
    h = gcalloc.Heap(-1, scavenger=False, debug="")
    started, release = threading.Event(), threading.Event()
    calls = []

    def fin(p: int) -> None:
        calls.append(p)
        started.set()
        release.wait(WAIT)

    ps = [h.alloc(64) for _ in range(3)]
    for p in ps:
        h.set_finalizer(p, fin)
    h.collect()
    assert started.wait(WAIT)
    queue = h._finalizers.queue
    thread = queue.thread
    closer = threading.Thread(target=h.close)
    closer.start()
    with queue._cond:                             # close() has stopped the queue ...
        assert queue._cond.wait_for(lambda: queue._stop, WAIT)
    release.set()                                 # ... and waits for the running one
    closer.join(WAIT)
    assert not closer.is_alive() and not thread.is_alive()
    assert calls == [ps[0]]                       # the queued ones were dropped
    with pytest.raises(gcalloc.errors.HeapClosed):
        h.set_finalizer(ps[0], None)
    with pytest.raises(gcalloc.errors.HeapClosed):
        h.run_finalizers(0)
    h.close()                                     # idempotent


# --- set_finalizer's checks ----------------------------------------------------------------

def _fin_records(heap: gcalloc.Heap) -> int:
    return heap._specials.live(KIND_FINALIZER)


def test_not_a_heap_object(heap):
    outside = ctypes.create_string_buffer(64)
    freed = heap.alloc(64)
    heap.free(freed)
    for p in (ctypes.addressof(outside), freed, 0, 1 << 40):
        with pytest.raises(NotHeapPointer):
            heap.set_finalizer(p, print)
    assert _fin_records(heap) == 0 and heap._finalizers.queue.thread is None


def test_not_the_start_of_the_object(heap):
    p = heap.alloc(64)
    big = heap.alloc(50_000)
    for q in (p + 8, p + 63, big + 8192):
        with pytest.raises(InteriorPointer):
            heap.set_finalizer(q, print)
        with pytest.raises(InteriorPointer):
            heap.set_finalizer(q, None)
    assert _fin_records(heap) == 0


def test_interior_of_a_tiny_block_is_allowed(heap):
    a = heap.alloc(4, noscan=True)
    b = heap.alloc(4, noscan=True)               # same 16-byte block, offset 4
    assert b - a == 4
    rec = Recorder()
    heap.set_finalizer(a, rec)
    heap.set_finalizer(b, rec)
    s = heap._alloc.mheap.span_of(a)
    assert [r.offset for r in heap._specials.records(s)] == [a - s.base, b - s.base]
    heap.alloc(8, noscan=True)                   # fills the block ...
    heap.alloc(1, noscan=True)                   # ... so a new one becomes the thread's
    cycle(heap)
    assert sorted(rec.calls) == [a, b]           # both queued together, inner address kept


def test_finalizer_already_set_keeps_the_first(heap):
    first, second = Recorder(), Recorder()
    p = heap.alloc(64)
    heap.set_finalizer(p, first)
    with pytest.raises(FinalizerAlreadySet) as info:
        heap.set_finalizer(p, second)
    assert isinstance(info.value, ValueError) and isinstance(info.value, GcallocError)
    assert _fin_records(heap) == 1
    cycle(heap)
    assert first.calls == [p] and second.calls == []


def test_fn_not_callable(heap):
    p = heap.alloc(64)
    for bad in (42, "print", object()):
        with pytest.raises(FinalizerNotCallable) as info:
            heap.set_finalizer(p, bad)
        assert isinstance(info.value, TypeError) and isinstance(info.value, InvalidArgument)
    assert _fin_records(heap) == 0


def test_bad_address_type(heap):
    with pytest.raises(InvalidArgument):
        heap.set_finalizer("0x1000", print)


def test_clear_with_none(heap):
    rec = Recorder()
    p = heap.alloc(64)
    heap.set_finalizer(p, None)                  # none set: fine
    heap.set_finalizer(p, rec)
    heap.set_finalizer(p, None)
    heap.set_finalizer(p, None)
    assert _fin_records(heap) == 0
    cycle(heap)
    assert rec.calls == [] and not live(heap, p)


def test_zero_size_objects_are_accepted_and_never_run(heap):
    rec = Recorder()
    z = heap.alloc(0)
    heap.set_finalizer(z, rec)
    heap.set_finalizer(z, rec)                   # not "already set": nothing was set
    heap.set_finalizer(z, None)
    heap.set_finalizer(z, rec)
    cycle(heap)
    cycle(heap)
    assert rec.calls == [] and _fin_records(heap) == 0


def test_explicit_free_drops_the_finalizer(heap):
    rec = Recorder()
    p, big = heap.alloc(64), heap.alloc(70_000)
    heap.set_finalizer(p, rec)
    heap.set_finalizer(big, rec)
    heap.free(p)
    heap.free(big)
    assert _fin_records(heap) == 0
    cycle(heap)
    assert rec.calls == []
    heap.verify()


def test_set_finalizer_after_an_unforced_cycle_sweeps_the_span_first(heap):
    heap._gc.batch_sweep = False   # the span must be left to lazy sweeping
    keep = heap.alloc(64)
    dead = heap.alloc(64)
    heap.add_root(keep)
    old = heap.set_gc_percent(0)
    heap.alloc(40_000)                           # a slow path: an automatic cycle
    heap.set_gc_percent(old)
    s = heap._alloc.mheap.span_of(keep)
    assert s.sweepgen == heap._alloc.mheap.sweepgen - 2    # left unswept
    heap.set_finalizer(keep, print)
    assert s.sweepgen == heap._alloc.mheap.sweepgen        # ensureSwept ran
    with pytest.raises(NotHeapPointer):
        heap.set_finalizer(dead, print)            # dead since that cycle: not an object
