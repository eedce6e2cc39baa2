"""C locals are roots through the packaged header: naive C (tests/capi/capi_naive.c, compiled
with the system compiler, including only <gcalloc.h> from gcalloc.get_include()) keeps heap
pointers only in its locals -- a 200,000-node singly linked list, a bottom-up depth-16 tree
(the left subtree only in a frame while the right one is built), and a list one thread keeps
reversing in pure C while another thread's allocations run collections -- at GOGC=10 and 100,
from one thread and from four Python threads calling C through ctypes at once (ctypes releases
the interpreter lock). ``test_*_without_suspension`` run the same code with the C threads
never stopped: it is corrupted, so each intact count above is one the test could have missed.
Also here: close() while C threads allocate, and the collecting thread's own C frames.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time

import pytest
from cbuild import HERE, build_shared

import gcalloc
from gcalloc.gc import cthreads as ct

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="C thread suspension is Linux-only")

N_LIST = 200_000
N_LIST_4 = 100_000     # per thread, four at once: sized for the suite's time
DEPTH = 16
NODES = (1 << DEPTH) - 1
HANG = 120.0           # hang guard for joins and waits (seconds)
VOIDFN = ctypes.CFUNCTYPE(None)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("capi_roots") / "libcapi_naive.so"
    dll = ctypes.CDLL(str(build_shared([HERE / "capi_naive.c"], out)))
    vp, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    for name, args, res in [("naive_list", [vp, i64, sz], i64),
                            ("naive_tree", [vp, ctypes.c_int, sz], i64),
                            ("naive_reverse", [vp, i64, vp, vp], i64),
                            ("naive_list_then_callback", [vp, i64, VOIDFN], i64),
                            ("alloc_until_closed", [vp, vp], ctypes.c_int)]:
        fn = getattr(dll, name)
        fn.argtypes, fn.restype = args, res
    return dll


@pytest.fixture(params=[10, 100], ids=["gogc10", "gogc100"])
def gheap(request):
    h = gcalloc.Heap(request.param, scavenger=False, debug="")
    try:
        yield h
    finally:
        h.close()


def garbage(heap: gcalloc.Heap) -> int:
    """Bytes dropped with every node: GOGC=100 would not collect while 3 MiB are built."""
    return 0 if heap.gc_percent < 100 else 64


def in_threads(n: int, fn, *args) -> list[int]:
    """fn(*args) from n Python threads at once (each call releases the interpreter lock)."""
    start = threading.Barrier(n, timeout=HANG)
    results: list[int | BaseException] = [0] * n

    def body(i: int) -> None:
        try:
            start.wait()
            results[i] = fn(*args)
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
        assert not t.is_alive(), "a C thread hung"
    for x in results:
        if isinstance(x, BaseException):
            raise x
    return results    # type: ignore[return-value]


def collected(heap: gcalloc.Heap, gc_before: int) -> None:
    assert heap.read_memstats().num_gc > gc_before, "no collection ran: nothing was tested"
    heap.verify()


# --- the naive structures --------------------------------------------------------------

def test_list_one_thread(lib, gheap):
    assert lib.naive_list(gheap.capi, N_LIST, garbage(gheap)) == N_LIST
    collected(gheap, 0)


def test_tree_one_thread(lib, gheap):
    assert lib.naive_tree(gheap.capi, DEPTH, garbage(gheap)) == NODES
    collected(gheap, 0)


def test_list_four_threads(lib, gheap):
    got = in_threads(4, lib.naive_list, gheap.capi, N_LIST_4, garbage(gheap))
    assert got == [N_LIST_4] * 4
    collected(gheap, 0)


def test_tree_four_threads(lib, gheap):
    assert in_threads(4, lib.naive_tree, gheap.capi, DEPTH, garbage(gheap)) == [NODES] * 4
    collected(gheap, 0)


def reverse_while_collecting(lib, heap: gcalloc.Heap, n: int) -> int:
    """One thread builds n nodes in C and reverses them in pure C; this thread allocates
    objects of the nodes' size until three collections ran meanwhile. Returns the nodes
    the C thread found intact."""
    stop, rounds = ctypes.c_int32(0), ctypes.c_int64(0)
    result: list[int | BaseException] = []
    api = heap.capi

    def body() -> None:
        try:
            result.append(lib.naive_reverse(api, n, ctypes.addressof(stop),
                                            ctypes.addressof(rounds)))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=body)
    t.start()
    try:
        guard = time.monotonic() + HANG
        while rounds.value == 0 and t.is_alive():     # built, and reversing
            assert time.monotonic() < guard, "the C thread never started reversing"
            time.sleep(0.001)
        gc0 = heap.read_memstats().num_gc
        while heap.read_memstats().num_gc < gc0 + 3:
            # Nodes' size: a node a cycle freed is soon handed out here again (zeroed).
            for _ in range(4096):
                heap.alloc(16)
        assert rounds.value > 0
    finally:
        stop.value = 1
        t.join(HANG)
    assert not t.is_alive(), "the C thread hung"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def test_reverse_in_pure_c_while_another_thread_collects(lib, gheap):
    assert reverse_while_collecting(lib, gheap, N_LIST) == N_LIST
    collected(gheap, 0)


# --- the same code with the C threads never stopped: corrupted ----------------------------

def _without_suspension(heap: gcalloc.Heap) -> None:
    # Nothing stopped, so no stack is scanned: candidates() reads stopped threads only.
    heap._gc.cthreads.suspend_all = lambda: None   # type: ignore[method-assign]


def test_list_without_suspension_is_corrupted(lib):
    with gcalloc.Heap(10, scavenger=False, debug="") as heap:
        _without_suspension(heap)
        assert lib.naive_list(heap.capi, N_LIST, 0) < N_LIST


def test_tree_without_suspension_is_corrupted(lib):
    with gcalloc.Heap(10, scavenger=False, debug="") as heap:
        _without_suspension(heap)
        assert lib.naive_tree(heap.capi, DEPTH, 0) < NODES


def test_reverse_without_suspension_is_corrupted(lib):
    with gcalloc.Heap(100, scavenger=False, debug="") as heap:
        _without_suspension(heap)
        assert reverse_while_collecting(lib, heap, N_LIST) < N_LIST


# --- the collecting thread's own C frames -----------------------------------------------

def _collect_in_own_callback(lib, heap: gcalloc.Heap, n: int) -> int:
    """C builds n nodes, then calls its own Python callback (not a gcalloc call), which
    collects on the same thread and allocates over whatever the cycle freed."""
    keep: list[int] = []

    def user() -> None:
        for _ in range(2):
            heap.collect()
            keep.extend(heap.alloc(16) for _ in range(n))   # reuse freed nodes (zeroed)

    cb = VOIDFN(user)
    return lib.naive_list_then_callback(heap.capi, n, cb)


def test_the_collecting_threads_own_c_frames_are_roots(lib, heap):
    assert _collect_in_own_callback(lib, heap, 20_000) == 20_000
    heap.verify()


def test_own_c_frames_without_the_stack_address_are_lost(lib, heap, monkeypatch):
    monkeypatch.setattr(ct._libc(), "stack_address", lambda: 0)
    assert _collect_in_own_callback(lib, heap, 20_000) < 20_000


# --- the api and the C thread registry agree ----------------------------------------------

def test_api_carries_the_collectors_suspend_signal(heap):
    api = ctypes.c_int32.from_address(heap.capi + 12)    # gcalloc_api.suspend_signal
    assert api.value == ct.suspend_signal()


def test_a_first_call_during_a_collection_registers_after_it(lib, heap, monkeypatch):
    """new_thread is the one call into Python without GCALLOC_STOP_SPILL_ENTER: add() makes
    the record IN_CALL (counted stopped, no stack known yet), a collection by another thread
    runs meanwhile, and gcalloc_stop_register waits for it before the thread runs C again."""
    assert heap.capi
    capi = heap._capi
    new_thread = capi._new_thread
    states: list[int] = []

    def first_call(err: int, errlen: int) -> int:
        addr = new_thread(err, errlen)
        other = threading.Thread(target=heap.collect)
        heap._gc.after_mark.append(lambda marker: states.append(ct._i32(addr)))
        other.start()
        other.join(HANG)
        return addr

    monkeypatch.setattr(capi, "_new_thread", first_call)
    assert lib.naive_list(heap.capi, 1000, 0) == 1000
    assert states == [ct.IN_CALL | ct.REQUESTED]
    assert heap.read_memstats().num_gc == 1
    heap.verify()


def test_close_while_c_threads_allocate(lib):
    """Four C threads allocate in a loop while close() runs: they are stopped while their
    buckets are emptied and the api closed, then every one fails with HeapClosed (none bumps
    into a bucket of the closed heap, none faults)."""
    heap = gcalloc.Heap(100, scavenger=False, debug="")
    api = heap.capi
    counts = [ctypes.c_int64(0) for _ in range(4)]
    results: list[int] = []
    seen: list[list[int]] = []
    capi, close = heap._capi, heap._capi.close

    def recording_close() -> None:    # the threads' states when the buckets are emptied
        seen.append([ct._i32(r) & ct.STATE_MASK for r in heap._gc.cthreads.records()])
        close()

    capi.close = heap._gc.cthreads.on_close = recording_close   # whoever calls it

    def body(i: int) -> None:
        results.append(lib.alloc_until_closed(api, ctypes.addressof(counts[i])))

    threads = [threading.Thread(target=body, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    guard = time.monotonic() + HANG
    while not all(c.value > 10_000 for c in counts):
        assert time.monotonic() < guard and all(t.is_alive() for t in threads)
        time.sleep(0.001)
    heap.close()
    for t in threads:
        t.join(HANG)
    assert not any(t.is_alive() for t in threads)
    assert results == [1] * 4
    assert len(seen) == 1 and len(seen[0]) == 4
    # None RUNNING: stopped in its own code, or in a call, or gone (a call that met the
    # allocator's shut_down failed, and its thread ended, before the C threads were stopped).
    assert all(s in (ct.SUSPENDED, ct.IN_CALL, ct.EXITED) for s in seen[0]), seen
