"""Types and the heap bitmap: ``gcalloc.Type``, types derived from ctypes, the bits
``heapBitsSetType`` writes, and what the collector does with them.

A type's pointer mask decides which words the collector reads: pointer words keep their
targets alive, scalar words, words past the data and noscan objects never do; an object
allocated with ``type=None, noscan=False`` is conservative (every word a possible pointer).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from heaputil import peek, poke

import gcalloc
from gcalloc.errors import GcallocError, HeapCorruption, InvalidArgument, InvalidSize
from gcalloc.gc import bitmap
from gcalloc.gc.types import InvalidType, Pointer, Type, type_of

U64 = ctypes.c_uint64


def bits(heap: gcalloc.Heap, p: int, nwords: int) -> tuple[int, int]:
    """(pointer bits, scan bits) of nwords words at p, bit i for word i."""
    return bitmap.read_bits(heap._alloc.mheap.arenas, p, nwords)


def ones(n: int) -> int:
    return (1 << n) - 1


# --- ctypes types used below ----------------------------------------------------------------

class Scalars(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int32), ("b", ctypes.c_double), ("c", ctypes.c_char * 5),
                ("d", ctypes.c_uint64)]


class Node(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_uint64), ("next", ctypes.c_void_p), ("value", ctypes.c_uint64)]


class Inner(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int64), ("s", ctypes.c_char_p)]


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)


class Mixed(ctypes.Structure):
    _fields_ = [
        ("i", ctypes.c_int64),                  # word 0: scalar
        ("vp", ctypes.c_void_p),                # word 1
        ("cp", ctypes.c_char_p),                # word 2
        ("wp", ctypes.c_wchar_p),               # word 3
        ("tp", ctypes.POINTER(ctypes.c_int)),   # word 4
        ("fn", CALLBACK),                       # word 5
        ("inner", Inner),                       # words 6 (scalar), 7 (pointer)
        ("arr", Inner * 2),                     # words 8, 9 (ptr), 10, 11 (ptr)
        ("f", ctypes.c_double),                 # word 12: scalar
        ("gp", Pointer),                        # word 13
        ("small", ctypes.c_uint8 * 8),          # word 14: scalar
    ]


class Either(ctypes.Union):
    _fields_ = [("p", ctypes.c_void_p), ("x", ctypes.c_double), ("pair", ctypes.c_uint64 * 2)]


class WithUnion(ctypes.Structure):
    _fields_ = [("u", Either), ("q", ctypes.c_void_p)]


class BitFields(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint64, 3), ("b", ctypes.c_uint64, 61), ("p", ctypes.c_void_p)]


class Packed(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("c", ctypes.c_char), ("p", ctypes.c_void_p)]


class PackedTail(ctypes.Structure):
    """Its pointer is aligned, but its size (12) is not a multiple of 8: in an array the
    second element's pointer sits at offset 12."""

    _pack_ = 1
    _fields_ = [("p", ctypes.c_void_p), ("x", ctypes.c_uint32)]


class Empty(ctypes.Structure):
    _fields_ = []


# --- gcalloc.Type ---------------------------------------------------------------------------

def test_type_is_public():
    assert gcalloc.Type is Type


def test_type_from_int_mask():
    t = Type(32, 0b0101, name="pair")
    assert (t.size, t.ptrmask, t.ptrdata, t.nwords) == (32, 0b0101, 24, 4)
    assert not t.noscan
    assert t.pointer_words() == [0, 2]
    assert "pair" in repr(t)


def test_type_from_iterable_mask():
    t = Type(24, [False, True, 0])
    assert t.ptrmask == 0b010 and t.ptrdata == 16
    assert t == Type(24, 0b010)
    assert hash(t) == hash(Type(24, 0b010))
    assert t != Type(32, 0b010)


def test_pointer_free_type_is_noscan():
    assert Type(40).noscan and Type(40).ptrdata == 0
    assert Type(0).noscan


@pytest.mark.parametrize("size, mask", [
    (-8, 0), (True, 0), (8.0, 0), ("8", 0),   # bad sizes
    (16, 0b100),                              # mask longer than the type
    (12, 0b10),                               # pointer word straddles the end
    (16, -1),                                 # negative mask
])
def test_type_rejects_bad_layouts(size, mask):
    with pytest.raises(InvalidType) as info:
        Type(size, mask)
    assert isinstance(info.value, GcallocError)
    assert isinstance(info.value, TypeError)


# --- types from ctypes ----------------------------------------------------------------------

def test_scalar_struct_has_no_pointers():
    t = type_of(Scalars)
    assert t.size == ctypes.sizeof(Scalars)
    assert t.ptrmask == 0 and t.noscan


@pytest.mark.parametrize("ctype", [
    ctypes.c_void_p, ctypes.c_char_p, ctypes.c_wchar_p, ctypes.POINTER(ctypes.c_double),
    ctypes.POINTER(Node), CALLBACK, ctypes.PYFUNCTYPE(None), Pointer,
])
def test_pointer_types_are_one_pointer_word(ctype):
    t = type_of(ctype)
    assert (t.size, t.ptrmask, t.ptrdata) == (8, 1, 8)


@pytest.mark.parametrize("ctype", [
    ctypes.c_int8, ctypes.c_uint16, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint64,
    ctypes.c_float, ctypes.c_double, ctypes.c_char, ctypes.c_bool, ctypes.c_size_t,
])
def test_scalar_types_have_no_pointer_words(ctype):
    assert type_of(ctype).ptrmask == 0


def test_nested_structs_arrays_and_all_pointer_kinds():
    t = type_of(Mixed)
    expected = {1, 2, 3, 4, 5, 7, 9, 11, 13}
    assert t.size == 15 * 8
    assert set(t.pointer_words()) == expected
    assert t.ptrdata == 14 * 8


def test_arrays_repeat_the_element_mask():
    t = type_of(Node * 4)
    assert t.pointer_words() == [1, 4, 7, 10]
    assert type_of(ctypes.c_void_p * 3).ptrmask == 0b111
    assert type_of(ctypes.c_uint64 * 100).ptrmask == 0
    assert type_of((Node * 2) * 2).pointer_words() == [1, 4, 7, 10]


def test_unions_or_their_members():
    t = type_of(WithUnion)
    assert t.size == 24
    assert t.pointer_words() == [0, 2]


def test_bit_fields_are_scalar():
    assert type_of(BitFields).pointer_words() == [1]


def test_unaligned_pointer_field_is_invalid():
    with pytest.raises(InvalidType):
        type_of(Packed)
    with pytest.raises(InvalidType):
        type_of(PackedTail * 2)


def test_type_of_is_cached_and_passes_types_through():
    assert type_of(Node) is type_of(Node)
    t = Type(16, 1)
    assert type_of(t) is t


@pytest.mark.parametrize("bad", [int, "Node", Node(), 8, None])
def test_type_of_rejects_non_types(bad):
    with pytest.raises(InvalidArgument):
        type_of(bad)


# --- heapBitsSetType: the bits a typed allocation writes ----------------------------------------

def test_conservative_object_is_all_pointers(heap):
    p = heap.alloc(48)
    n = heap.usable_size(p) // 8
    assert bits(heap, p, n) == (ones(n), ones(n))


def test_typed_object_bits_match_mask_and_dead_after_last_pointer(heap):
    p = heap.alloc(24, type=Node)
    assert bits(heap, p, 3) == (0b010, 0b011)   # word 2 is past the last pointer: dead
    t = Type(64, 0b00100100)
    q = heap.alloc(64, type=t)
    assert bits(heap, q, 8) == (0b00100100, ones(6))


def test_array_allocation_repeats_mask_and_words_past_data_are_dead(heap):
    p = heap.alloc(72, type=Node)            # 3 Nodes in an 80-byte slot
    assert heap.usable_size(p) == 80
    ptr, scan = bits(heap, p, 10)
    assert ptr == (1 << 1) | (1 << 4) | (1 << 7)
    assert scan == ones(8)                    # words 8 and 9 (tail, slack) dead


def test_large_typed_array_bits(heap):
    count = 3000                               # 72000 bytes: a large object
    p = heap.alloc(24 * count, type=Node)
    ptr, scan = bits(heap, p, 3 * count + 16)
    assert ptr == sum(1 << (3 * i + 1) for i in range(count))
    assert scan == ones(3 * (count - 1) + 2)


def test_large_typed_object_over_reused_pages_has_only_its_bits(heap):
    """A large typed span's bits are written once, by its layout, over the whole span (the
    all-ones fill a new scan span gets is skipped): pages an untyped large object left all
    ones must end with exactly the layout's bits, tail included."""
    count = 3000
    untyped = heap.alloc(24 * count)
    npages = heap._alloc.mheap.span_of(untyped).npages
    nwords = (npages * 8192) >> 3
    assert bits(heap, untyped, nwords) == (ones(nwords), ones(nwords))
    heap.free(untyped)
    p = heap.alloc(24 * count, type=Node)
    assert p == untyped                       # the same pages, best fit
    ptr, scan = bits(heap, p, nwords)
    assert ptr == sum(1 << (3 * i + 1) for i in range(count))
    assert scan == ones(3 * (count - 1) + 2)
    heap.verify()


def test_large_typed_span_skips_the_all_ones_fill(heap, monkeypatch):
    """Only an untyped large span gets the all-ones fill; a typed one is written once."""
    filled = []
    fill = bitmap.fill_span
    monkeypatch.setattr(bitmap, "fill_span", lambda *a: (filled.append(a[1]), fill(*a)))
    p = heap.alloc(24 * 3000, type=Node)
    q = heap.alloc(24 * 3000)
    assert filled == [q] and p not in filled


def test_new_with_count_writes_array_bits(heap):
    h = heap.new(Node, 5)
    assert isinstance(h.view, Node * 5)
    assert bits(heap, h.addr, 15)[0] == sum(1 << (3 * i + 1) for i in range(5))


def test_pointer_free_type_goes_to_a_noscan_span(heap):
    p = heap.alloc(ctypes.sizeof(Scalars), type=Scalars)
    assert heap._alloc.mheap.span_of(p).noscan
    q = heap.alloc(24, type=Node)
    assert not heap._alloc.mheap.span_of(q).noscan
    r = heap.alloc(24, noscan=True, type=None)
    assert heap._alloc.mheap.span_of(r).noscan


def test_freed_typed_slot_gets_conservative_bits_back(heap):
    p = heap.alloc(32, type=Type(32, 0b0010))
    assert bits(heap, p, 4) == (0b0010, 0b0011)
    heap.free(p)
    assert bits(heap, p, 4) == (ones(4), ones(4))


def test_swept_typed_slot_gets_conservative_bits_back(heap):
    keep = heap.new(Node)
    dead = [heap.alloc(24, type=Node) for _ in range(20)]
    span_of = heap._alloc.mheap.span_of
    same_span = [p for p in dead if span_of(p) is span_of(keep.addr)]
    assert same_span
    heap.collect()
    for p in same_span:
        assert heap.lookup(p) is None
        assert bits(heap, p, 3) == (ones(3), ones(3))


def test_typed_runs_refill_on_the_fast_path_with_every_object_written(heap, monkeypatch):
    """A typed fast entry whose run is used up takes the next run itself (no typed slow
    call), and every object of every run gets its precise bits."""
    a = heap._alloc
    slow = []
    other = a._alloc_other
    monkeypatch.setattr(a, "_alloc_other", lambda *args: slow.append(args) or other(*args))
    ps = [heap.alloc(24, type=Node) for _ in range(1500)]   # past four 8 KiB spans of runs
    assert len(slow) == 1                                    # the first call only
    assert len({a.mheap.span_of(p) for p in ps}) >= 4
    assert all(bits(heap, p, 3) == (0b010, 0b011) for p in ps)
    heap.verify()


@pytest.mark.parametrize("nwords", [1, 2, 3, 5, 6])
def test_a_run_writes_what_its_slots_written_one_by_one_would(nwords):
    """A run written as one slice (growing runs: the row cache is extended as they come)
    equals its slots written by phase groups, for every phase a slot can start at: a row as
    long in bytes as a longer run must still hold that run's last slot, and a row longer
    than the run must not write the words past it."""
    lay = bitmap.Layout(0b1 | 1 << (nwords - 1), ones(nwords), nwords, "t")
    for ph in sorted({j * nwords & 3 for j in range(4)}):   # where slots of a span start
        for m in range(1, 140):
            run = np.full(4 + (ph + m * nwords) // 4, 0xA5, np.uint8)
            one_by_one = run.copy()
            bitmap._write_run(run, 1, ph, m, lay)
            starts = ph + np.arange(m, dtype=np.int64) * nwords
            bitmap._write_groups(one_by_one, 1 + (starts >> 2), starts & 3, lay)
            assert run.tolist() == one_by_one.tolist(), (ph, m)


def test_a_typed_run_from_the_high_half_of_a_byte_keeps_its_neighbours_bits():
    """A typed run taken from word 2 of a bitmap byte (slot 1 of 16-byte slots, after a
    collection gave the rest of the first run back): every slot of it, its last included,
    gets the type's bits, and slot 0, which shares the first byte, keeps its own."""

    class Link(ctypes.Structure):       # a fresh type: a fresh Layout and row cache
        _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_uint64)]

    heap = gcalloc.Heap(-1, scavenger=False, debug="")
    try:
        heap.mem_profile_rate = 0        # no sample cuts the runs short
        h0 = heap.handle(heap.alloc(16, type=Link), Link)
        heap.collect()                   # the run's 511 other slots go back: all ones
        assert bits(heap, h0.addr + 16, 2) == (0b11, 0b11)
        run = [heap.alloc(16, type=Link) for _ in range(65)]
        assert run == list(range(h0.addr + 16, h0.addr + 16 * 66, 16))
        assert (run[0] >> 3) & 3 == 2
        assert [bits(heap, p, 2) for p in [h0.addr, *run]] == [(0b01, 0b01)] * 66
        heap.verify()
    finally:
        heap.close()


def test_a_typed_run_given_back_leaves_its_unused_slots_all_ones(heap):
    """A collection gives every typed run back: the slots it did not hand out get all-ones
    bits again (they may take untyped objects), the handed-out ones keep the type's, and
    the span is no longer one layout's."""
    heap.mem_profile_rate = 0
    ps = [heap.alloc(24, type=Node) for _ in range(5)]
    keep = [heap.handle(p) for p in ps]
    s = heap._alloc.mheap.span_of(ps[0])
    assert isinstance(s.typed, bitmap.Layout)       # the run covered the whole fresh span
    heap.collect()
    assert s.typed is True
    assert [bits(heap, p, 3) for p in ps] == [(0b010, 0b011)] * 5
    tail = range(ps[-1] + 24, s.base + s.nelems * 24, 24)
    assert all(bits(heap, p, 3) == (ones(3), ones(3)) for p in tail)
    heap.verify()
    del keep


def test_verify_finds_a_typed_run_without_its_bits(heap):
    """heap.verify checks the slots of each mcache's typed runs not handed out yet: they
    have the run's layout (a slot handed out later must not come with other bits)."""
    heap.mem_profile_rate = 0
    p = heap.alloc(24, type=Node)
    heap.verify()
    arenas = heap._alloc.mheap.arenas
    arena = arenas.arena_of(p)
    byte = arena.bitmap_off + ((p + 24 * 10 - arena.base) >> 5)    # inside the run
    saved = int(arenas.bitmap[byte])
    arenas.bitmap[byte] = saved ^ 0x01
    try:
        with pytest.raises(HeapCorruption, match="typed run without its layout"):
            heap.verify()
    finally:
        arenas.bitmap[byte] = saved
    heap.verify()


def test_typed_entries_have_runs_of_their_own(heap):
    """Typed and untyped objects of one size class come from different spans while both
    are cached: the typed run holds only objects of its layout."""
    heap.mem_profile_rate = 0
    t = heap.alloc(24, type=Node)
    u = heap.alloc(24)
    span_of = heap._alloc.mheap.span_of
    assert span_of(t) is not span_of(u)
    assert span_of(t).spanclass == span_of(u).spanclass
    assert span_of(t).run_index != span_of(u).run_index


def test_layouts_past_the_typed_run_bound_take_the_slow_path_with_their_bits(heap):
    """Once MAX_TYPED_RUNS layouts have alloc indexes of their own, a new layout gets its
    bits written object by object on the slow path: precise bits, no fast entry, and the
    collector keeps exactly what its pointer words reach."""
    from gcalloc.mcache import MAX_TYPED_RUNS
    a = heap._alloc
    made = []
    for k in range(MAX_TYPED_RUNS + 3):
        # distinct layouts: k + 1 scalar words, then one pointer word
        fields = [(f"x{i}", ctypes.c_uint64) for i in range(k % 6 + 1)] + [("p", ctypes.c_void_p)]
        cls = type(f"T{k}", (ctypes.Structure,), {"_fields_": fields})
        made.append(cls)
    for k, cls in enumerate(made):
        heap.alloc(ctypes.sizeof(cls) * (k // 6 + 1), type=cls)
    assert len(a.typed_spc) == MAX_TYPED_RUNS
    late = made[-1]
    n = (len(made) - 1) // 6 + 1
    size = ctypes.sizeof(late) * n
    assert late not in a.typed_fast
    w = ctypes.sizeof(late) >> 3
    want_ptr = sum(1 << (i * w + w - 1) for i in range(n))
    for _ in range(3):
        p = heap.alloc(size, type=late)
        got = bits(heap, p, w * n)
        assert got == (want_ptr, ones(w * n))
        assert late not in a.typed_fast
    h = heap.handle(heap.alloc(size, type=late), late * n)
    child = heap.alloc(64)
    h.view[n - 1].p = child
    heap.collect()
    assert heap.lookup(child) is not None
    heap.verify()


def test_typed_alloc_size_must_be_a_multiple(heap):
    with pytest.raises(InvalidSize):
        heap.alloc(25, type=Node)
    with pytest.raises(InvalidArgument):
        heap.alloc(24, type="Node")
    with pytest.raises(InvalidType):
        heap.alloc(16, type=Packed)


def test_zero_size_types(heap):
    assert heap.alloc(0, type=Node) == heap.alloc(0, type=Empty)


def test_array_of_struct_with_unaligned_tail_is_invalid(heap):
    """PackedTail is 12 bytes: element 1's pointer is at offset 12, which no aligned word
    holds. Like ``type_of(PackedTail * 2)``, allocating two of them must be refused rather
    than leave that pointer invisible to the collector."""
    assert type_of(PackedTail).pointer_words() == [0]
    heap.new(PackedTail, 1)                   # one element: its pointer is aligned
    with pytest.raises(InvalidType):
        heap.new(PackedTail, 2)
    with pytest.raises(InvalidType):
        heap.alloc(24, type=PackedTail)


# --- what the collector does with the bits --------------------------------------------------

@pytest.fixture(params=["vector", "scalar", "native"])
def path(request, heap):
    heap._gc.scalar_frontier = {"vector": 0, "scalar": 10**9, "native": None}[request.param]
    heap._gc.native_mark = request.param == "native"
    return request.param


def test_precise_object_keeps_only_pointer_words(heap, path):
    h = heap.new(Node)
    via_ptr, via_scalar = heap.alloc(64), heap.alloc(64)
    h.view.next = via_ptr
    h.view.tag = via_scalar
    h.view.value = via_scalar
    heap.collect()
    assert heap.lookup(via_ptr) is not None
    assert heap.lookup(via_scalar) is None


def test_words_past_the_data_are_dead(heap, path):
    h = heap.new(Node)
    p = heap.alloc(40, type=Type(40, 0b00101))   # 40 bytes of data in a 48-byte slot
    assert heap.usable_size(p) == 48
    assert bits(heap, p, 6) == (0b000101, 0b000111)
    target_ptr, target_scalar, target_tail = heap.alloc(64), heap.alloc(64), heap.alloc(64)
    poke(p + 16, target_ptr)                 # pointer word 2
    poke(p + 32, target_scalar)              # word 4: data, but scalar
    poke(p + 40, target_tail)                # word 5: slack past the data
    h.view.next = p
    heap.collect()
    assert heap.lookup(target_ptr) is not None
    assert heap.lookup(target_scalar) is None
    assert heap.lookup(target_tail) is None


def test_noscan_objects_are_never_scanned(heap, path):
    holder = heap.alloc(64, noscan=True)
    typed_noscan = heap.alloc(ctypes.sizeof(Scalars), type=Scalars)
    a, b = heap.alloc(64), heap.alloc(64)
    poke(holder, a)
    poke(typed_noscan + 8, b)
    heap.add_root(holder)
    heap.add_root(typed_noscan)
    heap.collect()
    assert heap.lookup(holder) is not None and heap.lookup(typed_noscan) is not None
    assert heap.lookup(a) is None and heap.lookup(b) is None


def test_conservative_object_keeps_every_word(heap, path):
    holder = heap.alloc(64)
    targets = [heap.alloc(32) for _ in range(8)]
    for i, q in enumerate(targets):
        poke(holder + 8 * i, q)
    heap.add_root(holder)
    heap.collect()
    assert all(heap.lookup(q) is not None for q in targets)
    assert [peek(holder + 8 * i) for i in range(8)] == targets


def test_last_element_of_large_typed_array_is_scanned(heap, path):
    count = 20000                              # 480 KB: several 128 KiB oblets
    h = heap.new(Node, count)
    targets = {i: heap.alloc(64) for i in (0, 5461, 5462, count - 1)}
    for i, q in targets.items():
        h.view[i].next = q
        h.view[i].value = heap.alloc(64)       # scalar word: not a root of anything
    scalar_targets = [h.view[i].value for i in targets]
    heap.collect()
    assert all(heap.lookup(q) is not None for q in targets.values())
    assert all(heap.lookup(q) is None for q in scalar_targets)


def test_typed_slot_reused_conservatively_is_scanned_in_full(heap, path):
    dead = [heap.alloc(32, type=Type(32, 0b0001)) for _ in range(30)]
    keep = heap.handle(dead.pop())           # keeps the span in use
    span = heap._alloc.mheap.span_of(dead[0])
    assert heap._alloc.mheap.span_of(keep.addr) is span
    heap.collect()
    assert all(heap.lookup(p) is None for p in dead)
    reused = None
    for _ in range(span.nelems):
        p = heap.alloc(32)
        if p in dead:
            reused = p
            break
    assert reused is not None
    target = heap.alloc(64)
    poke(reused + 24, target)                # dead word under the old type
    heap.add_root(reused)
    heap.collect()
    assert heap.lookup(target) is not None


def test_verify_finds_a_broken_heap_bitmap(heap):
    """verify() covers the collector's layer: an untyped scan span must have all-ones bits."""
    p = heap.alloc(64)
    heap.verify()
    arena = heap._alloc.mheap.arenas.arena_of(p)
    byte = arena.bitmap_off + ((p - arena.base) >> 5)
    saved = int(heap._alloc.mheap.arenas.bitmap[byte])
    heap._alloc.mheap.arenas.bitmap[byte] = 0
    try:
        with pytest.raises(HeapCorruption, match="heap bits"):
            heap.verify()
    finally:
        heap._alloc.mheap.arenas.bitmap[byte] = saved
    heap.verify()


def test_a_typed_object_freed_before_it_was_rooted_leaves_its_slot_untyped():
    """A typed object a collection frees before its thread rooted it gives its slot
    all-ones bits back (its run's unused slots got them when the run was given back): an untyped
    object that takes the slot must have word 1 scanned, or what it points at is freed."""
    import gcalloc

    class Pair(ctypes.Structure):     # word 0 a pointer, word 1 an int
        _fields_ = [("next", ctypes.c_void_p), ("v", ctypes.c_int64)]

    h = gcalloc.Heap(-1, scavenger=False, debug="")
    try:
        h.mem_profile_rate = 0
        other = h.handle(h.alloc(16, type=Pair), Pair)   # keeps the typed span in use
        p = h.alloc(16, type=Pair)              # never rooted
        h.collect()                             # runtime.GC holds none of its own: freed
        assert h.lookup(p) is None
        keep = []
        q = None
        for _ in range(10_000):                 # untyped objects until one takes p's slot
            hq = h.handle(h.alloc(16), ctypes.c_uint64 * 2)
            if hq.addr == p:
                q = hq
                break
            keep.append(hq)
        assert q is not None                    # the shape of the race did happen
        child = h.handle(h.alloc(32), ctypes.c_uint64 * 4)
        caddr = child.addr
        q.view[1] = caddr                       # q is untyped: its word 1 is a pointer
        del child
        h.collect()
        assert bitmap.read_bits(h._alloc.mheap.arenas, q.addr, 2) == (3, 3)
        assert h.lookup(caddr) is not None
        h.verify()
        del other
    finally:
        h.close()
