"""Collections that went wrong: a cycle with no heap yet, a cycle that raised, the debug
modes (efence with verify, verify while other threads allocate) and a finalizer raising
SystemExit. Each test pins what the fix promises."""

from __future__ import annotations

import ctypes
import logging
from operator import length_hint

import pytest

import gcalloc


class Node(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_int64)]


def test_collect_before_the_first_allocation_with_a_root_range(heap):
    """The marker used to take [0, 64 MiB) for the heap when it had no arena, and fail with
    a bare IndexError on a small word in a root range."""
    buf = (ctypes.c_uint64 * 4)(0x100000, 8, 0x3FFFFFF, 0)
    heap.add_root_range(ctypes.addressof(buf), ctypes.sizeof(buf))
    heap.collect()
    assert heap._alloc.marking is None
    p = heap.alloc(64)
    heap.collect()
    assert heap.lookup(p) is None
    heap.verify()


def test_a_failed_cycle_leaves_the_collector_consistent(heap):
    keep = heap.new(Node)
    keep.view.value = 9

    def failing(marker):
        raise RuntimeError("hook failed")

    heap._gc.after_mark.append(failing)
    with pytest.raises(RuntimeError, match="hook failed"):
        heap.collect()
    heap._gc.after_mark.remove(failing)
    assert heap._alloc.marking is None and not heap._alloc._world.stopped
    # Not allocating black into a dead marker: runs are whole again (one slot while marking).
    for _ in range(100):
        heap.alloc(32)
    c = heap._alloc._tls.mcache
    assert max(length_hint(r) for r in c.runs) > 1
    heap.collect()
    heap.verify()
    assert keep.view.value == 9


# --- the collector's debug modes ----------------------------------------------------------

def test_efence_and_verify_combine():
    h = gcalloc.Heap(-1, debug="efence=1")
    try:
        keep = h.new(Node)
        p = h.alloc(64)
        h.free(p)
        h.alloc(100)             # unreachable: swept and faulted by the next cycle
        for _ in range(4):
            h.collect()
            h.verify()
        assert keep.alive
    finally:
        h.close()


def test_debug_verify_runs_with_the_world_stopped():
    h = gcalloc.Heap(-1, debug="verify=1")
    try:
        seen = []
        real = h.verify

        def spy():
            seen.append(h._alloc._world.stopped)
            real()

        h.verify = spy
        h.alloc(64)
        h.collect()
        h.collect()
        assert seen == [True, True]
    finally:
        h.close()


# --- finalizers ---------------------------------------------------------------------------

@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_finalizer_raising_system_exit_is_reported_and_the_thread_goes_on(heap, caplog, exc):
    ran = []

    def bad(p):
        raise exc(3)

    heap.set_finalizer(heap.alloc(64), bad)
    with caplog.at_level(logging.ERROR, logger="gcalloc.finalizer"):
        heap.collect()
        assert heap.run_finalizers(timeout=30)
    assert heap._finalizers.queue.failed == 1
    assert any(r.exc_info and r.exc_info[0] is exc for r in caplog.records)
    assert heap._finalizers.queue.thread.is_alive()
    heap.set_finalizer(heap.alloc(64), ran.append)
    heap.collect()
    assert heap.run_finalizers(timeout=30)
    assert len(ran) == 1
    heap.collect()
    heap.verify()
