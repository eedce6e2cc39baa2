"""Heap arenas: the address space the heap grows into, and the metadata kept per arena
(Go 1.16 malloc.go's heapArena, arena index, arena hints and sysAlloc).

The heap is made of arenas of ``HEAP_ARENA_BYTES`` (64 MiB, 4 MiB on Windows), each aligned to
its size. Every arena gets a slot number in order of creation; its metadata lives at that slot
in two regions reserved once per heap and mapped on demand (linearAlloc), so that one numpy
view covers the metadata of every arena:

- ``page_span``: int32 per heap page, the id of the span owning the page (0: none). Exact for
  every page of every span, in use or free.
- ``bitmap``: the heap bitmap, 2 bits per word (4 words per byte: pointer bits in the low
  nibble, scan bits in the high nibble, as Go 1.16 lays it out), written by the GC layer.

The arena index maps an address to its arena slot through an L1/L2 table keyed by
``(addr - arenaBaseOffset) >> logHeapArenaBytes``; on amd64 the offset makes every 48-bit
address, low or high half, a valid index. L2 tables are int32 arrays (slot + 1; 0 means "not
heap") in persistentalloc memory, so numpy resolves a whole array of candidate pointers at once.

Invariants:
- an arena's slot, bitmap and page map never move until the heap closes;
- ``page_span`` entries of an arena are 0 until a span covers the page;
- regions handed out by ``sys_alloc`` are aligned to HEAP_ARENA_BYTES, Prepared (mapped and
  counted in heap_sys) and covered by arena metadata;
- ``sys_alloc`` is all or nothing: when an OS call fails, the reservation, hints, slots, L2
  entries and metadata bump pointers are restored before the error propagates.
"""

from __future__ import annotations

import platform

import numpy as np

from gcalloc import os as gos
from gcalloc.errors import HeapCorruption, OutOfMemory, SysMemoryError
from gcalloc.gcbits import whole_region_view
from gcalloc.mstats import HeapStats
from gcalloc.persistent import LinearAlloc, PersistentAlloc
from gcalloc.sizeclasses import PAGE_SHIFT

PTR_SIZE = 8
HEAP_ADDR_BITS = 48
LOG_HEAP_ARENA_BYTES = 22 if gos.goos == "windows" else 26
HEAP_ARENA_BYTES = 1 << LOG_HEAP_ARENA_BYTES
PAGES_PER_ARENA = HEAP_ARENA_BYTES >> PAGE_SHIFT
HEAP_ARENA_BITMAP_BYTES = HEAP_ARENA_BYTES // (PTR_SIZE * 8 // 2)
ARENA_L1_BITS = 6 if gos.goos == "windows" else 0
ARENA_L2_BITS = HEAP_ADDR_BITS - LOG_HEAP_ARENA_BYTES - ARENA_L1_BITS
ARENA_BITS = ARENA_L1_BITS + ARENA_L2_BITS

MACHINE = platform.machine().lower()
IS_ARM64 = MACHINE in ("arm64", "aarch64")
IS_AMD64 = MACHINE in ("x86_64", "amd64")
ARENA_BASE_OFFSET = 0xFFFF800000000000 if IS_AMD64 else 0
MASK64 = (1 << 64) - 1

# The most heap one Heap can grow to: it sizes the metadata regions reserved (address space
# only) at start. 128 GiB reserves 4 GiB for bitmaps and 64 MiB for page maps.
MAX_HEAP_BYTES = 128 << 30
MAX_ARENAS = MAX_HEAP_BYTES // HEAP_ARENA_BYTES


def arena_index(p: int) -> int:
    return ((p - ARENA_BASE_OFFSET) & MASK64) >> LOG_HEAP_ARENA_BYTES


def arena_base(ri: int) -> int:
    return ((ri << LOG_HEAP_ARENA_BYTES) + ARENA_BASE_OFFSET) & MASK64


def initial_hints() -> list[ArenaHint]:
    """Go's hint series, highest first so 0x00c0<<32 is tried first (Go 1.16 malloc.go)."""
    hints = []
    for i in range(0x7F, -1, -1):
        if IS_ARM64:
            p = i << 40 | 0x0040 << 32
        else:
            p = i << 40 | 0x00C0 << 32
        hints.append(ArenaHint(p, down=False))
    return hints  # used as a stack: hints[-1] is next


class ArenaHint:
    """Where to try to grow the heap next. ``down``: grow below addr instead of above."""

    __slots__ = ("addr", "down")

    def __init__(self, addr: int, down: bool) -> None:
        self.addr = addr
        self.down = down


class HeapArena:
    """Metadata of one arena (Go's heapArena)."""

    __slots__ = ("base", "slot", "bitmap_off", "pages_off")

    def __init__(self, base: int, slot: int) -> None:
        self.base = base                                   # HEAP_ARENA_BYTES-aligned
        self.slot = slot                                   # creation order, from 0
        self.bitmap_off = slot * HEAP_ARENA_BITMAP_BYTES   # into Arenas.bitmap
        self.pages_off = slot * PAGES_PER_ARENA            # into Arenas.page_span


class Arenas:
    """The arenas of one heap: index, hints, metadata regions, and the reservations."""

    def __init__(self, stats: HeapStats, persistent: PersistentAlloc) -> None:
        self._stats = stats
        self._persistent = persistent
        self.hints = initial_hints()
        self.all: list[HeapArena] = []          # by slot
        self.reservations: list[tuple[int, int]] = []  # (base, size) regions mapped for heap
        self.l1: list[np.ndarray | None] = [None] * (1 << ARENA_L1_BITS)
        self._bitmap_region = self._reserve_metadata(MAX_ARENAS * HEAP_ARENA_BITMAP_BYTES)
        try:
            self._pages_region = self._reserve_metadata(MAX_ARENAS * PAGES_PER_ARENA * 4)
        except BaseException:
            self._bitmap_region.release(None)   # nothing mapped in it yet
            raise
        self.bitmap = whole_region_view(self._bitmap_region.base, self._bitmap_region.end
                                        - self._bitmap_region.base, np.uint8)
        self.page_span = whole_region_view(self._pages_region.base, self._pages_region.end
                                           - self._pages_region.base, np.int32)
        # Regions an undo could not give back (the OS refused the unmap): freed at release.
        self._orphans: list[tuple[int, int]] = []

    @staticmethod
    def _reserve_metadata(size: int) -> LinearAlloc:
        base = gos.sys_reserve(None, size)
        if base is None:
            raise OutOfMemory(f"cannot reserve {size:#x} bytes of arena metadata space")
        return LinearAlloc(base, size)

    # --- lookup ------------------------------------------------------------------------

    def arena_of(self, p: int) -> HeapArena | None:
        # Fix: arena_index masks to 64 bits, so p >= 2**64 (or < 0) aliased a heap address
        # and page_index then indexed page_span far out of bounds (IndexError from
        # Heap.lookup/free). Such a p is not a machine address: it is never in the heap.
        if not 0 <= p <= MASK64:
            return None
        ri = arena_index(p)
        if ri >> ARENA_BITS:
            return None
        l2 = self.l1[ri >> ARENA_L2_BITS]
        if l2 is None:
            return None
        slot = int(l2[ri & ((1 << ARENA_L2_BITS) - 1)])
        return self.all[slot - 1] if slot else None

    def page_index(self, p: int) -> int:
        """Index into page_span of the page holding p, or -1 if p is not in an arena."""
        arena = self.arena_of(p)
        if arena is None:
            return -1
        return arena.pages_off + ((p - arena.base) >> PAGE_SHIFT)

    def slots_of(self, ptrs: np.ndarray) -> np.ndarray:
        """Vectorised arena_of: slot + 1 for each uint64 pointer, 0 where not heap."""
        ri = (ptrs - np.uint64(ARENA_BASE_OFFSET)) >> np.uint64(LOG_HEAP_ARENA_BYTES)
        out = np.zeros(ptrs.shape, dtype=np.int32)
        valid = ri < np.uint64(1 << ARENA_BITS)
        l1i = ri >> np.uint64(ARENA_L2_BITS)
        l2i = (ri & np.uint64((1 << ARENA_L2_BITS) - 1)).astype(np.int64)
        for i, l2 in enumerate(self.l1):
            if l2 is None:
                continue
            sel = valid & (l1i == np.uint64(i))
            out[sel] = l2[l2i[sel]]
        return out

    def set_span_pages(self, base: int, npages: int, sid: int) -> None:
        """Point every page of [base, base + npages pages) at span sid (crossing arenas)."""
        while npages:
            arena = self.arena_of(base)
            if arena is None:
                raise HeapCorruption(f"span pages at {base:#x} outside the heap")
            first = (base - arena.base) >> PAGE_SHIFT
            n = min(npages, PAGES_PER_ARENA - first)
            start = arena.pages_off + first
            self.page_span[start:start + n] = sid
            base += n << PAGE_SHIFT
            npages -= n

    # --- growth (Go's mheap.sysAlloc) --------------------------------------------------

    def sys_alloc(self, n: int) -> tuple[int, int]:
        """At least n bytes of new arena space, arena-aligned, Prepared, with metadata.

        Returns (base, size); raises OutOfMemory when the OS refuses.
        """
        n = (n + HEAP_ARENA_BYTES - 1) & ~(HEAP_ARENA_BYTES - 1)
        if len(self.all) + n // HEAP_ARENA_BYTES > MAX_ARENAS:
            raise OutOfMemory(f"heap would exceed MAX_HEAP_BYTES ({MAX_HEAP_BYTES:#x})")
        # Transactional: on any failure the reservation, the hints, the arena slots and the
        # metadata bump pointers are as they were, and the error propagates.
        hints = [(h.addr, h.down) for h in self.hints]
        nslots = len(self.all)
        marks = (self._bitmap_region.next, self._pages_region.next)
        v = self._reserve_at_hints(n)
        size = n
        if v is None:
            v, size = self._reserve_anywhere(n)
        mapped = False
        try:
            gos.sys_map(v, size, self._stats.heap_sys)
            mapped = True
            for ri in range(arena_index(v), arena_index(v + size - 1) + 1):
                self._add_arena(ri)
        except BaseException:
            self._undo_arenas(nslots, marks)
            self.hints = [ArenaHint(addr, down) for addr, down in hints]
            if mapped:
                self._stats.heap_sys.sub(size)
            try:
                gos.sys_free(v, size, None)
            except SysMemoryError:
                self._orphans.append((v, size))
            raise
        self.reservations.append((v, size))
        return v, size

    def _undo_arenas(self, nslots: int, marks: tuple[int, int]) -> None:
        """Forget the arenas from slot nslots on, and hand their metadata out again (it stays
        mapped, untouched, so it is still zero)."""
        for arena in self.all[nslots:]:
            ri = arena_index(arena.base)
            l2 = self.l1[ri >> ARENA_L2_BITS]
            if l2 is not None:
                l2[ri & ((1 << ARENA_L2_BITS) - 1)] = 0
        del self.all[nslots:]
        self._bitmap_region.rewind(marks[0])
        self._pages_region.rewind(marks[1])

    def _reserve_at_hints(self, n: int) -> int | None:
        while self.hints:
            hint = self.hints[-1]
            p = hint.addr - n if hint.down else hint.addr
            v = None
            if 0 <= p and p + n <= MASK64 and arena_index(p + n - 1) < 1 << ARENA_BITS:
                v = gos.sys_reserve(p, n)
            if v == p:
                if not hint.down:
                    hint.addr = p + n
                else:
                    hint.addr = p
                return v
            if v is not None:
                gos.sys_free(v, n, None)
            self.hints.pop()
        return None

    def _reserve_anywhere(self, n: int) -> tuple[int, int]:
        v, size = gos.sys_reserve_aligned(None, n, HEAP_ARENA_BYTES)
        if v is None:
            raise OutOfMemory(f"out of memory: cannot reserve {n:#x} bytes of heap arena")
        if arena_index(v + size - 1) >> ARENA_BITS:
            gos.sys_free(v, size, None)
            raise OutOfMemory(f"OS gave arena space at {v:#x} outside the usable range")
        # New hints for extending this region, as Go creates them.
        self.hints.append(ArenaHint(v, down=True))
        self.hints.append(ArenaHint(v + size, down=False))
        return v, size

    def _add_arena(self, ri: int) -> None:
        l1i = ri >> ARENA_L2_BITS
        l2 = self.l1[l1i]
        if l2 is None:
            nbytes = (1 << ARENA_L2_BITS) * 4
            p = self._persistent.alloc(nbytes, PTR_SIZE, self._stats.gc_sys)
            l2 = self.l1[l1i] = whole_region_view(p, nbytes, np.int32)
        slot = len(self.all)
        arena = HeapArena(arena_base(ri), slot)
        bm = self._bitmap_region.alloc(HEAP_ARENA_BITMAP_BYTES, PTR_SIZE, self._stats.gc_sys)
        pm = self._pages_region.alloc(PAGES_PER_ARENA * 4, PTR_SIZE, self._stats.gc_sys)
        if bm is None or pm is None:
            raise OutOfMemory("arena metadata regions exhausted")
        if (bm - self._bitmap_region.base != arena.bitmap_off
                or pm - self._pages_region.base != arena.pages_off * 4):
            raise HeapCorruption(f"arena metadata for slot {slot} out of order")
        self.all.append(arena)
        l2[ri & ((1 << ARENA_L2_BITS) - 1)] = slot + 1

    # --- teardown ----------------------------------------------------------------------

    def release(self) -> None:
        """Return every arena and metadata region to the OS (heap close). What the OS refuses
        to unmap stays recorded, so that a second call tries again; the first refusal is
        raised once everything else was returned."""
        first: SysMemoryError | None = None
        left = []
        for v, size in self.reservations:
            try:
                gos.sys_free(v, size, self._stats.heap_sys)
            except SysMemoryError as e:
                first = first or e
                left.append((v, size))
        self.reservations = left
        orphans = []
        for v, size in self._orphans:
            try:
                gos.sys_free(v, size, None)
            except SysMemoryError as e:
                first = first or e
                orphans.append((v, size))
        self._orphans = orphans
        for region in (self._bitmap_region, self._pages_region):
            try:
                region.release(self._stats.gc_sys)
            except SysMemoryError as e:
                first = first or e
        self.all = []
        self.l1 = [None] * (1 << ARENA_L1_BITS)
        if first is not None:
            raise first
