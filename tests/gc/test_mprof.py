"""Heap profile (Go 1.16 malloc.go's profilealloc and mprof.go): sampled allocations are
recorded in buckets keyed by (size, Python call stack outside gcalloc), freed by sweep or
explicit free through their profile special, published per GC cycle, and, scaled by the
rate, estimate the true allocation volume per call site.
"""

from __future__ import annotations

import ctypes

import pytest

import gcalloc
from gcalloc.gc.mprof import (
    BUCKET_HEADER_BYTES,
    MAX_STACK,
    MEM_RECORD_BYTES,
    MemProfileRecord,
    is_internal,
)
from gcalloc.gc.pprof import scale_heap_sample


def records_of(heap: gcalloc.Heap, fn_name: str):
    """Records whose innermost frame is function ``fn_name`` of this module."""
    return [r for r in heap.memprofile()
            if r.stack and r.stack[0].function == f"{__name__}.{fn_name}"]


def one_record(heap: gcalloc.Heap, fn_name: str):
    recs = records_of(heap, fn_name)
    assert len(recs) == 1, recs
    return recs[0]


def site_total(heap: gcalloc.Heap, fn_name: str) -> MemProfileRecord:
    """The records of one site (one per calling line and size) summed."""
    recs = records_of(heap, fn_name)
    assert recs
    sums = [sum(getattr(r, f) for r in recs) for f in _COUNTS]
    return MemProfileRecord(*sums, stack=recs[0].stack)


_COUNTS = ("alloc_objects", "alloc_bytes", "free_objects", "free_bytes", "inuse_objects",
           "inuse_bytes")


# Plain loops, not comprehensions: a comprehension is a frame of its own before Python 3.12.

def site_a(heap, n: int, size: int, keep: bool) -> list[int]:
    ps = []
    for _ in range(n):
        ps.append(heap.alloc(size))
    if keep:
        for p in ps:
            heap.add_root(p)
    return ps


def site_b(heap, n: int, size: int) -> list[int]:
    ps = []
    for _ in range(n):
        ps.append(heap.alloc(size))
    return ps


def _unforced_cycle(heap: gcalloc.Heap) -> None:
    old = heap.set_gc_percent(0)
    heap.alloc(40_000)
    heap.set_gc_percent(old)


# --- what a record holds -------------------------------------------------------------------

def test_rate_one_records_every_allocation_with_its_usable_size(heap):
    heap.mem_profile_rate = 1
    site_a(heap, 7, 100, keep=True)              # 100 bytes -> size class 112
    r = one_record(heap, "site_a")
    assert (r.alloc_objects, r.alloc_bytes) == (7, 7 * 112)
    assert (r.inuse_objects, r.inuse_bytes, r.free_objects) == (7, 7 * 112, 0)
    frame = r.stack[0]
    assert frame.filename == __file__ and frame.start_line == site_a.__code__.co_firstlineno
    assert r.stack[1].function.endswith("test_rate_one_records_every_allocation_with_its_"
                                        "usable_size")


def test_buckets_are_keyed_by_size_and_stack(heap):
    heap.mem_profile_rate = 1
    site_b(heap, 3, 64)
    site_b(heap, 2, 4096)
    site_b(heap, 4, 64)
    by_size = sorted((r.alloc_bytes // r.alloc_objects, r.alloc_objects)
                     for r in records_of(heap, "site_b"))
    assert by_size == [(64, 3), (64, 4), (4096, 2)]   # two lines of the caller: two stacks


def test_stack_starts_outside_gcalloc_and_keeps_32_frames(heap):
    heap.mem_profile_rate = 1

    class Pair(ctypes.Structure):
        _fields_ = [("a", ctypes.c_void_p), ("b", ctypes.c_void_p)]

    def through_new():
        return heap.new(Pair)                    # heap.new -> alloc: gcalloc frames

    def deep(n: int):
        return deep(n - 1) if n else heap.alloc(48)

    h = through_new()
    deep(60)
    [r] = [r for r in heap.memprofile() if r.stack[0].function.endswith("through_new")]
    assert not any("gcalloc" in f.filename.split("/")[-2:-1] for f in r.stack)
    [d] = [r for r in heap.memprofile() if r.stack[0].function.endswith("deep")]
    assert len(d.stack) == MAX_STACK and all(f.function.endswith("deep") for f in d.stack)
    del h


def test_internal_frames_are_the_heaps_machinery_only():
    for module in ("gcalloc.heap", "gcalloc.malloc", "gcalloc.gc.roots", "gcalloc.os.posix"):
        assert is_internal(module)
    for module in ("gcalloc.demo", "gcalloc.cli", "gcalloc_app", "__main__", "test_mprof"):
        assert not is_internal(module)


def test_rate_zero_records_nothing(heap):
    heap.mem_profile_rate = 0
    site_b(heap, 50, 4096)
    heap.collect()
    assert heap.memprofile() == [] and heap._specials.live(2) == 0


def test_sampled_object_carries_a_profile_special(heap):
    heap.mem_profile_rate = 1
    [p] = site_b(heap, 1, 256)
    s = heap._alloc.mheap.span_of(p)
    [rec] = heap._specials.records(s)
    assert rec.offset == p - s.base and rec.bucket is not None


def test_buckets_are_charged_to_buckhash_sys(heap):
    heap.mem_profile_rate = 1
    before = heap.read_memstats().buck_hash_sys
    site_b(heap, 10, 64)                         # one new bucket
    r = one_record(heap, "site_b")
    after = heap.read_memstats().buck_hash_sys
    assert after - before == BUCKET_HEADER_BYTES + 8 * len(r.stack) + MEM_RECORD_BYTES


# --- publication per cycle ---------------------------------------------------------------------

def test_counts_are_published_per_gc_cycle(heap):
    heap.mem_profile_rate = 1
    first = site_a(heap, 10, 4096, keep=True)
    heap.collect()
    r = site_total(heap, "site_a")
    assert (r.alloc_objects, r.free_objects, r.inuse_objects) == (10, 0, 10)
    site_a(heap, 5, 4096, keep=True)
    r = site_total(heap, "site_a")
    assert r.alloc_objects == 10                 # not yet: as of the last collection
    for p in first:
        heap.remove_root(p)
    heap.collect()
    r = site_total(heap, "site_a")
    assert (r.alloc_objects, r.free_objects, r.inuse_objects) == (15, 10, 5)
    assert (r.alloc_bytes, r.free_bytes, r.inuse_bytes) == (15 * 4096, 10 * 4096, 5 * 4096)


def test_before_any_collection_everything_recorded_is_shown(heap):
    heap.mem_profile_rate = 1
    site_a(heap, 4, 512, keep=False)
    r = site_total(heap, "site_a")
    assert (r.alloc_objects, r.free_objects) == (4, 0)


def test_unforced_cycle_publishes_at_the_next_mark_termination(heap):
    heap.mem_profile_rate = 1
    site_a(heap, 3, 1024, keep=False)
    heap.collect()                               # publishes the 3 allocations
    site_a(heap, 4, 1024, keep=False)
    _unforced_cycle(heap)                        # the 4: allocated before this termination
    r = site_total(heap, "site_a")
    assert (r.alloc_objects, r.free_objects) == (3, 3)   # the 3 died in the forced cycle
    _unforced_cycle(heap)
    r = site_total(heap, "site_a")
    assert (r.alloc_objects, r.free_objects) == (7, 7)


def test_explicit_free_is_counted_and_never_before_its_allocation(heap):
    heap.mem_profile_rate = 1
    site_a(heap, 2, 64, keep=True)
    heap.collect()
    for p in site_b(heap, 3, 2048):
        heap.free(p)
    _unforced_cycle(heap)
    assert all(r.inuse_objects >= 0 and r.inuse_bytes >= 0 for r in heap.memprofile())
    heap.collect()
    r = one_record(heap, "site_b")
    assert (r.alloc_objects, r.free_objects, r.inuse_bytes) == (3, 3, 0)


def test_inuse_zero_false_leaves_out_fully_freed_buckets(heap):
    heap.mem_profile_rate = 1
    site_a(heap, 3, 64, keep=True)
    site_b(heap, 3, 64)
    heap.collect()
    names = {r.stack[0].function.rsplit(".", 1)[-1] for r in heap.memprofile(inuse_zero=False)}
    assert "site_a" in names and "site_b" not in names
    assert any(r.stack[0].function.endswith("site_b") for r in heap.memprofile())


# --- accuracy ------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [4096, 16384])
def test_scaled_estimates_are_within_ten_percent(heap, rate):
    """Two call sites with known allocation volumes: the scaled estimate per site is within
    10% of the truth (about 1500+ samples per site, so the sampling error is ~3%)."""
    heap._alloc._rand.seed(rate)                        # deterministic, the margin is still wide
    heap.mem_profile_rate = rate
    n_small, n_big = 1500 * rate // 64, 1500 * rate // 2048 + 200
    truth = {"site_a": n_small * 64, "site_b": n_big * 2048}
    site_a(heap, n_small, 64, keep=False)
    site_b(heap, n_big, 2048)
    heap.collect()
    for name, true_bytes in truth.items():
        objects = bytes_ = 0
        for r in records_of(heap, name):
            o, b = scale_heap_sample(r.alloc_objects, r.alloc_bytes, rate)
            objects, bytes_ = objects + o, bytes_ + b
            fo, fb = scale_heap_sample(r.free_objects, r.free_bytes, rate)
            assert (fo, fb) == (o, b)            # all of them died in the collection
        assert abs(bytes_ - true_bytes) <= 0.10 * true_bytes, (name, bytes_, true_bytes)
        size = 64 if name == "site_a" else 2048
        assert abs(objects - true_bytes // size) <= 0.10 * true_bytes // size
