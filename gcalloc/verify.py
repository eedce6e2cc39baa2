"""Allocator invariants, checked on demand (``Heap.verify``): Go's checks scattered through
mheap.go/mcentral.go/mbitmap.go, gathered so a test or GCALLOC_DEBUG=verify=1 can run them all.

Each ``*_problems`` function returns readable descriptions of what is wrong (empty if all is
well); ``Allocator.verify`` raises HeapCorruption with them. Call with no other thread
allocating: the checks read per-thread state.
"""

from __future__ import annotations

from operator import length_hint

import numpy as np

from gcalloc.mcache import EMPTY_SPAN, MCache
from gcalloc.mcentral import MCentral
from gcalloc.mspan import MASK64, MSpan
from gcalloc.sizeclasses import PAGE_SHIFT, TINY_SIZE


def alloc_bits(bits8: np.ndarray, s: MSpan) -> list[int]:
    raw = bits8[s.allocBits:s.allocBits + ((s.nelems + 63) >> 6) * 8]
    return [int(x) for x in np.unpackbits(raw, bitorder="little")[:s.nelems]]


def span_problems(alloc, s: MSpan) -> list[str]:
    """allocCount agrees with the allocation state, allocCache with allocBits, no slot on
    two lists, the span filed in exactly one place, tiny bookkeeping sane."""
    if s.sizeclass == 0:
        ok = (s.allocCount == (0 if s.faulted else 1)
              and s.limit <= s.base + (s.npages << PAGE_SHIFT))
        return [] if ok else [f"large span in a bad state: {s!r}"]
    bits8 = alloc.mheap.gcbits.bits8
    bits = alloc_bits(bits8, s)
    counted = s.freeindex + sum(bits[s.freeindex:])
    out = []
    if counted != s.allocCount:
        out.append(f"allocCount {s.allocCount} != allocated slots {counted}: {s!r}")
    if s.freeindex < s.nelems and s.cached_by is not None:
        word_start = s.freeindex & ~63
        word = 0
        for i, b in enumerate(bits[word_start:word_start + 64]):
            word |= b << i
        want = (~word & MASK64) >> (s.freeindex & 63)
        if s.allocCache != want:
            out.append(f"allocCache disagrees with allocBits: {s!r}")
    if s.tiny_blocks:
        if s.spanclass != alloc.TINY_SPAN_CLASS:
            out.append(f"tiny blocks in a non-tiny span: {s!r}")
        elif any(s.is_free(bits8, i) for i in s.tiny_blocks):
            out.append(f"a tiny block is marked free: {s!r}")
    if (s.cached_by is None) == (s.central_set is None):
        out.append(f"span is cached and in a central set, or neither: {s!r}")
    out.extend(slot_list_problems(s, bits))
    return out


def slot_list_problems(s: MSpan, bits: list[int]) -> list[str]:
    """No slot on two lists: the reserved run, the pending frees, the tiny blocks and the free
    slots are disjoint, and a run is where the mspan module comment says it is."""
    out = []
    run: set[int] = set()
    if s.run_end:
        c = s.cached_by
        if c is None:
            out.append(f"uncached span holds a reserved run: {s!r}")
        else:
            left = c.run_left(s)
            if s.run_end != s.base + s.freeindex * s.elemsize or left > s.freeindex:
                out.append(f"reserved run ending {s.run_end:#x} out of place: {s!r}")
            else:
                run = set(range(s.freeindex - left, s.freeindex))
    pending = s.pending_frees or []
    if pending and s.cached_by is None:
        out.append(f"uncached span has pending frees: {s!r}")
    if len(set(pending)) != len(pending):
        out.append(f"a slot is queued twice in pending frees: {s!r}")
    tiny = s.tiny_blocks or set()
    for idx in pending:
        if not (0 <= idx < s.nelems) or (idx >= s.freeindex and not bits[idx]):
            out.append(f"pending free of a free slot {idx}: {s!r}")
        elif idx in run or idx in tiny:
            out.append(f"pending free of slot {idx} in the run or a tiny block: {s!r}")
    if run & tiny:
        out.append(f"a tiny block is in the reserved run: {s!r}")
    return out


def mcache_problems(alloc, c: MCache) -> list[str]:
    out = []
    for spc, s in enumerate(c.alloc):
        if s is not EMPTY_SPAN and (s.cached_by is not c or s.run_index != spc
                                    or s.spanclass != alloc.span_class_of(spc)):
            out.append(f"mcache holds a span it does not own: {s!r}")
        if s is EMPTY_SPAN and length_hint(c.runs[spc]):
            out.append(f"mcache has a run for an empty span class {spc}")
    if c.tiny:
        found = alloc.find_object(c.tiny)
        if (found is None or found[0].spanclass != alloc.TINY_SPAN_CLASS
                or not found[0].tiny_blocks or found[1] not in found[0].tiny_blocks
                or c.tiny != found[0].base + found[1] * TINY_SIZE):
            out.append(f"mcache tiny block {c.tiny:#x} is not a live tiny block")
        elif not 0 <= c.tinyoffset <= TINY_SIZE:
            out.append(f"tinyoffset {c.tinyoffset} out of range")
    return out


def central_problems(central: MCentral) -> list[str]:
    out = []
    with central.lock:
        for spans in central.partial + central.full:
            for s in spans.values():
                if s.central_set is not spans or s.spanclass != central.spanclass:
                    out.append(f"mcentral set holds a span filed elsewhere: {s!r}")
                if s.cached_by is not None:
                    out.append(f"cached span in an mcentral set: {s!r}")
        for spans in central.full:
            for s in spans.values():
                if s.allocCount != s.nelems:
                    out.append(f"span with free slots in a full set: {s!r}")
    return out


def sweep_problems(alloc, s: MSpan) -> list[str]:
    """A span's sweepgen is one the protocol allows (gc/sweep.py). A faulted (efence) span is
    outside the protocol: no cycle marks or sweeps it again, so its sweepgen stays old."""
    if s.faulted:
        return []
    sg = alloc.mheap.sweepgen
    allowed = (sg - 2, sg, sg + 1, sg + 3) if s.cached_by is not None else (sg - 2, sg)
    if s.sweepgen not in allowed:
        return [f"sweepgen {s.sweepgen} not allowed with h.sweepgen {sg}: {s!r}"]
    return []
