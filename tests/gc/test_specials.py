"""Special records (Go 1.8 mheap.go): per-span lists sorted by (offset, kind) with the
finalizer kind first, records from fixallocs, addspecial refusing a duplicate, removespecial
matching the exact offset, sweep and explicit free freeing a dead object's records through
freespecial, ensureSwept before a change, and the memory accounting Go does for them.
"""

from __future__ import annotations

import random

import pytest

import gcalloc
from gcalloc.errors import HeapCorruption
from gcalloc.fixalloc import FIX_ALLOC_CHUNK
from gcalloc.gc.specials import (
    KIND_FINALIZER,
    KIND_PROFILE,
    SPECIAL_FINALIZER_BYTES,
    SPECIAL_PROFILE_BYTES,
    Specials,
)


def _mapped_bytes(heap: gcalloc.Heap) -> int:
    arenas = heap._alloc.mheap.arenas
    return (sum(n for _, n in arenas.reservations)
            + arenas._bitmap_region.mapped_bytes + arenas._pages_region.mapped_bytes
            + heap._alloc.mheap.gcbits._linear.mapped_bytes + heap._alloc.persistent.mapped_bytes)


def _keys(heap: gcalloc.Heap, s) -> list[tuple[int, int]]:
    return [(r.offset, r.kind) for r in heap._specials.records(s)]


def _profile_record(sp: Specials, bucket: object):
    rec = sp.profile_alloc.alloc()
    rec.bucket = bucket
    return rec


# --- the list ----------------------------------------------------------------------------

def test_records_sorted_by_offset_then_kind_finalizer_first(heap):
    heap.mem_profile_rate = 0
    objs = [heap.alloc(64) for _ in range(40)]
    s = heap._alloc.mheap.span_of(objs[0])
    assert all(heap._alloc.mheap.span_of(p) is s for p in objs)
    sp = heap._specials
    rng = random.Random(7)
    plan = [(p, kind) for p in objs[::3] for kind in (KIND_FINALIZER, KIND_PROFILE)]
    rng.shuffle(plan)
    for p, kind in plan:
        if kind == KIND_FINALIZER:
            heap.set_finalizer(p, print)
        else:
            sp.set_profile_bucket(s, p - s.base, object())
    expected = sorted((p - s.base, k) for p, k in plan)
    assert _keys(heap, s) == expected
    assert expected[0][1] == KIND_FINALIZER      # at one offset the finalizer comes first
    assert sp.finalizers == len(objs[::3]) and s in sp.spans
    heap.verify()


def test_addspecial_refuses_a_duplicate_kind_at_the_same_offset(heap):
    p = heap.alloc(64)
    s = heap._alloc.mheap.span_of(p)
    sp = heap._specials
    off = p - s.base
    assert sp.add(s, off, _profile_record(sp, "first"))
    dup = _profile_record(sp, "second")
    assert sp.add(s, off, dup) is False
    assert [r.bucket for r in sp.records(s)] == ["first"]
    assert sp.add_finalizer(s, off, print)       # another kind at that offset is fine
    assert sp.add_finalizer(s, off, repr) is False
    assert sp.live(KIND_FINALIZER) == 1          # the refused record went back
    assert _keys(heap, s) == [(off, KIND_FINALIZER), (off, KIND_PROFILE)]
    with pytest.raises(HeapCorruption):
        sp.set_profile_bucket(s, off, "third")   # Go: throw("profile already set")
    assert sp.live(KIND_PROFILE) == 2            # "first" and the never-linked "dup"


def test_removespecial_matches_the_exact_offset_only(heap):
    p = heap.alloc(64)
    s = heap._alloc.mheap.span_of(p)
    sp = heap._specials
    off = p - s.base
    assert sp.add_finalizer(s, off, print)
    assert sp.remove(s, off + 8, KIND_FINALIZER) is None
    assert sp.remove(s, off, KIND_PROFILE) is None
    rec = sp.remove(s, off, KIND_FINALIZER)
    assert rec is not None and rec.fn is print
    assert s.specials is None and s not in sp.spans and sp.finalizers == 0


def test_verify_catches_a_misordered_list(heap):
    a, b = heap.alloc(64), heap.alloc(64)
    heap.set_finalizer(a, print)
    heap.set_finalizer(b, print)
    s = heap._alloc.mheap.span_of(a)
    s.specials.reverse()
    with pytest.raises(HeapCorruption, match="not sorted"):
        heap.verify()
    s.specials.reverse()
    heap.verify()


# --- freeing -----------------------------------------------------------------------------

def test_sweep_frees_a_dead_objects_records_through_freespecial(heap):
    heap.mem_profile_rate = 1
    keep = heap.alloc(64)
    dead = heap.alloc(64)
    heap.add_root(keep)
    s = heap._alloc.mheap.span_of(dead)
    assert [k for _, k in _keys(heap, s)] == [KIND_PROFILE, KIND_PROFILE]
    heap.collect()
    assert _keys(heap, s) == [(keep - s.base, KIND_PROFILE)]
    assert heap._specials.live(KIND_PROFILE) == 1
    frees = sum(r.free_objects for r in heap.memprofile())
    assert frees == 1                            # mProf_Free heard of the dead one


def test_sweep_of_a_dead_large_object_frees_its_records(heap):
    heap.mem_profile_rate = 1
    big = heap.alloc(100_000)
    s = heap._alloc.mheap.span_of(big)
    nbytes = s.npages * 8192
    assert _keys(heap, s) == [(0, KIND_PROFILE)]
    heap.collect()
    assert heap._specials.live(KIND_PROFILE) == 0 and not heap._specials.spans
    [rec] = [r for r in heap.memprofile() if r.alloc_bytes >= 100_000]
    assert (rec.alloc_objects, rec.alloc_bytes) == (1, nbytes)
    assert (rec.free_objects, rec.free_bytes) == (1, nbytes)


def test_explicit_free_frees_records_small_and_large(heap):
    heap.mem_profile_rate = 1
    small, big = heap.alloc(64), heap.alloc(70_000)
    heap.set_finalizer(small, print)
    heap.set_finalizer(big, print)
    sp = heap._specials
    assert (sp.live(KIND_FINALIZER), sp.live(KIND_PROFILE)) == (2, 2)
    heap.free(small)
    heap.free(big)
    assert (sp.live(KIND_FINALIZER), sp.live(KIND_PROFILE)) == (0, 0)
    assert not sp.spans and sp.finalizers == 0
    heap.verify()


def test_a_reused_slot_starts_without_records(heap):
    heap.mem_profile_rate = 0
    p = heap.alloc(64)
    heap.set_finalizer(p, print)
    heap.free(p)
    q = next(q for q in (heap.alloc(64) for _ in range(10_000)) if q == p)  # slot reused
    heap.set_finalizer(q, repr)                  # not "already set"
    assert heap._specials.live(KIND_FINALIZER) == 1


# --- ensureSwept -------------------------------------------------------------------------

def _unforced_cycle(heap: gcalloc.Heap) -> None:
    old = heap.set_gc_percent(0)
    heap.alloc(40_000)                           # a slow path collects; sweeping is lazy
    heap.set_gc_percent(old)


def test_changes_sweep_the_span_first(heap):
    heap._gc.batch_sweep = False   # the span must be left to lazy sweeping
    heap.mem_profile_rate = 0
    a, b = heap.alloc(64), heap.alloc(64)
    heap.add_root(a)
    heap.add_root(b)
    _unforced_cycle(heap)
    s = heap._alloc.mheap.span_of(a)
    sg = heap._alloc.mheap.sweepgen
    assert s.sweepgen == sg - 2
    assert heap._specials.add_finalizer(s, a - s.base, print)
    assert s.sweepgen == sg
    _unforced_cycle(heap)
    assert s.sweepgen == heap._alloc.mheap.sweepgen - 2
    assert heap._specials.remove(s, a - s.base, KIND_FINALIZER) is not None
    assert s.sweepgen == heap._alloc.mheap.sweepgen


# --- accounting --------------------------------------------------------------------------

def test_records_are_charged_as_go_charges_them(heap):
    heap.mem_profile_rate = 0
    sp = heap._specials
    objs = [heap.alloc(32) for _ in range(400)]
    for p in objs:
        heap.set_finalizer(p, print)
    assert sp.finalizer_alloc.inuse_bytes == 400 * SPECIAL_FINALIZER_BYTES
    chunks = -(-400 * SPECIAL_FINALIZER_BYTES // FIX_ALLOC_CHUNK)
    assert sp.finalizer_alloc.sys_bytes == chunks * FIX_ALLOC_CHUNK
    assert sp.profile_alloc.size == SPECIAL_PROFILE_BYTES
    # The chunks are persistentalloc memory: sys still equals what is really mapped.
    m = heap.read_memstats()
    assert m.sys - m.mspan_sys - m.mcache_sys == _mapped_bytes(heap)
    for p in objs:
        heap.set_finalizer(p, None)
    assert sp.finalizer_alloc.inuse_bytes == 0 and sp.finalizer_alloc.free_count == 400


def test_memstats_sys_matches_mappings_with_profiling_on(heap):
    heap.mem_profile_rate = 1
    keep = [heap.alloc(size) for size in (16, 200, 3000, 50_000) for _ in range(30)]
    for p in keep[::2]:
        heap.add_root(p)
    heap.collect()
    m = heap.read_memstats()
    assert m.buck_hash_sys > 0
    assert m.sys - m.mspan_sys - m.mcache_sys == _mapped_bytes(heap)
