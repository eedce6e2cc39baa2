"""persistentalloc and linearAlloc: off-heap metadata memory (Go 1.16 malloc.go).

Heap metadata that C or numpy must read as plain memory — heap bitmaps, gcBits arenas, the
arrays mirroring span fields, other runtime tables — lives here, in real memory the OS layer
mapped, never in the Python heap and never in the GC'd heap. Nothing here is ever freed piece
by piece; a whole allocator is released when its Heap closes.

PersistentAlloc (Go's persistentalloc): a bump allocator over 256 KiB chunks obtained with
sys_alloc and charged to ``other_sys``. A request of 64 KiB or more gets its own sys_alloc
mapping charged directly to the caller's stat. When a small request names a stat other than
other_sys, its bytes move from other_sys to that stat (Go: ``stat.add(size);
other_sys.add(-size)``), so MemStats says which table the chunk bytes went to. Each Heap owns
one PersistentAlloc and every mapping is recorded, so ``release_all`` can hand all of them back
to the OS and ``in_persistent_alloc`` can answer by binary search.

LinearAlloc (Go's linearAlloc): a bump allocator over one region the owner already reserved
(sys_reserve). Pages go Reserved -> Prepared -> Ready (sys_map + sys_used, charged to the
caller's stat) only as the bump pointer reaches them, so a large reservation — e.g. room for
every heap bitmap or gcBits arena the heap might need, so that one numpy view covers them all —
costs memory only as it is used.

Memory handed out by either is zero (fresh OS mappings, never reused).
"""

from __future__ import annotations

import bisect
import threading

from gcalloc import os as gos
from gcalloc.errors import (
    HeapCorruption,
    InvalidAlignment,
    InvalidSize,
    OutOfMemory,
    SysMemoryError,
)
from gcalloc.os import SysMemStat

PERSISTENT_CHUNK_SIZE = 256 << 10
"""Go's persistentChunkSize: the unit persistentalloc takes from the OS."""
PERSISTENT_MAX_BLOCK = 64 << 10
"""Go's maxBlock: requests this large or larger get their own mapping."""
PAGE_SIZE = 8192
"""Go's _PageSize: the largest alignment persistentalloc accepts."""
DEFAULT_ALIGN = 8


def align_up(n: int, align: int) -> int:
    """Round ``n`` up to a multiple of ``align`` (a power of two)."""
    return (n + align - 1) & -align


def _check_size(size: int, who: str) -> None:
    if size <= 0:
        raise InvalidSize(f"{who}: size must be > 0, got {size}")


def _check_align(align: int, limit: int | None, who: str) -> int:
    """Validate ``align`` and return it, with 0 meaning the default of 8."""
    if align == 0:
        return DEFAULT_ALIGN
    if align < 0 or align & (align - 1):
        raise InvalidAlignment(f"{who}: align {align} is not a power of 2")
    if limit is not None and align > limit:
        raise InvalidAlignment(f"{who}: align {align} is larger than {limit}")
    return align


class PersistentAlloc:
    """Per-heap persistentalloc. Thread-safe: one lock (Go has one per P plus a global one)."""

    def __init__(self, other_sys: SysMemStat) -> None:
        self.other_sys = other_sys
        self._lock = threading.Lock()
        # Current chunk. Invariant: _base == 0 (no chunk yet) or _base is the start of a
        # PERSISTENT_CHUNK_SIZE mapping in _mappings and 0 <= _off <= PERSISTENT_CHUNK_SIZE.
        self._base = 0
        self._off = 0
        # Every live mapping (chunks and large blocks) by base: base -> (size, stat charged).
        # Invariant: each one was sys_alloc'd by us, charged to its stat, and not yet freed.
        self._mappings: dict[int, tuple[int, SysMemStat]] = {}
        # Sorted (starts, ends) of _mappings, replaced as a whole (copy on write) so that
        # in_persistent_alloc can read it without the lock.
        self._index: tuple[list[int], list[int]] = ([], [])
        # Bytes moved from other_sys to each named stat: id(stat) -> [stat, bytes].
        self._moved: dict[int, list] = {}

    # --- allocation --------------------------------------------------------------------------

    def alloc(self, size: int, align: int = 0, stat: SysMemStat | None = None) -> int:
        """Return the address of ``size`` zeroed bytes aligned to ``align`` (0 means 8).

        ``align`` must be a power of two <= 8192. ``stat`` names the MemStats counter charged
        (None: other_sys). Raises InvalidSize, InvalidAlignment, or OutOfMemory when the OS
        refuses memory; on any error nothing has changed.
        """
        _check_size(size, "persistentalloc")
        align = _check_align(align, PAGE_SIZE, "persistentalloc")
        if size >= PERSISTENT_MAX_BLOCK:
            return self._alloc_large(size, align, stat)
        with self._lock:
            p = self._bump(size, align)
            if stat is not None and stat is not self.other_sys:
                self._move(stat, size)
            return p

    def _bump(self, size: int, align: int) -> int:
        """Carve ``size`` bytes from the current chunk, mapping a new chunk if it is full."""
        if self._base:
            p = align_up(self._base + self._off, align)
            if p + size <= self._base + PERSISTENT_CHUNK_SIZE:
                self._off = p + size - self._base
                return p
        base = gos.sys_alloc(PERSISTENT_CHUNK_SIZE, self.other_sys)
        if base is None:
            raise OutOfMemory("runtime: cannot allocate memory (persistentalloc chunk)")
        self._record(base, PERSISTENT_CHUNK_SIZE, self.other_sys)
        # The old chunk's tail is abandoned, as in Go; it stays mapped until release_all.
        self._base = base
        p = align_up(base, align)  # a size < 64 KiB always fits after <= 8 KiB of padding
        self._off = p + size - base
        return p

    def _alloc_large(self, size: int, align: int, stat: SysMemStat | None) -> int:
        """A block of its own, rounded to OS pages and charged directly to ``stat``."""
        stat = stat if stat is not None else self.other_sys
        n = align_up(size, gos.phys_page_size)  # what the OS really maps, so sys_free can too
        if align > gos.alloc_granularity:
            # The OS only promises alloc_granularity; over-map so an aligned start fits.
            n += align - gos.alloc_granularity
        with self._lock:
            base = gos.sys_alloc(n, stat)
            if base is None:
                raise OutOfMemory(f"runtime: cannot allocate memory ({size} bytes)")
            self._record(base, n, stat)
            return align_up(base, align)

    def _move(self, stat: SysMemStat, size: int) -> None:
        """Charge ``size`` chunk bytes to ``stat`` instead of other_sys (Go does the same)."""
        stat.add(size)
        self.other_sys.sub(size)
        entry = self._moved.get(id(stat))
        if entry is None:
            self._moved[id(stat)] = [stat, size]
        else:
            entry[1] += size

    def _record(self, base: int, n: int, stat: SysMemStat) -> None:
        self._mappings[base] = (n, stat)
        self._rebuild_index()

    def _rebuild_index(self) -> None:
        starts = sorted(self._mappings)
        self._index = (starts, [b + self._mappings[b][0] for b in starts])

    # --- queries -----------------------------------------------------------------------------

    def in_persistent_alloc(self, p: int) -> bool:
        """Report whether ``p`` lies in a chunk or large block of this allocator."""
        starts, ends = self._index  # one read of a snapshot: no lock needed
        i = bisect.bisect_right(starts, p) - 1
        return i >= 0 and p < ends[i]

    def mappings(self) -> list[tuple[int, int]]:
        """(base, size) of every live mapping, sorted by base."""
        starts, ends = self._index
        return [(b, e - b) for b, e in zip(starts, ends, strict=True)]

    @property
    def mapped_bytes(self) -> int:
        """Bytes this allocator currently holds from the OS."""
        with self._lock:
            return sum(n for n, _ in self._mappings.values())

    # --- teardown ----------------------------------------------------------------------------

    def release_all(self) -> None:
        """sys_free every chunk and large block and undo every stat change alloc made.

        Afterwards ``other_sys`` and every stat passed to alloc are lower by exactly what this
        allocator added, so a counter fed only by this allocator is back to 0: chunk bytes
        moved to a named stat go back to other_sys, then freeing the chunks takes them off
        other_sys, and freeing a large block takes it off the stat it was charged to. The
        allocator is empty and usable again. If the OS refuses a sys_free, that mapping stays
        recorded (and charged), the others are still freed, and the first error is raised.
        """
        with self._lock:
            for stat, moved in self._moved.values():
                stat.sub(moved)
                self.other_sys.add(moved)
            self._moved.clear()
            self._base = self._off = 0
            first_error: SysMemoryError | None = None
            for base, (n, stat) in list(self._mappings.items()):
                try:
                    gos.sys_free(base, n, stat)
                except SysMemoryError as e:
                    first_error = first_error or e
                    continue
                del self._mappings[base]
            self._rebuild_index()
        if first_error is not None:
            raise first_error


class LinearAlloc:
    """Bump allocator over a region the owner reserved. The caller holds the owner's lock.

    Invariants (at every return): ``base <= next <= mapped <= end``; ``base``, ``mapped`` and
    ``end`` are multiples of the physical page size; ``[base, mapped)`` is Ready and (when
    ``map_memory``) was charged to the stats passed to alloc; ``[mapped, end)`` is Reserved.
    """

    __slots__ = ("base", "next", "mapped", "end", "map_memory")

    def __init__(self, base: int, size: int, map_memory: bool = True) -> None:
        """Manage ``[base, base+size)``, already reserved by the caller.

        ``map_memory=False`` is for a region the caller has already made Ready (and accounted):
        the allocator then only bumps. ``base`` and ``size`` must be multiples of the
        physical page size.
        """
        page = gos.phys_page_size
        if base <= 0 or base % page:
            raise InvalidAlignment(f"linearAlloc: base {base:#x} is not page-aligned")
        if size <= 0 or size % page:
            raise InvalidSize(f"linearAlloc: size {size:#x} is not a positive page multiple")
        self.base = base
        self.next = base     # next free byte
        self.mapped = base   # one byte past the end of the Ready part
        self.end = base + size  # end of the reserved region
        self.map_memory = map_memory

    @property
    def mapped_bytes(self) -> int:
        """Bytes of the region made Ready so far."""
        return self.mapped - self.base

    def alloc(self, size: int, align: int = 0, stat: SysMemStat | None = None) -> int | None:
        """Return ``size`` zeroed bytes aligned to ``align`` (0 means 8), or None if the region
        is exhausted (nothing changes; the caller decides what to do).

        Pages reached for the first time are mapped and charged to ``stat``. Raises
        InvalidSize / InvalidAlignment for bad arguments and OutOfMemory if the OS refuses to
        map; on any error nothing has changed.
        """
        _check_size(size, "linearAlloc")
        align = _check_align(align, None, "linearAlloc")
        p = align_up(self.next, align)
        if p + size > self.end:
            return None
        nxt = p + size
        # Map through the page holding the last byte (Go rounds next-1, which misses that
        # page when the last byte starts one; rounding next up is the same otherwise).
        pend = align_up(nxt, gos.phys_page_size)
        if pend > self.mapped:
            if self.map_memory:
                self._map(self.mapped, pend - self.mapped, stat)
            self.mapped = pend
        self.next = nxt
        return p

    def rewind(self, nxt: int) -> None:
        """Hand ``[nxt, next)`` out again: the owner undoes allocations it made since ``next``
        was ``nxt`` and wrote nothing into. The pages stay Ready and charged (still zero)."""
        if not self.base <= nxt <= self.next:
            raise HeapCorruption(f"linearAlloc: rewind to {nxt:#x} outside [base, next]")
        self.next = nxt

    def _map(self, v: int, n: int, stat: SysMemStat | None) -> None:
        """Reserved -> Prepared -> Ready, undoing the first step if the second fails."""
        try:
            gos.sys_map(v, n, stat)
        except SysMemoryError as e:
            raise OutOfMemory(f"linearAlloc: cannot map {n:#x} bytes at {v:#x}: {e}") from e
        try:
            gos.sys_used(v, n)
        except SysMemoryError as e:
            try:
                gos.sys_fault(v, n)  # back to Reserved: the pages must not stay accessible
            except SysMemoryError as e2:
                raise HeapCorruption(f"linearAlloc: cannot unmap {v:#x} after {e}") from e2
            if stat is not None:
                stat.sub(n)
            raise OutOfMemory(f"linearAlloc: cannot use {n:#x} bytes at {v:#x}: {e}") from e

    def release(self, stat: SysMemStat | None) -> None:
        """sys_free the whole region and take the mapped bytes off ``stat`` (the stat passed to
        alloc). For owners that hand the region to this allocator for good; afterwards every
        alloc returns None. A second call does nothing.
        """
        if self.end == self.base:
            return
        gos.sys_free(self.base, self.end - self.base, None)
        if self.map_memory and stat is not None:
            stat.sub(self.mapped - self.base)
        self.next = self.mapped = self.end = self.base
