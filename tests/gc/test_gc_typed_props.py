"""Property tests for typed objects: for random ctypes layouts, the heap bits written (per
typed run, or at once for large objects and layouts past the typed-run bound) equal the
pointer map derived independently from ``_fields_``; a random typed graph keeps exactly the
objects reachable through pointer fields, on both mark paths; span types (one layout per
span) stay true through free and sweep.
"""

from __future__ import annotations

import ctypes
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gcalloc
from gcalloc.errors import InvalidType
from gcalloc.gc import bitmap

SCALARS = [ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64, ctypes.c_double,
           ctypes.c_uint64, ctypes.c_char]
POINTERS = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
            ctypes.CFUNCTYPE(ctypes.c_int)]
SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _field_types(depth: int) -> st.SearchStrategy:
    leaf = st.sampled_from(SCALARS + POINTERS)
    if depth == 0:
        return leaf
    inner = st.lists(_field_types(depth - 1), min_size=1, max_size=4).map(_struct)
    array = st.tuples(st.one_of(leaf, inner), st.integers(1, 3)).map(lambda t: t[0] * t[1])
    return st.one_of(leaf, leaf, inner, array)


_made = [0]


def _struct(ftypes: list, pack: int | None = None, base=ctypes.Structure) -> type:
    _made[0] += 1
    ns: dict = {"_fields_": [(f"f{i}", t) for i, t in enumerate(ftypes)]}
    if pack:
        ns["_pack_"] = pack
    return type(f"S{_made[0]}", (base,), ns)


layouts = st.builds(lambda fs, pack, union: _struct(fs, pack, ctypes.Union if union else
                                                     ctypes.Structure),
                    st.lists(_field_types(2), min_size=1, max_size=6),
                    st.sampled_from([None, None, None, 1, 4]), st.booleans())


def expected_mask(ctype: type, offset: int = 0) -> int | None:
    """Pointer words of ctype at offset, from _fields_ and the field descriptors alone;
    None if a pointer lies off 8-byte alignment (the type must be refused)."""
    if issubclass(ctype, tuple(POINTERS)) or ctype in POINTERS:
        return None if offset % 8 else 1 << (offset // 8)
    if issubclass(ctype, ctypes.Array):
        mask = 0
        for i in range(ctype._length_):
            m = expected_mask(ctype._type_, offset + i * ctypes.sizeof(ctype._type_))
            if m is None:
                return None
            mask |= m
        return mask
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        mask = 0
        for name, ftype in ctype._fields_:
            m = expected_mask(ftype, offset + getattr(ctype, name).offset)
            if m is None:
                return None
            mask |= m
        return mask
    return 0


def _bits(heap: gcalloc.Heap, p: int, nwords: int) -> tuple[int, int]:
    return bitmap.read_bits(heap._alloc.mheap.arenas, p, nwords)


def _ones(n: int) -> int:
    return (1 << n) - 1


@SETTINGS
@given(ctype=layouts, count=st.sampled_from([1, 1, 2, 3, 7]), many=st.integers(1, 80),
       gap=st.sampled_from([0, 3, 11, 17]))
def test_bits_written_equal_the_pointer_map_of_the_fields(heap, ctype, count, many, gap):
    """Runs of consecutive typed slots (written as slices) and stragglers (by phase groups),
    with untyped neighbours every ``gap`` objects sharing their edge bytes."""
    mask = expected_mask(ctype)
    size = ctypes.sizeof(ctype) * count
    if mask is None or (count > 1 and mask and ctypes.sizeof(ctype) % 8):
        with pytest.raises(InvalidType):
            heap.alloc(size, type=ctype)
        heap.verify()
        return
    stride = ctypes.sizeof(ctype) // 8 if mask else 0
    full = 0
    for i in range(count):
        full |= mask << (i * stride)
    objs = []                                  # (address, typed)
    for i in range(many):
        objs.append((heap.alloc(size, type=ctype), True))
        if gap and i % gap == gap - 1:
            objs.append((heap.alloc(size), False))  # an untyped neighbour, maybe sharing bytes
    for p, typed in objs:
        if typed and not full:
            continue                           # noscan (maybe tiny): its bits are never read
        nwords = heap.usable_size(p) >> 3
        ptr, scan = _bits(heap, p, nwords)
        if not typed:
            assert (ptr, scan) == (_ones(nwords), _ones(nwords))
        elif full:
            assert ptr == full & _ones(nwords)
            assert scan == _ones(full.bit_length())
    heap.verify()


@SETTINGS
@given(ctype=layouts, n=st.integers(1400, 3000))
def test_large_typed_arrays_get_the_repeated_map(heap, ctype, n):
    mask = expected_mask(ctype)
    esize = ctypes.sizeof(ctype)
    if mask is None or not mask or esize % 8 or esize * n <= 32768:
        return
    p = heap.alloc(esize * n, type=ctype)
    nwords = esize * n // 8
    ptr, _scan = _bits(heap, p, nwords)
    want = 0
    for i in range(n):
        want |= mask << (i * (esize // 8))
    assert ptr == want
    heap.free(p)
    heap.verify()


class GNode(ctypes.Structure):
    _fields_ = [("a", ctypes.c_void_p), ("n", ctypes.c_int64), ("b", ctypes.c_void_p),
                ("fake", ctypes.c_uint64)]      # fake holds addresses that must not retain


@pytest.mark.parametrize("scalar_frontier", [0, 10 ** 9, None], ids=["vector", "scalar", "native"])
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 1500), seed=st.integers(0, 1 << 30), untyped_every=st.integers(0, 9))
def test_random_typed_graph_keeps_exactly_the_reachable(scalar_frontier, n, seed,
                                                        untyped_every):
    rng = random.Random(seed)
    with gcalloc.Heap(-1, scavenger=False, debug="") as h:
        h._gc.scalar_frontier = scalar_frontier
        h._gc.native_mark = scalar_frontier is None
        untyped = {i for i in range(n) if untyped_every and i % (untyped_every + 3) == 1}
        nodes = [h.alloc(32) if i in untyped else h.alloc(32, type=GNode) for i in range(n)]
        edges: dict[int, list[int]] = {}
        for i, p in enumerate(nodes):
            view = GNode.from_address(p)
            a, b, fake = (rng.randrange(n) for _ in range(3))
            view.a = nodes[a] if rng.random() < 0.7 else None
            view.b = nodes[b] if rng.random() < 0.4 else None
            view.fake = nodes[fake]
            out = [a] * (view.a is not None) + [b] * (view.b is not None)
            if i in untyped:
                out.append(fake)     # conservative: every word is a pointer
            edges[i] = out
        roots = rng.sample(range(n), max(1, n // 50))
        keep = [h.handle(nodes[i]) for i in roots]
        seen, todo = set(roots), list(roots)
        while todo:
            for j in edges[todo.pop()]:
                if j not in seen:
                    seen.add(j)
                    todo.append(j)
        h.collect()
        alive = {i for i, p in enumerate(nodes) if h.lookup(p) is not None}
        assert alive == seen
        h.verify()
        h.collect()          # a second cycle: spans typed by now, freed slots reset
        assert {i for i, p in enumerate(nodes) if h.lookup(p) is not None} == seen
        h.verify()
        del keep


def test_full_spans_of_one_type_carry_it_and_lose_it_on_free(heap):
    ps = [heap.alloc(32, type=GNode) for _ in range(1000)]
    keep = [heap.handle(p) for p in ps]
    heap.collect()
    span_of = heap._alloc.mheap.span_of
    spans = {span_of(p) for p in ps}
    typed = [s for s in spans if isinstance(s.typed, bitmap.Layout)]
    assert len(typed) >= len(spans) - 2       # full spans; the first and last may be partial
    s = typed[0]
    victim = next(p for p in ps if span_of(p) is s)
    keep = [k for k in keep if k.addr != victim]
    heap.free(victim)
    assert s.typed is True                   # a free slot may take an untyped object now
    q = heap.alloc(32)                       # untyped, maybe in victim's slot
    GNode.from_address(q).fake = ps[0]
    heap.verify()
    heap.collect()
    heap.verify()
    del keep
