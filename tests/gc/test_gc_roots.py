"""Roots: counted roots, root ranges outside the heap (conservative and precise),
Handles, and how candidate pointers are resolved (findObject): interior pointers keep their
object; pointers into free slots, free spans or outside the heap are ignored.

Also what stops: a collection in one thread parks other threads only at gcalloc safepoints,
and ``Heap.no_gc()`` holds collections off.
"""

from __future__ import annotations

import ctypes
import gc as pygc
import threading
import weakref

import pytest
from heaputil import peek, poke

import gcalloc
from gcalloc.errors import (
    GcallocError,
    HeapClosed,
    HeapCorruption,
    InvalidArgument,
    InvalidSize,
    NotHeapPointer,
)
from gcalloc.gc.roots import Handle, NotARoot
from gcalloc.gc.types import InvalidType, Type

U64 = ctypes.c_uint64


def live(heap: gcalloc.Heap, p: int) -> bool:
    return heap.lookup(p) is not None


class Node(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_uint64)]


class Slot(ctypes.Structure):
    _fields_ = [("scalar", ctypes.c_uint64), ("ptr", ctypes.c_void_p)]


# --- counted roots --------------------------------------------------------------------------

def test_unrooted_objects_are_collected(heap):
    ps = [heap.alloc(64) for _ in range(10)]
    heap.collect()
    assert not any(live(heap, p) for p in ps)
    assert heap.read_memstats().heap_objects == 0


def test_add_root_keeps_object_and_its_referents(heap):
    a, b, c = heap.alloc(64), heap.alloc(64), heap.alloc(64)
    poke(a, b)
    poke(b + 8, c)
    heap.add_root(a)
    heap.collect()
    assert live(heap, a) and live(heap, b) and live(heap, c)
    assert peek(a) == b and peek(b + 8) == c
    heap.remove_root(a)
    heap.collect()
    assert not (live(heap, a) or live(heap, b) or live(heap, c))


def test_roots_are_counted(heap):
    p = heap.alloc(128)
    heap.add_root(p)
    heap.add_root(p + 16)                 # an interior pointer roots the same object
    heap.remove_root(p)
    heap.collect()
    assert live(heap, p)
    heap.remove_root(p + 40)
    heap.collect()
    assert not live(heap, p)


def test_remove_root_of_non_root_raises(heap):
    p = heap.alloc(64)
    heap.add_root(p)
    q = heap.alloc(64)
    with pytest.raises(NotARoot) as info:
        heap.remove_root(q)
    assert isinstance(info.value, GcallocError) and isinstance(info.value, ValueError)
    heap.remove_root(p)
    with pytest.raises(NotARoot):
        heap.remove_root(p)


def test_root_calls_validate_addresses(heap):
    outside = (ctypes.c_uint64 * 2)()
    with pytest.raises(NotHeapPointer):
        heap.add_root(ctypes.addressof(outside))
    with pytest.raises(NotHeapPointer):
        heap.add_root(0)
    with pytest.raises(InvalidArgument):
        heap.add_root("0x1000")
    with pytest.raises(InvalidArgument):
        heap.add_root(True)
    p = heap.alloc(64)
    heap.free(p)
    with pytest.raises(NotHeapPointer):
        heap.add_root(p)
    with pytest.raises(NotHeapPointer):
        heap.remove_root(p)
    assert heap._gc.roots.counted == {}


# --- root ranges ----------------------------------------------------------------------------

def test_conservative_range_keeps_what_it_holds(heap):
    arr = (U64 * 16)()
    ps = [heap.alloc(48) for _ in range(16)]
    for i, p in enumerate(ps):
        arr[i] = p + (i % 6) * 8          # some interior pointers
    token = heap.add_root_range(ctypes.addressof(arr), ctypes.sizeof(arr))
    heap.collect()
    assert all(live(heap, p) for p in ps)
    arr[3] = 0
    heap.collect()
    assert not live(heap, ps[3])
    assert sum(live(heap, p) for p in ps) == 15
    heap.remove_root_range(token)
    heap.collect()
    assert not any(live(heap, p) for p in ps)


def test_conservative_range_ignores_garbage_words(heap):
    keep = heap.alloc(64)
    arr = (U64 * 8)(0, 1, 0xFFFF_FFFF_FFFF_FFFF, 0x7FFF_FFFF_F000, keep,
                    ctypes.addressof(ctypes.c_int(3)), 0x00C0 << 32, 0xDEADBEEF)
    heap.add_root_range(ctypes.addressof(arr), ctypes.sizeof(arr))
    heap.collect()
    assert live(heap, keep)
    assert heap.read_memstats().heap_objects == 1
    heap.verify()


def test_unaligned_conservative_range_is_rounded_inward(heap):
    arr = (U64 * 4)()
    ps = [heap.alloc(32) for _ in range(4)]
    for i, p in enumerate(ps):
        arr[i] = p
    # [addr+1, addr+31): whole words 1 and 2 only.
    heap.add_root_range(ctypes.addressof(arr) + 1, ctypes.sizeof(arr) - 2)
    heap.collect()
    assert [live(heap, p) for p in ps] == [False, True, True, False]


def test_precise_range_reads_only_pointer_words(heap):
    arr = (Slot * 4)()
    via_ptr = [heap.alloc(64) for _ in range(4)]
    via_scalar = [heap.alloc(64) for _ in range(4)]
    for i in range(4):
        arr[i].ptr = via_ptr[i]
        arr[i].scalar = via_scalar[i]
    token = heap.add_root_range(ctypes.addressof(arr), ctypes.sizeof(arr),
                                conservative=False, type=Slot)
    heap.collect()
    assert all(live(heap, p) for p in via_ptr)
    assert not any(live(heap, p) for p in via_scalar)
    heap.remove_root_range(token)
    gtype = Type(16, 0b01)                 # a gcalloc.Type: word 0 is the pointer
    heap.add_root_range(ctypes.addressof(arr), ctypes.sizeof(arr), False, gtype)
    arr[0].scalar = via_ptr[0]
    heap.collect()
    assert [live(heap, p) for p in via_ptr] == [True, False, False, False]


def test_root_range_argument_errors(heap):
    arr = (Slot * 2)()
    addr, size = ctypes.addressof(arr), ctypes.sizeof(arr)
    with pytest.raises(InvalidArgument):
        heap.add_root_range(addr, size, conservative=False)            # no type
    with pytest.raises(InvalidArgument):
        heap.add_root_range(addr, size, conservative=True, type=Slot)  # type not allowed
    with pytest.raises(InvalidSize):
        heap.add_root_range(addr, size - 8, conservative=False, type=Slot)
    with pytest.raises(InvalidSize):
        heap.add_root_range(addr + 4, size, conservative=False, type=Slot)
    with pytest.raises(InvalidSize):
        heap.add_root_range(addr, -8)
    with pytest.raises(InvalidArgument):
        heap.add_root_range(float(addr), size)
    with pytest.raises(InvalidArgument):
        heap.add_root_range(addr, size, conservative=False, type=42)
    assert heap._gc.roots.ranges == {}


class PackedTail(ctypes.Structure):
    """12 bytes with an aligned pointer at 0: in an array, element 1's pointer is at 12."""

    _pack_ = 1
    _fields_ = [("p", ctypes.c_void_p), ("x", ctypes.c_uint32)]


def test_precise_range_of_unaligned_array_is_invalid(heap):
    """As for ``heap.new(PackedTail, 2)``: a precise range holding two PackedTail puts the
    second pointer at an unaligned offset no word scan can see, so it must be refused (a
    range of one element is fine)."""
    arr = (U64 * 3)()
    addr = ctypes.addressof(arr)
    token = heap.add_root_range(addr, 12, conservative=False, type=PackedTail)
    heap.remove_root_range(token)
    with pytest.raises(InvalidType):
        heap.add_root_range(addr, 24, conservative=False, type=PackedTail)
    assert heap._gc.roots.ranges == {}


def test_remove_root_range_twice_or_unknown_raises(heap):
    arr = (U64 * 2)()
    token = heap.add_root_range(ctypes.addressof(arr), ctypes.sizeof(arr))
    other = heap.add_root_range(ctypes.addressof(arr), 8)
    assert token != other
    heap.remove_root_range(token)
    with pytest.raises(NotARoot):
        heap.remove_root_range(token)
    with pytest.raises(NotARoot):
        heap.remove_root_range(12345)
    heap.remove_root_range(other)


def test_empty_root_range_is_allowed(heap):
    """A zero-length range is registered (it roots nothing) and removed like any other."""
    arr = (U64 * 1)()
    p = heap.alloc(24)
    arr[0] = p                                  # outside the zero-length range: no root
    token = heap.add_root_range(ctypes.addressof(arr), 0)
    assert token in heap._gc.roots.ranges
    heap.collect()
    assert heap.lookup(p) is None
    heap.remove_root_range(token)
    assert token not in heap._gc.roots.ranges
    with pytest.raises(NotARoot):
        heap.remove_root_range(token)


# --- Handles --------------------------------------------------------------------------------

def test_new_returns_a_rooted_zeroed_handle(heap):
    h = heap.new(Node)
    assert isinstance(h, Handle)
    assert isinstance(h.view, Node)
    assert ctypes.addressof(h.view) == h.addr == int(h)
    assert (h.view.next, h.view.value) == (None, 0)
    h.view.value = 77
    heap.collect()
    assert live(heap, h.addr)
    assert h.view.value == 77


def test_handle_dies_with_its_python_object(heap):
    h = heap.new(Node)
    addr = h.addr
    del h
    pygc.collect()
    heap.collect()
    assert not live(heap, addr)


def test_release_drops_the_root(heap):
    h = heap.new(Node)
    assert h.alive
    h.release()
    h.release()                           # idempotent
    assert not h.alive
    with pytest.raises(GcallocError):
        _ = h.view
    heap.collect()
    assert not live(heap, h.addr)
    assert "released" in repr(h)


def test_new_array_handle(heap):
    h = heap.new(Node, n=4)
    assert isinstance(h.view, Node * 4)
    nodes = [heap.new(Node) for _ in range(4)]
    for i, n in enumerate(nodes):
        h.view[i].next = n.addr
        n.view.value = i + 100
    addrs = [n.addr for n in nodes]
    del nodes
    pygc.collect()
    heap.collect()
    assert all(live(heap, a) for a in addrs)
    assert [Node.from_address(a).value for a in addrs] == [100, 101, 102, 103]


def test_handle_of_existing_object(heap):
    p = heap.alloc(100)
    h = heap.handle(p + 50)                # interior: the Handle holds the object's base
    assert h.addr == p
    assert h.view is None
    typed = heap.handle(p, Node)
    assert isinstance(typed.view, Node)
    heap.collect()
    assert live(heap, p)
    del h, typed
    pygc.collect()
    heap.collect()
    assert not live(heap, p)


def test_handle_and_new_errors(heap):
    outside = (U64 * 2)()
    with pytest.raises(NotHeapPointer):
        heap.handle(ctypes.addressof(outside))
    with pytest.raises(InvalidSize):
        heap.new(Node, 0)
    with pytest.raises(InvalidArgument):
        heap.new(Node, True)
    with pytest.raises(InvalidArgument):
        heap.new(Node, 2.0)
    with pytest.raises(InvalidArgument):
        heap.new(int)
    with pytest.raises(InvalidSize):
        heap.new(Node, 1 << 50)
    assert heap._gc.roots.handles_live == 0


def test_thousands_of_handles(heap):
    hs = [heap.new(Node) for _ in range(3000)]  # past the first handle table
    for i, h in enumerate(hs):
        h.view.value = i
    heap.collect()
    assert heap.read_memstats().heap_objects == 3000
    assert all(h.view.value == i for i, h in enumerate(hs))
    del hs[::2]
    pygc.collect()
    heap.collect()
    assert heap.read_memstats().heap_objects == 1500


def test_handles_are_gcalloc_handles_made_only_by_the_heap(heap):
    other = gcalloc.Heap(-1, scavenger=False, debug="")
    try:
        hs = [heap.new(Node), heap.handle(heap.alloc(40)), heap.new(Node, 3), other.new(Node)]
        for h in hs:
            assert type(h) is gcalloc.Handle is Handle
            assert repr(h).startswith("<gcalloc.Handle ")
        assert hs[0]._roots() is heap._gc.roots and hs[3]._roots() is other._gc.roots
        with pytest.raises(TypeError, match="takes no arguments"):
            Handle(heap._gc.roots, hs[0].addr, Node, 1)
        assert heap._gc.roots.handles_live == 3 and other._gc.roots.handles_live == 1
        del hs, h
        assert heap._gc.roots.handles_live == 0 and other._gc.roots.handles_live == 0
    finally:
        other.close()


def test_handle_outlives_its_dropped_heap():
    heap = gcalloc.Heap(-1, scavenger=False, debug="")
    h = heap.new(Node)
    h.view.value = 5
    untyped = heap.handle(heap.alloc(32))
    ref = weakref.ref(heap)
    del heap
    pygc.collect()
    assert ref() is None                  # the Handles do not keep the heap (or its roots)
    for x in (h, untyped):
        with pytest.raises(HeapClosed):
            _ = x.view
        assert x.alive
        x.release()
        assert not x.alive
    del h, untyped                        # a released Handle of a dropped heap: no error


def test_new_takes_its_slot_from_its_own_typed_run(heap):
    first = heap.new(Node)                # checks, then remembers Node's typed run
    heap.alloc(2 * ctypes.sizeof(Node), type=Node)   # the allocator's entry for Node moves on
    hs = [heap.new(Node) for _ in range(1000)]       # past one run: refills through alloc
    addrs = {h.addr for h in hs} | {first.addr}
    assert len(addrs) == 1001
    assert all(heap.lookup(a) == (a, 16) for a in addrs)
    heap.verify()                         # every typed run has its layout's bits
    for h in hs[:10]:
        h.view.value = 9
    del hs[10:]
    pygc.collect()
    heap.collect()
    assert all(live(heap, h.addr) and h.view.value == 9 for h in hs)


def test_new_on_a_thread_without_an_mcache(heap):
    heap.new(Node)                        # the plan is made on this thread
    out: list = []
    t = threading.Thread(target=lambda: out.append(heap.new(Node)))
    t.start()
    t.join()
    (h,) = out
    heap.collect()
    assert live(heap, h.addr) and h.view.value == 0


def test_a_handle_in_a_garbage_cycle_stops_rooting_when_python_collects_it(heap):
    h = heap.new(Node)
    addr = h.addr
    cycle: list = [h]
    cycle.append(cycle)
    was_enabled = pygc.isenabled()
    pygc.disable()        # else collect()'s own allocations may run Python's GC first
    try:
        del h, cycle
        heap.collect()
        assert live(heap, addr)           # the cycle is not collected yet: still a root
    finally:
        if was_enabled:
            pygc.enable()
    pygc.collect()
    heap.collect()
    assert not live(heap, addr)


def test_dead_handles_pins_are_reused_before_the_table_grows(heap):
    roots = heap._gc.roots
    keep = [heap.new(Node) for _ in range(100)]
    size = len(roots._pins)
    for _ in range(5 * size):             # one at a time: each dies at once
        heap.handle(keep[0].addr)
    assert len(roots._pins) == size       # the free list ran dry: dead pins came back
    assert roots.handles_live == 100
    heap.verify()
    live_now = [heap.new(Node) for _ in range(size)]   # more held than the table has
    assert len(roots._pins) == 2 * size and roots.handles_live == 100 + size
    heap.verify()
    del live_now
    heap.collect()
    assert roots.handles_live == 100 and all(live(heap, h.addr) for h in keep)


def test_handles_without_raw_reference_counts(heap, monkeypatch):
    """The sys.getrefcount road, for interpreters that keep counts elsewhere."""
    from gcalloc.gc import roots as roots_mod
    monkeypatch.setattr(roots_mod, "RAW_COUNTS", False)
    roots = heap._gc.roots
    keep = [heap.new(Node) for _ in range(10)]
    drop = [heap.new(Node) for _ in range(10)]
    dropped = [h.addr for h in drop]
    del drop
    for _ in range(3 * len(roots._pins)):
        heap.handle(keep[0].addr)
    assert roots.handles_live == 10
    heap.collect()
    assert all(live(heap, h.addr) for h in keep)
    assert not any(live(heap, a) for a in dropped)
    heap.verify()


def _find_base_agrees_with_lookup(heap: gcalloc.Heap, addrs: list[int]) -> int:
    """handle()'s fast road answers as lookup() does for every address; how many it
    answered itself (-1: it left the address to the slow road)."""
    answered = 0
    for q in addrs:
        got = heap._find_base(q)
        if got < 0:
            continue
        answered += 1
        found = heap.lookup(q)
        assert got == (found[0] if found else 0), hex(q)
    return answered


def test_find_base_agrees_with_lookup_for_every_kind_of_address(heap):
    small = [heap.alloc(48) for _ in range(200)]
    typed = [heap.alloc(16, type=Node) for _ in range(50)]
    tiny = [heap.alloc(8, noscan=True) for _ in range(20)]
    large = [heap.alloc(40_000), heap.alloc(100_000)]
    for p in small[::3]:
        heap.free(p)                      # freed slots, below and past freeindex
    other = threading.Thread(target=lambda: [heap.free(p) for p in small[1::6]])
    other.start()                         # frees from a thread that does not cache the span:
    other.join()                          # pending frees
    heap.free(large[1])                   # a free span
    outside = (U64 * 2)()

    def around(ps: list[int], size: int) -> list[int]:
        return [q for p in ps for q in (p, p + 1, p + size - 1, p + size, p - 8)]

    addrs = (around(small, 48) + around(typed, 16) + around(tiny, 8)
             + around(large, 40_960) + [large[1] + 4096, ctypes.addressof(outside), 0x1000,
                                        small[-1] + 48 * 3])   # the run not handed out yet
    heap.handle(small[2])         # its slow road learns the arena: the fast one answers
    assert _find_base_agrees_with_lookup(heap, addrs) > len(addrs) // 2
    heap.collect()                        # swept spans: freed slots, mark bits as alloc bits
    assert _find_base_agrees_with_lookup(heap, addrs) > len(addrs) // 2
    heap.verify()


def test_root_calls_on_a_closed_heap(heap):
    p = heap.alloc(64)
    h = heap.new(Node)
    heap.close()
    with pytest.raises(HeapClosed):
        heap.add_root(p)
    with pytest.raises(HeapClosed):
        heap.handle(p)
    with pytest.raises(HeapClosed):
        heap.new(Node)
    with pytest.raises(HeapClosed):
        heap.collect()
    arr = (U64 * 1)()
    with pytest.raises(HeapClosed):
        heap.add_root_range(ctypes.addressof(arr), 8)
    h.release()


# --- findObject: interior pointers, free slots, free spans ------------------------------------

def test_object_reachable_only_through_interior_pointers(heap):
    root = heap.new(Node)
    small = heap.alloc(256)
    large = heap.alloc(200_000)
    mid = heap.alloc(64)
    root.view.next = small + 8
    poke(small + 248, large + 150_000)    # deep inside a large object
    poke(large + 199_992, mid + 63)       # last byte of mid
    heap.collect()
    assert live(heap, small) and live(heap, large) and live(heap, mid)
    assert heap.read_memstats().heap_objects == 4


def test_pointer_into_free_slot_is_ignored(heap):
    a, b, c = heap.alloc(64), heap.alloc(64), heap.alloc(64)
    assert heap._alloc.mheap.span_of(a) is heap._alloc.mheap.span_of(b)
    heap.free(b)
    poke(a, b)
    poke(a + 8, b + 16)
    heap.add_root(a)
    arr = (U64 * 1)(b)
    heap.add_root_range(ctypes.addressof(arr), 8)
    heap.collect()
    assert live(heap, a) and not live(heap, b) and not live(heap, c)
    assert heap.read_memstats().heap_objects == 1
    heap.verify()
    q = heap.alloc(64)                    # the slot is still usable
    heap.add_root(q)
    heap.collect()
    assert heap.read_memstats().heap_objects == 2


def test_pointer_into_free_span_is_ignored(heap):
    big = heap.alloc(100_000)
    heap.free(big)
    assert heap._alloc.mheap.span_of(big) is None or heap.lookup(big) is None
    holder = heap.alloc(64)
    poke(holder, big)
    poke(holder + 8, big + 40_000)
    heap.add_root(holder)
    heap.collect()
    assert heap.read_memstats().heap_objects == 1
    heap.verify()


def test_pointers_past_large_object_end_are_ignored(heap):
    big = heap.alloc(40_000)              # 5 pages
    holder = heap.alloc(64)
    poke(holder, big + heap.usable_size(big))   # one past the end
    heap.add_root(holder)
    heap.collect()
    assert not live(heap, big)


def test_pointer_into_unhanded_run_slot_is_ignored(heap):
    """Slots an mcache reserved but never handed out are free: a stale word pointing at
    one must not make it an object."""
    first = heap.alloc(64)
    nxt = first + 64                      # reserved in the run, not handed out yet
    assert heap.lookup(nxt) is None
    holder = heap.alloc(128)
    poke(holder, nxt)
    heap.add_root(holder)
    heap.collect()
    assert heap.read_memstats().heap_objects == 1
    heap.verify()


# --- what stops ---------------------------------------------------------------------------

class _WatchedLock:
    """The collector's lock, reporting when a thread other than its holder asks for it (so a
    test knows that thread is about to wait, without sleeping)."""

    def __init__(self, lock) -> None:
        self._lock = lock
        self.holder: int | None = None
        self.contended = threading.Event()

    def __enter__(self):
        me = threading.get_ident()
        if self.holder not in (None, me):
            self.contended.set()
        self._lock.acquire()
        self.holder = me
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
        if not self._lock._is_owned():
            self.holder = None


def test_no_gc_holds_off_collections_from_other_threads(heap):
    done = threading.Event()
    lock = heap._gc.lock = _WatchedLock(heap._gc.lock)

    def collector():
        heap.collect()
        done.set()

    with heap.no_gc():
        t = threading.Thread(target=collector)
        t.start()
        assert lock.contended.wait(60)     # a hang guard: the collector has come to the lock
        assert not done.is_set()           # ... and no cycle ran: it waits
        assert heap.read_memstats().num_gc == 0
    t.join(60)
    assert done.is_set()
    assert heap.read_memstats().num_gc == 1


def test_collect_inside_no_gc_returns(heap):
    p = heap.alloc(64)
    heap.add_root(p)
    with heap.no_gc():
        heap.collect()                     # must not deadlock on its own thread's block
    assert live(heap, p)
    heap.verify()


def test_no_gc_holds_off_automatic_cycles_in_its_own_thread():
    """``no_gc`` is for code that allocates and links raw objects: inside it, an allocation
    of the same thread must not start a cycle that frees the objects not yet linked."""
    heap = gcalloc.Heap(100, scavenger=False, debug="")
    try:
        root = heap.new(Node)
        with heap.no_gc():
            a = heap.alloc(64)             # not linked yet: only no_gc protects it
            for _ in range(6 * 1024):      # 6 MiB: past the 4 MiB goal
                heap.alloc(1024)
            assert heap.read_memstats().num_gc == 0
            root.view.next = a
        heap.collect()
        assert live(heap, a)
        heap.verify()
    finally:
        heap.close()


def test_threads_building_lists_while_another_collects():
    """Threads allocate and link with Handles (the safe road); each runs collections now and
    then, and garbage drives automatic ones, so every cycle finds the other threads
    mid-allocation. Every list survives intact."""
    heap = gcalloc.Heap(100, scavenger=False, debug="")
    nthreads, length = 3, 1500
    heads: dict[int, Handle] = {}
    errors: list[BaseException] = []
    started = threading.Barrier(nthreads + 1)

    def build(k: int) -> None:
        try:
            started.wait()
            head = heap.new(Node)
            head.view.value = k << 32
            for i in range(1, length):
                n = heap.new(Node)
                n.view.value = (k << 32) | i
                n.view.next = head.addr   # head's Handle is alive during the write
                heap.alloc(16384)         # garbage: > 4 MiB between forced cycles
                head = n
                if i % 500 == 0:
                    heap.collect()
            heads[k] = head
        except BaseException as exc:      # reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(k,)) for k in range(nthreads)]
    try:
        for t in threads:
            t.start()
        started.wait()
        for t in threads:
            t.join()
        assert errors == []
        heap.collect()
        heap.verify()
        for k, h in heads.items():
            values = []
            p = h.addr
            while p:
                values.append(Node.from_address(p).value)
                p = Node.from_address(p).next or 0
            assert values == [(k << 32) | i for i in range(length - 1, -1, -1)]
        assert heap.read_memstats().heap_objects == nthreads * length
        ms = heap.read_memstats()
        assert ms.num_forced_gc == nthreads * ((length - 1) // 500) + 1
        assert ms.num_gc > ms.num_forced_gc
    finally:
        heads.clear()
        heap.close()


def _in_thread(heap: gcalloc.Heap, first) -> tuple[list[int], threading.Event,
                                                  threading.Event, threading.Thread]:
    """Run first() in a new thread that keeps its mcache (it waits on ``go`` after each step
    until ``stop``); returns (what it returned, go, done, thread)."""
    out: list[int] = []
    go, done, stop = threading.Event(), threading.Event(), []

    def body() -> None:
        step = first
        while step is not None:
            out.append(step())
            done.set()
            go.wait()
            go.clear()
            step = stop.pop() if stop else None

    t = threading.Thread(target=body)
    t.start()
    done.wait()
    done.clear()
    t.stop = stop                         # type: ignore[attr-defined]
    return out, go, done, t


def test_a_threads_last_object_is_held_until_it_allocates_in_that_class_again(heap):
    """Held slots: the object another thread allocated last (not rooted yet: it is between
    its allocation and its Handle, say) survives every cycle until that thread takes a new
    run of the class; then it is garbage like any other."""
    out, go, done, t = _in_thread(heap, lambda: [heap.alloc(64) for _ in range(5)][-1])
    p = out[0]
    for _ in range(3):
        heap.collect()
        assert live(heap, p)
    before = heap.read_memstats().heap_objects
    assert before == 1                    # the four before it died at the first cycle
    t.stop.append(lambda: heap.alloc(64))                  # type: ignore[attr-defined]
    heap.collect()                        # its run is given back: the next one is a new run
    go.set()
    done.wait()
    heap.collect()
    assert not live(heap, p)              # the new object holds the class now
    assert live(heap, out[1])
    go.set()
    t.join()
    heap.collect()
    assert heap.read_memstats().heap_objects == 0   # a thread that exits holds nothing


def test_the_collecting_thread_holds_only_what_started_its_cycle():
    """runtime.GC (collect()) frees the caller's unrooted objects; an automatic cycle keeps
    the object whose allocation started it through the next cycles, as another thread's."""
    heap = gcalloc.Heap(0, scavenger=False, debug="")    # GOGC=0: every refill is due
    try:
        heap.mem_profile_rate = 0
        ps = [heap.alloc(64)]
        n0 = heap.read_memstats().num_gc
        while heap.read_memstats().num_gc == n0:
            ps.append(heap.alloc(64))
        starter = ps[-1]                  # its allocation ran the cycle
        assert heap._alloc.in_flight == [starter]
        other = threading.Thread(target=heap.collect)   # the next cycle, from elsewhere
        other.start()
        other.join()
        assert live(heap, starter)
        assert sum(live(heap, p) for p in ps) == 1
        heap.collect()                    # forced: the caller holds nothing
        assert not live(heap, starter)
        assert heap._alloc.in_flight == []
    finally:
        heap.close()


def test_an_emptied_counted_root_goes_at_the_next_cycle(heap):
    p = heap.alloc(64)
    heap.add_root(p)
    heap.remove_root(p)
    assert heap._gc.roots.count(p) == 0
    heap.add_root(p)                  # the emptied entry is taken again: counted once
    heap.remove_root(p)
    with pytest.raises(NotARoot):
        heap.remove_root(p)
    heap.collect()
    assert heap._gc.roots.counted == {}
    assert not live(heap, p)


def test_an_emptied_counted_root_goes_with_its_object_at_free(heap):
    """A counted-root key is taken without a look-up (it names an allocated object), so an
    explicit free must take the emptied key with it: a freed address is then refused."""
    p = heap.alloc(64)
    heap.add_root(p)
    heap.remove_root(p)
    heap.free(p)
    assert p not in heap._gc.roots.counted
    with pytest.raises(NotHeapPointer):
        heap.add_root(p)
    with pytest.raises(NotHeapPointer):
        heap.remove_root(p)


def test_threads_counting_roots_while_another_collects():
    """add_root/remove_root take no lock (an append or pop inside a safepoint region):
    threads counting the same objects up and down while cycles run lose no count and no
    counted object."""
    ROUNDS = 3000
    heap = gcalloc.Heap(100, scavenger=False, debug="")
    try:
        objs = [heap.alloc(64) for _ in range(32)]
        for p in objs:
            poke(p, p)                    # a pattern the survivors must keep
            heap.add_root(p)
        errors: list[BaseException] = []
        stop = threading.Event()

        def count(k: int) -> None:
            try:
                for i in range(ROUNDS):
                    p = objs[(i * 7 + k) % len(objs)]
                    heap.add_root(p)
                    if i % 3 != 2:
                        heap.remove_root(p)   # net: one more count every third time
            except BaseException as exc:
                errors.append(exc)

        def collect() -> None:
            for _ in range(40):           # cycles while they count (a bounded number)
                if stop.is_set():
                    return
                heap.collect()

        collector = threading.Thread(target=collect)
        collector.start()
        workers = [threading.Thread(target=count, args=(k,)) for k in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        collector.join()
        assert errors == []
        want = dict.fromkeys(objs, 1)
        for k in range(4):
            for i in range(ROUNDS):
                if i % 3 == 2:
                    want[objs[(i * 7 + k) % len(objs)]] += 1
        assert {p: heap._gc.roots.count(p) for p in objs} == want
        heap.collect()
        assert all(live(heap, p) and peek(p) == p for p in objs)
        heap.verify()
    finally:
        heap.close()


def test_verify_checks_the_root_table(heap):
    handles = [heap.new(ctypes.c_uint64) for _ in range(3)]
    heap.verify()
    roots = heap._gc.roots
    roots._free_slots.append(handles[0]._pin)    # a live Handle's pin on the free list
    try:
        with pytest.raises(HeapCorruption, match="live Handle's pin"):
            heap.verify()
    finally:
        roots._free_slots.pop()
    heap.verify()
    del handles


def test_counted_root_taken_again_without_lookup_still_refused_after_close():
    h = gcalloc.Heap(-1, scavenger=False, debug="")
    p = h.alloc(64)
    h.add_root(p)
    h.add_root(p)                    # already a counted root: counted again
    assert h._gc.roots.count(p) == 2
    h.remove_root(p)
    h.collect()
    assert h.lookup(p) is not None   # one count left keeps it
    h.close()
    with pytest.raises(HeapClosed):
        h.add_root(p)
    with pytest.raises(HeapClosed):
        h.remove_root(p)


class _PrunedAfterTheCheck(dict):
    """A counted-roots dict in which every base looks like a key but has no entry list,
    as when a cycle prunes the key between add_root's check and its region."""

    def __contains__(self, key: object) -> bool:
        return True


def test_add_root_of_a_key_pruned_since_it_was_seen_takes_the_slow_road(heap):
    """add_root(p) skips the look-up when p is a key; if a cycle pruned the key (and freed
    its object) before the region, it must not count p as a root of an object that may be
    gone: the slow road looks p up and raises for a freed object."""
    p = heap.alloc(64)
    heap.collect()                                 # p is garbage: freed
    assert heap.lookup(p) is None
    heap._counted = _PrunedAfterTheCheck()
    with pytest.raises(NotHeapPointer):
        heap.add_root(p)
    assert p not in dict(heap._gc.roots.counted)
