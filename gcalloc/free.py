"""Explicit free and lookup of a heap address (gccgo's __go_free and mlookup, Go's findObject).

Functions of the Allocator, kept apart from the allocation paths: they read a span's bits to
decide what an address is, where allocation only hands out slots. The Allocator's ``free``,
``lookup`` and ``usable_size`` (malloc.py) check the address and enter the safepoint, then
call the ``*_at_safepoint`` / ``*_in_region`` functions here, so a call goes down through
this module and never back up to malloc.py; ``find_object`` and ``release_large_span`` are
bound as Allocator methods as they are.

``free`` returns a small object's slot to its span or a large span to the page heap. It
validates everything first and raises without changing anything: NotHeapPointer,
InteriorPointer, DoubleFree, TinyObjectFree. A slot of a span another thread has cached is
not touched (that thread allocates from it without a lock): the free is recorded in the
span's ``pending_frees`` and applied when the span is given back.

Every address goes through ``mheap.span_of_heap`` (the one test of "inside an in-use
span's objects") and, for small spans, through ``find_object``'s or ``_free_small``'s checks
of the span's alloc bits, its unhanded run and its pending frees.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from gcalloc import os as gos
from gcalloc.errors import (
    DoubleFree,
    InteriorPointer,
    InvalidArgument,
    NotHeapPointer,
    SysMemoryError,
    TinyObjectFree,
)
from gcalloc.mspan import SPAN_IN_USE, MSpan
from gcalloc.sizeclasses import PAGE_SHIFT

if TYPE_CHECKING:
    from gcalloc.malloc import Allocator
    from gcalloc.mcache import MCache
    from gcalloc.mcentral import MCentral


def free_at_safepoint(a: Allocator, c: MCache, p: int) -> None:
    """Free the object starting at p (gccgo's __go_free; see Heap.free). The caller,
    ``Allocator.free``, has checked p, skipped 0 and the zerobase and entered the safepoint
    with the thread's mcache c; it leaves the safepoint whatever this raises."""
    s = _span_for_free(a, p)
    a.hooks.ensure_swept(s)
    if s.sizeclass == 0:
        _free_large(a, s, p)
    else:
        _free_small(a, c, s, p)


def lookup_in_region(a: Allocator, p: int) -> tuple[int, int] | None:
    """(base, size) of the object holding p, or None (gccgo's mlookup). The caller,
    ``Allocator.lookup``, holds a safepoint region."""
    a.stats.lookups += 1
    found = find_object(a, p)
    if found is None:
        return None
    s, idx = found
    return s.base + idx * s.elemsize, s.elemsize


def _span_for_free(a: Allocator, p: int) -> MSpan:
    a.check_open()
    s = a.mheap.span_of_heap(p)
    if s is None:
        raise NotHeapPointer(f"free of {p:#x}: not an object of this heap", p)
    return s


def _free_large(a: Allocator, s: MSpan, p: int) -> None:
    with a.mheap.lock:
        if s.state != SPAN_IN_USE or s.allocCount != 1:
            raise DoubleFree(f"free of {p:#x}: large object already freed", p)
        if p != s.base:
            raise InteriorPointer(f"free of {p:#x}: inside the object at {s.base:#x}", p)
        s.allocCount = 0
    a.hooks.on_free(s, 0, s.npages << PAGE_SHIFT)
    release_large_span(a, s)


def release_large_span(a: Allocator, s: MSpan) -> None:
    """A large span whose object is dead goes back to the page heap; under efence its
    pages are made inaccessible instead and the span is never used again. If the OS
    refuses to make them inaccessible, the span goes back to the page heap as without
    efence (counted in ``efence_unprotected``): the free completes and the heap stays
    valid, but a use after free of that object is not caught."""
    if not a.efence:
        a.mheap.free_span(s)
        return
    try:
        gos.sys_fault(s.base, s.npages << PAGE_SHIFT)
    except SysMemoryError:
        a.efence_unprotected += 1
        a.mheap.free_span(s)
        return
    s.faulted = True
    with a.mheap.lock:
        a.stats.large_free += s.npages << PAGE_SHIFT
        a.stats.large_free_count += 1


def _free_small(a: Allocator, c: MCache, s: MSpan, p: int) -> None:
    central = a.central[s.spanclass]
    gcbits = a.mheap.gcbits
    with central.lock:
        if s.state != SPAN_IN_USE or s.spanclass != central.spanclass:
            raise NotHeapPointer(f"free of {p:#x}: not an object of this heap", p)
        if s.cached_by is c:
            c.give_back_run(s.run_index, gcbits.bits64)
        elif s.cached_by is not None and in_unused_run(s, p):
            raise DoubleFree(f"free of {p:#x}: object was never handed out", p)
        idx = s.object_index(p)
        base = s.base + idx * s.elemsize
        if s.tiny_blocks is not None and idx in s.tiny_blocks:
            raise TinyObjectFree(f"free of {p:#x}: inside a shared 16-byte tiny block", p)
        if p != base:
            raise InteriorPointer(f"free of {p:#x}: inside the object at {base:#x}", p)
        if s.is_free(gcbits.bits8, idx) or (s.pending_frees and idx in s.pending_frees):
            raise DoubleFree(f"free of {p:#x}: object already freed", p)
        # A slot freed into a span this thread caches stays charged to the pacer: refill
        # charged it, and the thread hands it out again (or release_all refunds it) without
        # a new charge. Every other slot stops being counted now (gc/pacer.py).
        a.hooks.on_free(s, idx, 0 if s.cached_by is c else s.elemsize)
        a.stats.small_free_count[s.spanclass] += 1
        if s.cached_by is not None and s.cached_by is not c:
            # Another thread allocates from this span without a lock: let it apply the
            # free when it gives the span back.
            if s.pending_frees is None:
                s.pending_frees = []
            s.pending_frees.append(idx)
            return
        was_full = s.allocCount == s.nelems
        s.free_slot(gcbits.bits8, gcbits.bits64, idx)
        if s.cached_by is None:
            _refile_after_free(a, central, s, was_full)
        else:
            # refill counted the span's free slots as allocated; this one is free again
            # and will be counted when the thread allocates it.
            a.stats.small_alloc_count[s.spanclass] += 1


def in_unused_run(s: MSpan, p: int) -> bool:
    """Whether p is a slot of s's run not handed out yet (s cached by some mcache)."""
    c = s.cached_by
    left = c.run_left(s) if c is not None else 0
    return left > 0 and s.run_end - left * s.elemsize <= p < s.run_end


def _refile_after_free(a: Allocator, central: MCentral, s: MSpan, was_full: bool) -> None:
    """Keep an uncached span in the right central set after one of its slots was freed."""
    if central.release_if_empty(s):
        return
    if not was_full:
        return
    sg = a.mheap.sweepgen
    if s.central_set is central.full_swept(sg):
        central.remove(s)
        central.push(central.partial_swept(sg), s)
    elif s.central_set is central.full_unswept(sg):
        central.remove(s)
        central.push(central.partial_unswept(sg), s)


def check_addr(p: object) -> int:
    if isinstance(p, bool):
        raise InvalidArgument("address must be an integer, not bool")
    try:
        return operator.index(p)  # type: ignore[arg-type]  # TypeError is the check
    except TypeError:
        raise InvalidArgument(f"address must be an integer, not {type(p).__name__}") from None


def find_object(a: Allocator, p: int) -> tuple[MSpan, int] | None:
    """(span, slot) of the allocated object holding address p, or None (findObject)."""
    s = a.mheap.span_of_heap(p)
    if s is None:
        return None
    if s.sizeclass == 0:
        return (s, 0) if s.allocCount else None
    if s.cached_by is not None and in_unused_run(s, p):
        return None    # reserved by an mcache, not yet handed out
    idx = s.object_index(p)
    if s.is_free(a.mheap.gcbits.bits8, idx):
        return None
    if s.pending_frees and idx in s.pending_frees:
        return None
    return s, idx


def usable_size_in_region(a: Allocator, p: int) -> int:
    """Bytes usable at object start p (its size class or page-rounded large size). The
    caller, ``Allocator.usable_size``, has checked p and holds a safepoint region."""
    if p == a.zerobase:
        return 0
    found = find_object(a, p)
    if found is None:
        raise NotHeapPointer(f"{p:#x} is not an allocated object of this heap", p)
    s, idx = found
    base = s.base + idx * s.elemsize
    if p != base:
        raise InteriorPointer(f"{p:#x} is inside the object at {base:#x}", p)
    return s.elemsize
