"""Weak pointers and cleanups against what Go 1.24 documents: the weak package (weak/pointer.go:
Make, Pointer.Value, equality, "weak pointers are cleared before finalizers are queued", a
resurrected object's weak pointer stays nil) and runtime.AddCleanup / Cleanup.Stop
(mcleanup.go: fn(arg) after ptr is unreachable, never given ptr, several per object, arg ==
ptr refused, a cleanup on an object with a finalizer waits until the finalizer ran and the
object is unreachable again)."""

from __future__ import annotations

import ctypes
import logging
import threading

import pytest

import gcalloc
from gcalloc.errors import (
    CleanupArgIsObject,
    CleanupNotCallable,
    HeapClosed,
    InvalidArgument,
    NotHeapPointer,
)
from gcalloc.gc.specials import KIND_CLEANUP, KIND_WEAK


class Node(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_int64)]


def test_value_until_unreachable_and_does_not_keep_alive(heap) -> None:
    """Value returns the pointer while the object is reachable and nil once it is not; the
    weak pointer itself does not keep it reachable (weak.Pointer's doc)."""
    p = heap.alloc(64)
    heap.add_root(p)
    w = heap.make_weak(p)
    heap.collect()
    assert w.value() == p
    heap.remove_root(p)
    heap.collect()
    assert w.value() is None
    assert heap.lookup(p) is None, "the weak pointer kept its object alive"
    heap.verify()
    assert heap._specials.live(KIND_WEAK) == 0


def test_reachable_through_a_rooted_object(heap) -> None:
    head = heap.new(Node)
    q = heap.alloc(ctypes.sizeof(Node), type=Node)
    head.view.next = q
    w = heap.make_weak(q)
    heap.collect()
    assert w.value() == q
    head.view.next = None
    heap.collect()
    assert w.value() is None


def test_equality_and_interior_pointers(heap) -> None:
    """Two Pointers compare equal if the pointers they were made from compare equal; weak
    pointers to different offsets of one object do not (weak.Pointer's doc). Value returns
    the (interior) pointer it was made from."""
    p = heap.alloc(64)
    heap.add_root(p)
    a, b = heap.make_weak(p), heap.make_weak(p)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    inner = heap.make_weak(p + 16)
    assert inner != a and inner.value() == p + 16
    other = heap.alloc(64)
    assert heap.make_weak(other) != a
    heap.remove_root(p)
    heap.collect()
    assert a.value() is None and inner.value() is None
    assert a == b          # still equal after the object is gone


def test_weak_cleared_before_finalizer_and_stays_nil_after_resurrection(heap) -> None:
    """Go clears weak pointers when the finalizer is queued, before it runs; a finalizer that
    resurrects the object does not bring its weak pointers back; a new weak pointer to the
    resurrected object is a new one."""
    p = heap.alloc(64)
    w = heap.make_weak(p)
    seen = []

    def finalizer(addr: int) -> None:
        seen.append(w.value())
        heap.add_root(addr)     # resurrect

    heap.set_finalizer(p, finalizer)
    heap.collect()
    assert w.value() is None
    assert heap.run_finalizers(timeout=10)
    assert seen == [None]
    heap.collect()
    assert heap.lookup(p) is not None, "the resurrected object was freed"
    assert w.value() is None, "a resurrected object's weak pointer came back"
    w2 = heap.make_weak(p)
    assert w2.value() == p and w2 != w


def test_referent_of_finalizer_object_stays_weakly_reachable(heap) -> None:
    """An object only a finalizer object references is kept by it this cycle (markrootSpans
    marks it), so its weak pointer is not cleared (Go's weak and finalizer ordering)."""
    a = heap.alloc(ctypes.sizeof(Node), type=Node)
    b = heap.alloc(64, noscan=True)
    Node.from_address(a).next = b
    wb = heap.make_weak(b)
    heap.set_finalizer(a, lambda addr: None)
    heap.collect()
    assert heap.run_finalizers(timeout=10)
    assert wb.value() == b
    heap.collect()        # a is gone now, and b with it
    assert wb.value() is None and heap.lookup(b) is None


def test_cleanups_run_with_arg_several_per_object(heap) -> None:
    """AddCleanup: fn(arg) runs after ptr becomes unreachable; several cleanups may attach to
    one pointer; the object is freed in the same cycle (nothing resurrects it)."""
    p = heap.alloc(64)
    ran: list[object] = []
    lock = threading.Lock()

    def cleanup(arg: object) -> None:
        with lock:
            ran.append(arg)

    heap.add_cleanup(p, cleanup, "one")
    heap.add_cleanup(p, cleanup, ("two", 2))
    heap.add_cleanup(p + 8, cleanup, None)
    heap.collect()
    assert heap.lookup(p) is None, "a cleanup must not keep its object alive"
    assert heap.run_finalizers(timeout=10)
    assert sorted(map(repr, ran)) == sorted(map(repr, ["one", ("two", 2), None]))
    assert heap._specials.live(KIND_CLEANUP) == 0
    heap.verify()


def test_stop_cancels(heap) -> None:
    """Cleanup.Stop cancels a cleanup not yet queued; after it ran, Stop does nothing."""
    p = heap.alloc(64)
    ran = []
    c1 = heap.add_cleanup(p, ran.append, 1)
    heap.add_cleanup(p, ran.append, 2)
    assert c1.stop() is True
    assert c1.stop() is False
    heap.collect()
    assert heap.run_finalizers(timeout=10)
    assert ran == [2]
    q = heap.alloc(64)
    c3 = heap.add_cleanup(q, ran.append, 3)
    heap.collect()
    assert heap.run_finalizers(timeout=10)
    assert ran == [2, 3] and c3.stop() is False
    lone = heap.alloc(64)
    heap.add_root(lone)
    assert heap.add_cleanup(lone, ran.append, 4).stop() is True
    assert heap._specials.records(heap._alloc.mheap.span_of(lone)) == []
    heap.verify()


def test_cleanup_waits_for_finalizer(heap) -> None:
    """A cleanup on an object with a finalizer runs only once the finalizer ran and the
    object became unreachable again (AddCleanup's doc)."""
    p = heap.alloc(64)
    order = []
    heap.set_finalizer(p, lambda addr: order.append("finalizer"))
    heap.add_cleanup(p, order.append, "cleanup")
    heap.collect()
    assert heap.run_finalizers(timeout=10)
    assert order == ["finalizer"]
    assert heap.lookup(p) is not None
    heap.collect()
    assert heap.run_finalizers(timeout=10)
    assert order == ["finalizer", "cleanup"]
    assert heap.lookup(p) is None


def test_explicit_free_clears_weak_and_runs_cleanups(heap) -> None:
    """Explicit free (gccgo's __go_free) ends the object: its address may be reused at once,
    so its weak pointers read None, and its cleanups run."""
    p = heap.alloc(64)
    w = heap.make_weak(p)
    ran = []
    heap.add_cleanup(p, ran.append, "freed")
    heap.free(p)
    assert w.value() is None
    assert heap.run_finalizers(timeout=10)
    assert ran == ["freed"]
    big = heap.alloc(100_000)
    wb = heap.make_weak(big + 4096)
    heap.free(big)
    assert wb.value() is None
    heap.verify()


def test_close_clears_and_drops(tmp_path) -> None:
    """close(): weak pointers read None; cleanups not yet run are dropped, as finalizers are
    (Go runs neither at exit); Stop on a closed heap does nothing."""
    h = gcalloc.Heap(-1, debug="")
    p = h.alloc(64)
    h.add_root(p)
    w = h.make_weak(p)
    ran = []
    c = h.add_cleanup(p, ran.append, 1)
    h.close()
    assert w.value() is None
    assert c.stop() is False
    assert ran == []
    with pytest.raises(HeapClosed):
        h.make_weak(p)
    with pytest.raises(HeapClosed):
        h.add_cleanup(p, print, None)


def test_raising_cleanup_is_logged(heap, caplog) -> None:
    """A cleanup that raises is logged and the thread goes on with the next one."""
    def boom(arg: object) -> None:
        raise RuntimeError("boom")

    ran = []
    a, b = heap.alloc(64), heap.alloc(64)
    heap.add_cleanup(a, boom, None)
    heap.add_cleanup(b, ran.append, "next")
    with caplog.at_level(logging.ERROR, logger="gcalloc.finalizer"):
        heap.collect()
        assert heap.run_finalizers(timeout=10)
    assert ran == ["next"]
    assert any("cleanup" in r.message for r in caplog.records)


def test_bad_input(heap) -> None:
    """AddCleanup panics when arg == ptr; here an address inside the object, or a Handle
    rooting it, is refused the same way. Nothing changes on a refusal."""
    node = heap.new(Node)
    p = node.addr
    with pytest.raises(CleanupNotCallable):
        heap.add_cleanup(p, 42, None)   # type: ignore[arg-type]
    with pytest.raises(CleanupArgIsObject):
        heap.add_cleanup(p, print, p + 8)
    with pytest.raises(CleanupArgIsObject):
        heap.add_cleanup(p, print, node)
    with pytest.raises(NotHeapPointer):
        heap.make_weak(ctypes.addressof(ctypes.c_int64()))
    with pytest.raises(NotHeapPointer):
        heap.add_cleanup(0x1000, print, None)
    with pytest.raises(InvalidArgument):
        heap.make_weak("p")             # type: ignore[arg-type]
    assert heap._specials.records(heap._alloc.mheap.span_of(p)) == []
    heap.verify()


def test_zero_size_objects(heap) -> None:
    """Zero-size objects share one address that is never freed: a weak pointer to it never
    clears, a cleanup on it never runs (Go documents both as possible)."""
    z = heap.alloc(0)
    w = heap.make_weak(z)
    ran = []
    heap.add_cleanup(z, ran.append, 1)
    heap.collect()
    assert heap.run_finalizers(timeout=10)
    assert w.value() == z and ran == []


def test_zero_size_weak_pointer_is_none_after_close() -> None:
    """The zero-size cell belongs to its heap: once the heap closed its weak pointers read
    None like every other (another heap's zero-size weak pointers are not affected)."""
    a, b = gcalloc.Heap(-1, debug=""), gcalloc.Heap(-1, debug="")
    try:
        wa, wb = a.make_weak(a.alloc(0)), b.make_weak(b.alloc(0))
        a.close()
        assert wa.value() is None
        assert wb.value() == b.alloc(0)
    finally:
        a.close()
        b.close()


def test_many_objects(heap) -> None:
    """A weak pointer per object over many spans: exactly the dropped ones clear."""
    ps = [heap.alloc(48) for _ in range(3000)]
    ws = [heap.make_weak(p) for p in ps]
    for p in ps[::2]:
        heap.add_root(p)
    heap.collect()
    assert [w.value() for w in ws] == [p if i % 2 == 0 else None for i, p in enumerate(ps)]
    heap.verify()
