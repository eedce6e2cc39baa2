"""mallocgc through Heap.alloc: size 0, the tiny allocator, every size-class boundary, large
objects, lazy zeroing, heap-profile sampling and the MemStats object counts.

Heaps here run with ``gc_percent=-1``: the tests keep raw addresses in Python lists, which are
not roots, so an automatic collection would free objects under them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import types

import pytest

import gcalloc
from gcalloc import malloc as malloc_mod
from gcalloc import mheap as mheap_mod
from gcalloc.errors import (
    GcallocError,
    InteriorPointer,
    InvalidArgument,
    InvalidSize,
    NotHeapPointer,
    TinyObjectFree,
)
from gcalloc.malloc import MAX_ALLOC
from gcalloc.mcache import EMPTY_SPAN
from gcalloc.sizeclasses import (
    MAX_SMALL_SIZE,
    NUM_SIZE_CLASSES,
    PAGE_SIZE,
    TINY_SIZE,
    class_to_size,
    size_to_class,
)

PAGE = PAGE_SIZE


def fill(p: int, size: int, byte: int = 0xA5) -> None:
    ctypes.memset(p, byte, size)


def is_zero(p: int, size: int) -> bool:
    return ctypes.string_at(p, size) == bytes(size)


def page_round(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


# --- size 0 -----------------------------------------------------------------------------------

def test_size_zero_returns_zerobase_every_time(heap):
    z = heap.alloc(0)
    assert z != 0
    assert heap.alloc(0) == z
    assert heap.alloc(0, noscan=True) == z
    assert heap.alloc(0, type=ctypes.c_uint64) == z
    assert heap.alloc(0, zero=False) == z
    assert z == heap._alloc.zerobase


def test_zerobase_is_not_an_object(heap):
    z = heap.alloc(0)
    p = heap.alloc(8)
    before = heap.read_memstats()
    assert heap.lookup(z) is None
    assert heap.usable_size(z) == 0
    heap.free(z)
    heap.free(z)           # freeing zerobase is a no-op, as often as you like
    after = heap.read_memstats()
    assert after.mallocs == before.mallocs == 1
    assert after.frees == before.frees == 0
    assert after.lookups == before.lookups + 1
    assert heap.lookup(p) == (p, 8)
    heap.verify()


def test_size_zero_is_not_counted(heap):
    for _ in range(10):
        heap.alloc(0)
    ms = heap.read_memstats()
    assert ms.mallocs == 0 and ms.total_alloc == 0 and ms.heap_objects == 0


# --- tiny allocator ---------------------------------------------------------------------------

@pytest.mark.parametrize("first, second, offset", [
    (1, 8, 8),      # size & 7 == 0: 8-aligned
    (1, 4, 4),      # size & 3 == 0: 4-aligned
    (1, 12, 4),     # 12 & 7 != 0, 12 & 3 == 0: 4-aligned
    (1, 2, 2),      # size & 1 == 0: 2-aligned
    (1, 6, 2),      # 6 & 3 != 0: 2-aligned
    (1, 3, 1),      # odd: no alignment
    (3, 5, 3),
    (5, 2, 6),
    (2, 4, 4),
    (3, 8, 8),
])
def test_tiny_alignment(heap, first, second, offset):
    a = heap.alloc(first, noscan=True)
    b = heap.alloc(second, noscan=True)
    assert a % TINY_SIZE == 0          # a fresh heap's first tiny object starts a block
    assert b == a + offset
    assert heap.lookup(b) == (a, TINY_SIZE)


def test_tiny_alignment_holds_for_every_size():
    for first in range(1, 16):
        for second in range(1, 16):
            with gcalloc.Heap(gc_percent=-1, debug="") as heap:
                a = heap.alloc(first, noscan=True)
                b = heap.alloc(second, noscan=True)
                align = 8 if second % 8 == 0 else 4 if second % 4 == 0 else \
                    2 if second % 2 == 0 else 1
                assert b % align == 0, (first, second, b - a)
                off = (first + align - 1) // align * align
                if off + second <= TINY_SIZE:
                    assert b == a + off, (first, second)
                else:
                    assert heap.lookup(b)[0] != a, (first, second)
                    assert b % TINY_SIZE == 0


def test_tiny_objects_pack_into_one_block(heap):
    ps = [heap.alloc(1, noscan=True) for _ in range(TINY_SIZE)]
    block = ps[0]
    assert ps == list(range(block, block + TINY_SIZE))
    assert {heap.lookup(p) for p in ps} == {(block, TINY_SIZE)}
    q = heap.alloc(1, noscan=True)           # the block is full: a new one
    assert heap.lookup(q) == (q, TINY_SIZE) and q != block
    ms = heap.read_memstats()
    assert ms.mallocs == TINY_SIZE + 1
    assert ms.heap_objects == 2           # two 16-byte blocks
    assert ms.by_size[2].mallocs == 2 and ms.by_size[2].size == 16


def test_tiny_objects_share_their_block(heap):
    a = heap.alloc(4, noscan=True)
    b = heap.alloc(4, noscan=True)
    c = heap.alloc(8, noscan=True)
    assert (b, c) == (a + 4, a + 8)
    for p in (a, b, c):
        assert heap.lookup(p) == (a, TINY_SIZE)
        with pytest.raises(TinyObjectFree):
            heap.free(p)
    ctypes.c_uint32.from_address(a).value = 0x11111111
    ctypes.c_uint32.from_address(b).value = 0x22222222
    ctypes.c_uint64.from_address(c).value = 0x3333333333333333
    assert ctypes.c_uint32.from_address(a).value == 0x11111111
    assert ctypes.c_uint32.from_address(b).value == 0x22222222
    assert ctypes.c_uint64.from_address(c).value == 0x3333333333333333
    heap.verify()


def test_tiny_block_replacement_keeps_new_block_with_more_room(heap):
    a = heap.alloc(12, noscan=True)          # block A: 4 bytes left
    b = heap.alloc(8, noscan=True)           # does not fit: block B, 8 bytes left -> keep B
    assert heap.lookup(b) == (b, TINY_SIZE) and b != heap.lookup(a)[0]
    c = heap.alloc(8, noscan=True)
    assert c == b + 8


def test_tiny_block_replacement_keeps_old_block_with_more_room(heap):
    a = heap.alloc(4, noscan=True)           # block A: 12 bytes left
    b = heap.alloc(15, noscan=True)          # does not fit after 4: block B, 1 byte left
    assert heap.lookup(b)[0] != a
    c = heap.alloc(4, noscan=True)           # A kept: 12 bytes left beats 1
    assert c == a + 4
    d = heap.alloc(8, noscan=True)
    assert d == a + 8


def test_tiny_only_for_noscan_below_16(heap):
    p16 = heap.alloc(16, noscan=True)
    assert heap.usable_size(p16) == 16
    q = heap.alloc(16, noscan=True)
    assert q != p16 and heap.lookup(q) == (q, 16)
    s1 = heap.alloc(1)                       # scan objects never share: class 1 (8 B)
    s2 = heap.alloc(1)
    assert heap.usable_size(s1) == heap.usable_size(s2) == 8
    assert abs(s2 - s1) >= 8


def test_tiny_block_is_recorded_when_its_refill_starts_a_collection():
    """GC on, with a tiny goal so that refills of the tiny class start collections: a block
    taken on such a refill must still be recorded as a tiny block (free of an object in it
    raises TinyObjectFree), and nothing is recorded on the shared empty span."""
    unrecorded = []
    try:
        with gcalloc.Heap(gc_percent=1, debug="") as heap:
            for _ in range(60_000):
                p = heap.alloc(8, noscan=True)
                if p % TINY_SIZE == 0:            # p starts a new block
                    try:
                        heap.free(p)
                        unrecorded.append(p)
                    except TinyObjectFree:
                        pass
            assert heap.read_memstats().num_gc > 5
            assert unrecorded == []
            assert EMPTY_SPAN.tiny_blocks is None
            heap.verify()
    finally:
        EMPTY_SPAN.tiny_blocks = None      # the shared sentinel must not leak into other tests


# --- size classes -----------------------------------------------------------------------------

@pytest.mark.parametrize("noscan", [False, True])
def test_every_size_class_boundary(heap, noscan):
    for c in range(1, NUM_SIZE_CLASSES):
        for size in (class_to_size[c - 1] + 1, class_to_size[c]):
            if noscan and size < TINY_SIZE:
                continue                  # the tiny allocator's, tested above
            p = heap.alloc(size, noscan=noscan)
            assert heap.usable_size(p) == class_to_size[c], (c, size)
            assert heap.lookup(p) == (p, class_to_size[c])
            assert heap.lookup(p + size - 1) == (p, class_to_size[c])
            s = heap._alloc.mheap.span_of(p)
            assert (s.sizeclass, s.noscan) == (c, noscan), (c, size)
            assert (p - s.base) % class_to_size[c] == 0
    heap.verify()


def test_objects_of_one_class_do_not_overlap(heap):
    for size in (8, 24, 48, 112, 1024, 1152, 4096, 27264):
        ps = sorted(heap.alloc(size) for _ in range(40))
        step = heap.usable_size(ps[0])
        assert all(b - a >= step for a, b in zip(ps[:-1], ps[1:], strict=True)), size
    heap.verify()


def test_max_small_size_and_first_large_size(heap):
    p = heap.alloc(MAX_SMALL_SIZE)
    assert heap.usable_size(p) == MAX_SMALL_SIZE
    assert heap._alloc.mheap.span_of(p).sizeclass == NUM_SIZE_CLASSES - 1
    q = heap.alloc(MAX_SMALL_SIZE + 1)
    assert heap._alloc.mheap.span_of(q).sizeclass == 0
    assert heap.usable_size(q) == page_round(MAX_SMALL_SIZE + 1)


# --- large objects ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32769, 40000, 65536, 100001, 1 << 20, (3 << 20) + 5])
def test_large_object(heap, size):
    p = heap.alloc(size, noscan=True)
    s = heap._alloc.mheap.span_of(p)
    assert s.sizeclass == 0 and s.base == p and p % PAGE == 0
    usable = page_round(size)
    assert heap.usable_size(p) == usable
    assert s.limit == p + usable          # the object owns its whole span
    assert heap.lookup(p) == (p, usable)
    assert heap.lookup(p + size // 2) == (p, usable)
    assert heap.lookup(p + size - 1) == (p, usable)
    assert heap.lookup(p + usable - 1) == (p, usable)
    assert heap.lookup(p + usable) is None or heap.lookup(p + usable)[0] != p
    with pytest.raises(InteriorPointer):
        heap.usable_size(p + 8)
    fill(p, usable)                        # every usable byte is the object's
    assert ctypes.string_at(p + usable - 4, 4) == b"\xa5" * 4
    ms = heap.read_memstats()
    assert ms.by_size[0].mallocs == 1
    assert ms.total_alloc == page_round(size)
    heap.verify()


def test_large_objects_are_distinct(heap):
    ps = [heap.alloc(50000 + i * 10000) for i in range(6)]
    spans = [(p, p + heap.usable_size(p)) for p in ps]
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))
    assert heap.read_memstats().heap_objects == 6


# --- zeroing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size, noscan", [(64, False), (64, True), (24, True), (2048, False)])
def test_reused_slots_are_zeroed(heap, size, noscan):
    n = 30
    first = [heap.alloc(size, noscan=noscan) for _ in range(n)]
    for p in first:
        fill(p, size)
    for p in first:
        heap.free(p)
    again = [heap.alloc(size, noscan=noscan) for _ in range(n)]
    assert set(again) & set(first)        # the same span's slots came back
    assert all(is_zero(p, size) for p in again)
    heap.verify()


def test_reused_tiny_block_is_zeroed(heap):
    big = [heap.alloc(16, noscan=True) for _ in range(20)]      # 16-byte noscan: tiny's class
    for p in big:
        fill(p, 16)
    for p in big:
        heap.free(p)
    tiny = [heap.alloc(3, noscan=True) for _ in range(40)]
    blocks = {heap.lookup(p)[0] for p in tiny}
    assert blocks & set(big)
    assert all(is_zero(b, TINY_SIZE) for b in blocks)


def test_reused_large_object_is_zeroed(heap):
    size = 100000
    p = heap.alloc(size, noscan=True)
    fill(p, size)
    heap.free(p)
    q = heap.alloc(size, noscan=True)
    assert q == p                          # best fit, lowest address
    assert is_zero(q, size)


def test_zero_false_leaves_the_run_valid(heap):
    size = 64
    first = [heap.alloc(size) for _ in range(20)]
    for p in first:
        fill(p, size)
    for p in first:
        heap.free(p)
    raw = heap.alloc(size, zero=False)        # rawmem: may hold old bytes, never asserted
    rest = [heap.alloc(size) for _ in range(19)]
    assert raw not in rest
    assert set(rest + [raw]) == set(first)
    assert all(is_zero(p, size) for p in rest)
    fill(raw, size, 0x5A)                  # the raw slot is a valid object of its own
    assert all(is_zero(p, size) for p in rest)
    assert heap.lookup(raw) == (raw, size)
    heap.verify()


class _ClearLog:
    """Stands in for a clearing function (memclr(p, n) or memset(p, 0, n)) and records
    every clear as (address, bytes)."""

    def __init__(self, real) -> None:
        self.calls: list[tuple[int, int]] = []
        self._real = real

    def __call__(self, p, *args):
        self.calls.append((p, args[-1]))
        return self._real(p, *args)

    def covers(self, p: int) -> bool:
        return any(a <= p < a + n for a, n in self.calls)


@pytest.fixture
def memset_log(monkeypatch):
    """(malloc's clears, the page heap's clears): every place heap memory is zeroed."""
    small = _ClearLog(malloc_mod.memclr)
    pages = _ClearLog(ctypes.memset)
    monkeypatch.setattr(malloc_mod, "memclr", small)
    monkeypatch.setattr(mheap_mod, "ctypes", types.SimpleNamespace(memset=pages))
    return small, pages


def test_fresh_memory_is_not_cleared(heap, memset_log):
    small, pages = memset_log
    ps = []
    for size in (8, 16, 24, 100, 500, 1016, 1024, 5000, 32768):
        ps += [heap.alloc(size) for _ in range(3)]
        ps += [heap.alloc(size, noscan=True) for _ in range(3)]
    ps += [heap.alloc(3, noscan=True) for _ in range(40)]
    ps += [heap.alloc(40000), heap.alloc(200000, noscan=True)]
    assert small.calls == [] and pages.calls == []
    assert all(is_zero(p, 3) for p in ps)


def test_dirty_memory_is_cleared_once_and_rawmem_never(heap, memset_log):
    small, pages = memset_log
    p = heap.alloc(48)
    q = heap.alloc(48)
    heap.free(q)
    assert heap.alloc(48) == q                # zero=True on a dirty span: cleared
    assert small.covers(q)
    small.calls.clear()
    heap.free(q)
    assert heap.alloc(48, zero=False) == q    # rawmem: not cleared
    assert not small.covers(q)
    assert not small.covers(p)
    big = heap.alloc(100000)
    heap.free(big)
    assert heap.alloc(100000, zero=False) == big
    assert pages.calls == []
    heap.free(big)
    assert heap.alloc(100000) == big
    assert pages.covers(big)


# --- heap-profile sampling --------------------------------------------------------------------

@pytest.fixture
def samples(heap):
    log: list[tuple[int, int]] = []
    a = heap._alloc
    a.hooks = dataclasses.replace(a.hooks, on_sample=lambda p, size: log.append((p, size)))
    return log


def test_default_mem_profile_rate(heap):
    assert heap.mem_profile_rate == 512 * 1024


def test_rate_one_samples_every_small_allocation(heap, samples):
    heap.mem_profile_rate = 1
    ps = [heap.alloc(48) for _ in range(50)] + [heap.alloc(2000, noscan=True) for _ in range(10)]
    assert samples == [(p, heap.usable_size(p)) for p in ps]


def test_rate_one_samples_each_new_tiny_block(heap, samples):
    heap.mem_profile_rate = 1
    a = heap.alloc(8, noscan=True)            # new block: sampled as a 16-byte object
    b = heap.alloc(8, noscan=True)            # same block: Go returns before profiling
    c = heap.alloc(8, noscan=True)            # new block
    assert b == a + 8
    assert samples == [(a, TINY_SIZE), (c, TINY_SIZE)]


def test_rate_one_samples_large_allocations(heap, samples):
    heap.mem_profile_rate = 1
    p = heap.alloc(100000)
    assert [s[0] for s in samples] == [p]


def test_sampled_size_is_the_usable_size(heap, samples):
    """Go 1.16 mallocgc sets size = span.elemsize before profilealloc, for large objects
    too: the sample records the bytes the object occupies."""
    heap.mem_profile_rate = 1
    ps = [heap.alloc(100), heap.alloc(40000), heap.alloc(100001, noscan=True)]
    assert samples == [(p, heap.usable_size(p)) for p in ps]


def test_rate_zero_never_samples(heap, samples):
    heap.mem_profile_rate = 0
    for _ in range(2000):
        heap.alloc(512)
        heap.alloc(5, noscan=True)
    for _ in range(5):
        heap.alloc(1 << 20)
    assert samples == []


def test_sampling_is_proportional_to_bytes(heap, samples):
    """Samples come every ~rate bytes even inside runs: a run stops short of the next
    sample. With 16-byte objects a run holds up to 64 of them (1 KiB); if runs ignored the
    countdown there would be at most one sample per KiB, a quarter of what is expected."""
    rate = 256
    heap.mem_profile_rate = rate
    n = 20000
    ps = set()
    for _ in range(n):
        ps.add(heap.alloc(16))
    expected = n * 16 / rate                # 1250, standard deviation ~35
    assert 0.8 * expected < len(samples) < 1.2 * expected
    assert all(p in ps and size == 16 for p, size in samples)


def test_mem_profile_rate_change_applies_to_the_next_allocation(heap, samples):
    heap.alloc(64)                            # reserves a run under the default rate
    heap.mem_profile_rate = 1
    p = heap.alloc(64)
    assert samples == [(p, 64)]
    heap.verify()


@pytest.mark.parametrize("bad, exc", [
    (-1, InvalidSize), (-(1 << 70), InvalidSize), (1.5, InvalidArgument),
    ("512", InvalidArgument), (None, InvalidArgument), (True, InvalidArgument),
])
def test_mem_profile_rate_validation(heap, bad, exc):
    heap.mem_profile_rate = 4096
    with pytest.raises(exc):
        heap.mem_profile_rate = bad
    assert heap.mem_profile_rate == 4096


# --- argument errors --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [-1, -(1 << 64), MAX_ALLOC + 1, 1 << 64])
def test_bad_sizes_raise_invalid_size(heap, size):
    with pytest.raises(InvalidSize):
        heap.alloc(size)
    with pytest.raises(InvalidSize):
        heap.alloc(size, noscan=True)
    assert heap.read_memstats().mallocs == 0


@pytest.mark.parametrize("size", ["8", 8.0, 20.0, None, b"1", [8], True, False])
def test_non_int_sizes_raise_invalid_argument(heap, size):
    with pytest.raises(InvalidArgument):
        heap.alloc(size)
    with pytest.raises(InvalidArgument):
        heap.alloc(size, noscan=True)
    assert heap.read_memstats().mallocs == 0
    heap.verify()


def test_typed_allocation_errors(heap):
    with pytest.raises(InvalidSize):
        heap.alloc(12, type=ctypes.c_uint64)     # not a multiple of the type's size
    with pytest.raises(InvalidArgument):
        heap.alloc(16, type=42)
    with pytest.raises(InvalidArgument):
        heap.alloc(16, type=ctypes.c_uint64(1))  # an instance, not a type
    assert heap.read_memstats().mallocs == 0
    p = heap.alloc(24, type=ctypes.c_uint64)     # an array of three
    assert heap.usable_size(p) == 24


def test_errors_are_gcalloc_errors_and_builtins():
    assert issubclass(InvalidSize, ValueError) and issubclass(InvalidSize, GcallocError)
    assert issubclass(InvalidArgument, TypeError)
    for exc in (NotHeapPointer, InteriorPointer, TinyObjectFree):
        assert issubclass(exc, GcallocError) and issubclass(exc, ValueError)


def test_index_like_sizes_are_accepted(heap):
    class Size:
        def __index__(self):
            return 40

    p = heap.alloc(Size())
    assert heap.usable_size(p) == 48


# --- MemStats object counts -------------------------------------------------------------------

def test_memstats_counts_for_a_known_sequence(heap):
    for _ in range(3):
        heap.alloc(24)                        # class 3 (24 B), scan
    for _ in range(2):
        heap.alloc(100, noscan=True)          # class 112 B, noscan
    heap.alloc(40000)                         # large: 5 pages
    for _ in range(5):
        heap.alloc(3, noscan=True)            # 1 tiny block + 4 tiny allocations in it
    heap.alloc(0)                             # not counted
    ms = heap.read_memstats()
    assert ms.mallocs == 3 + 2 + 1 + 5
    assert ms.frees == 4                   # Go counts tiny allocations as freed at once
    assert ms.heap_objects == 3 + 2 + 1 + 1
    assert ms.total_alloc == 3 * 24 + 2 * 112 + 5 * PAGE + 16
    assert ms.heap_alloc == ms.alloc == ms.total_alloc
    rows = {row.size: (row.mallocs, row.frees) for row in ms.by_size}
    assert rows[24] == (3, 0) and rows[112] == (2, 0) and rows[16] == (1, 0)
    assert ms.by_size[0] == type(ms.by_size[0])(0, 1, 0)
    assert sum(r.mallocs for r in ms.by_size) == 7
    assert len(ms.by_size) == NUM_SIZE_CLASSES


def test_memstats_after_frees(heap):
    ps = [heap.alloc(24) for _ in range(10)]
    big = heap.alloc(70000)
    for p in ps[:4]:
        heap.free(p)
    heap.free(big)
    ms = heap.read_memstats()
    assert (ms.mallocs, ms.frees, ms.heap_objects) == (11, 5, 6)
    assert ms.total_alloc == 10 * 24 + 9 * PAGE
    assert ms.heap_alloc == 6 * 24
    rows = {row.size: (row.mallocs, row.frees) for row in ms.by_size}
    assert rows[24] == (10, 4) and rows[0] == (1, 1)


def test_memstats_do_not_count_reserved_run_slots(heap):
    heap.alloc(8)                             # reserves a run of up to 63 more slots
    ms = heap.read_memstats()
    assert ms.mallocs == 1 and ms.by_size[1].mallocs == 1 and ms.heap_alloc == 8


def test_collection_keeps_the_threads_tiny_block():
    """A flush at the start of a cycle leaves each mcache's tiny block in place, as a root:
    a thread parked between its check of c.tiny and its use must find the same block. The
    next tiny allocation continues inside it, and the block's earlier objects stay live."""
    with gcalloc.Heap(gc_percent=-1, debug="") as heap:
        first = heap.alloc(4, noscan=True)
        c = heap._alloc._tls.mcache
        block, used = c.tiny, c.tinyoffset
        heap.collect()
        assert (c.tiny, c.tinyoffset) == (block, used)
        assert heap.lookup(first) == (block, TINY_SIZE)
        assert heap.alloc(4, noscan=True) == block + used
        heap.verify()


def test_fast_path_tables_agree_with_size_to_class(heap):
    """The fast path's inline tables and _alloc_other's 128-byte index give the class
    size_to_class gives, at every size up to SMALL_FAST_MAX and at every class boundary
    above it."""
    assert malloc_mod.SMALL_FAST_MAX == 1016
    for n in range(1, malloc_mod.SMALL_FAST_MAX + 1):
        assert malloc_mod._SCAN_SPC[n] >> 1 == size_to_class(n), n
        assert malloc_mod._NOSCAN_SPC[n] == malloc_mod._SCAN_SPC[n] | 1
    sizes = {malloc_mod.SMALL_FAST_MAX + 1, MAX_SMALL_SIZE}
    for size in class_to_size[1:]:
        if malloc_mod.SMALL_FAST_MAX < size:
            sizes.update((size - 1, size, min(size + 1, MAX_SMALL_SIZE)))
    for size in sorted(sizes):
        p = heap.alloc(size, noscan=True)
        s = heap._alloc.mheap.span_of(p)
        assert s.spanclass == (size_to_class(size) << 1 | 1), size


class _SlowPathTypeError(TypeError):
    pass


def test_type_error_from_a_slow_path_propagates(heap):
    """Only the fast path's size test is guarded by ``except TypeError``: a TypeError (such
    as InvalidArgument) raised by a slow path reaches the caller as it was raised."""
    def broken(*args):
        raise _SlowPathTypeError("from the slow path")

    heap.alloc(8)      # the thread's mcache exists; its 64-byte run is still empty
    heap._alloc._alloc_small = broken
    with pytest.raises(_SlowPathTypeError):
        heap.alloc(64)
