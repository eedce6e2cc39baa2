"""Batch allocation: n objects of one size in one call (Boehm's GC_malloc_many, mallocx.c).

Boehm hands back a free list carved from a whole block at once; here ``alloc_many`` carves
whole fresh spans at once and returns every address in one numpy uint64 array:

    sizes ≤ 32 KiB: at most two page-heap calls (mheap.alloc_spans: one lock, one clear,
        one batch of gcBits each) for spans of up to BATCH_SPAN_PAGES pages, each a whole
        multiple of the class's span size (so a span holds that multiple of its nelems;
        nothing in the allocator or the collector ties a span's pages to its class), each
        marked
        allocated up to the slots used (freeindex = allocCount = used: the slots below
        freeindex are allocated, as a run the allocator handed out would be), filed in its
        mcentral's swept sets, uncached; the addresses are one numpy expression over the
        span bases and the slot offsets. Python work is per span, never per object.
    larger sizes: a span per object, as alloc does (Python per object: a large object's own
        page-heap call costs more than the loop).

What stays right:
- **pacing**: the bytes handed out are charged to the pacer in one charge; the free slots
  of the last span are not (they are charged when an mcache takes that span). The caller
  polls the collector (``due``) only after it rooted the array.
- **the heap profile**: the thread's sampling countdown is charged with the batch's bytes and
  every object at which it crosses zero is sampled, as if allocated one by one.
- **allocate black**: should a collection be marking (never, with the world stopped while
  the collector marks, but the allocator's contract holds anyway), every object is
  allocated black.
- **statistics**: small_alloc_count counts the objects (under the class's mcentral lock).

Tiny objects (noscan, < 16 B) get slots of their own size class, not a share of a 16-byte
block: each object of a batch can die on its own. The free slots of partly used spans are
left to ``alloc``: a batch never waits for a sweep.

Invariants: every address returned is the start of an allocated, zeroed slot; the spans of a
small batch are in use, uncached, swept this cycle, and in their mcentral's swept sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gcalloc.arena import MAX_HEAP_BYTES
from gcalloc.errors import OutOfMemory
from gcalloc.mspan import MSpan
from gcalloc.sizeclasses import (
    MAX_SMALL_SIZE,
    PAGE_SHIFT,
    class_to_allocnpages,
    class_to_size,
    make_span_class,
    round_up_size,
    size_to_class,
)

if TYPE_CHECKING:
    from gcalloc.malloc import Allocator
    from gcalloc.mcache import MCache

# A batch's spans hold up to this many pages (a whole multiple of the class's own span size,
# whose nelems they multiply): the per-span Python of the page heap then costs a few ns per
# object instead of ~30 us per 8 KiB span.
BATCH_SPAN_PAGES = 64


def carve(allocator: Allocator, c: MCache, size: int, n: int, noscan: bool
          ) -> tuple[np.ndarray, list[MSpan], int, bool]:
    """At a safepoint of the calling thread (mcache c): allocate n zeroed objects of
    ``size`` (> 0) bytes. Returns (addresses, their spans, the element size, whether the
    pacer says the heap reached its goal)."""
    nbytes = n * (round_up_size(size) if size > MAX_SMALL_SIZE or allocator.efence
                  else class_to_size[size_to_class(size)])
    if nbytes > MAX_HEAP_BYTES - allocator.stats.heap_sys.value:
        # Up front: a batch the heap can never hold fails before anything is carved.
        raise OutOfMemory(f"alloc_many: {n} objects of {size} bytes exceed the heap's "
                          f"{MAX_HEAP_BYTES:#x} bytes")
    if size > MAX_SMALL_SIZE or allocator.efence:    # efence: a span per object
        return _carve_large(allocator, c, size, n, noscan)
    sizeclass = size_to_class(size)
    spc = int(make_span_class(sizeclass, noscan))
    elemsize = class_to_size[sizeclass]
    unit = class_to_allocnpages[sizeclass]
    per_unit = (unit << PAGE_SHIFT) // elemsize
    units = -(-n // per_unit)              # class-sized spans Go would take
    k = max(1, min(units, BATCH_SPAN_PAGES // unit))
    mheap = allocator.mheap
    spans = mheap.alloc_spans(unit * k, spc, units // k, needzero=True)
    if units % k:       # the rest in one smaller span, adjacent or not
        try:
            spans += mheap.alloc_spans(unit * (units % k), spc, 1, needzero=True)
        except BaseException:
            for s in spans:     # the first call's spans hold nothing yet: back to the heap
                mheap.free_span(s)
            raise
    for s in spans:
        s.freeindex = s.allocCount = s.nelems
        s.allocCache = 0
    last = spans[-1]
    used_last = n - sum(s.nelems for s in spans[:-1])
    last.freeindex = last.allocCount = used_last
    if used_last < last.nelems:
        last.allocCache = (1 << 64) - 1 >> (used_last & 63)
    central = allocator.central[spc]
    with central.lock:
        sg = mheap.sweepgen
        full = central.swept_set(sg, full=True)
        for s in spans:
            s.sweepgen = sg
            full[s.id] = s
            s.central_set = full
        if used_last < last.nelems:
            del full[last.id]
            central.push(central.swept_set(sg, full=False), last)
        allocator.stats.small_alloc_count[spc] += n
    # Span base + slot * elemsize for every slot used, written in place: the full spans as
    # one (spans, nelems) grid, then the last span's used slots.
    addrs = np.empty(n, np.uint64)
    per = spans[0].nelems
    slots = np.arange(per, dtype=np.uint64) * np.uint64(elemsize)
    nfull = len(spans) - 1
    if nfull:
        bases = np.fromiter((s.base for s in spans[:-1]), np.uint64, nfull)
        np.add(bases[:, None], slots[None, :], out=addrs[:nfull * per].reshape(nfull, per))
    np.add(np.uint64(last.base), slots[:used_last], out=addrs[nfull * per:])
    due = allocator.hooks.charge_live(n * elemsize)
    _after(allocator, c, addrs, elemsize)
    return addrs, spans, elemsize, due


def _carve_large(allocator: Allocator, c: MCache, size: int, n: int, noscan: bool
                 ) -> tuple[np.ndarray, list[MSpan], int, bool]:
    """A span per object (Go's largeAlloc), with no collection until all are rooted."""
    if size <= MAX_SMALL_SIZE:
        size = class_to_size[size_to_class(size)]   # efence: what alloc's slow path takes
    npages = (size + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT
    spc = make_span_class(0, noscan)
    mheap = allocator.mheap
    spans = []
    for _ in range(n):
        s = mheap.alloc(npages, spc, needzero=True)
        s.freeindex = 1
        s.allocCount = 1
        spans.append(s)
    with mheap.lock:
        for s in spans:
            mheap.table.mark_dirty(s)
    elemsize = npages << PAGE_SHIFT
    addrs = np.fromiter((s.base for s in spans), np.uint64, n)
    due = allocator.hooks.charge_live(n * elemsize)
    _after(allocator, c, addrs, elemsize)
    return addrs, spans, elemsize, due


def _after(allocator: Allocator, c: MCache, addrs: np.ndarray, elemsize: int) -> None:
    """Sampling and allocate-black for a batch, as if its objects came one by one."""
    n = len(addrs)
    k = 0
    while True:
        # The object at which the countdown crosses zero: it is sampled and restarts it.
        j = k + max(c.next_sample, 0) // elemsize
        if j >= n:
            c.next_sample -= (n - k) * elemsize
            break
        allocator._sampled(c, int(addrs[j]), elemsize)
        k = j + 1
    marking = allocator.marking
    if marking is not None:
        for p in addrs.tolist():
            marking.allocated_black(p)
