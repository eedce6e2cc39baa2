"""fixalloc: a free-list allocator for fixed-size allocator metadata (Go's mfixalloc.go).

The heap keeps its own bookkeeping records — mspans, mcaches, special records (finalizers,
profile buckets), arena hints — in fixallocs, one per record type. In Go these records are
off-heap structs carved from 16 KiB chunks of persistentalloc memory; here they are Python
objects with ``__slots__``, made by a factory and recycled through a free list so that a freed
record comes back (with its identity, and with ``zero=False`` its fields) on the next alloc.

Accounting is what Go would charge, not what Python spends: each record costs ``size`` bytes
(the Go struct's size, given by the caller, e.g. ~160 for a Go 1.16 mspan). ``inuse`` moves by
``size`` per alloc/free; ``sys`` grows by a notional ``FIX_ALLOC_CHUNK`` (16 KiB) each time the
current notional chunk cannot fit another record, exactly as Go carves its chunks (a tail
smaller than ``size`` is wasted). No memory is taken from the OS here; the records live on the
Python heap. Off-heap metadata that C or numpy must see lives in persistent.py instead.

Two hooks, both Go's:
- ``first(rec)`` runs the first time a record is handed out, i.e. when the factory makes it
  (Go: "f(arg, p) called first time p is returned"). mheap uses it to record a new span in
  allspans; a recycled record was recorded already, so the hook is not called again.
- ``zero``: Go clears a recycled block when ``zero`` is set. Here, if ``zero`` and ``reset`` is
  given, ``reset(rec)`` restores the record's default fields on reuse. With ``zero=False`` the
  record keeps its fields across free and reuse — an mspan's sweepgen must survive.

Not thread-safe, like Go's fixalloc: the caller holds the lock that protects it (mheap.lock for
spanalloc and cachealloc, mheap.speciallock for the special-record allocators).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from gcalloc.errors import HeapCorruption, InvalidSize
from gcalloc.os import SysMemStat

T = TypeVar("T")

FIX_ALLOC_CHUNK = 16 << 10
"""Go's _FixAllocChunk: the notional chunk a fixalloc carves its records from."""


class FixAlloc(Generic[T]):
    """Free-list allocator of fixed-size records of one type. The caller holds the lock."""

    __slots__ = (
        "size", "_factory", "_first", "_reset", "_inuse_stat", "_sys_stat",
        "_free", "_nchunk", "_inuse", "_sys", "_live", "_debug", "_free_ids",
    )

    def __init__(self, factory: Callable[[], T], size: int, inuse: SysMemStat | None,
                 sys: SysMemStat, first: Callable[[T], None] | None = None,
                 zero: bool = True, reset: Callable[[T], None] | None = None,
                 *, debug: bool = False) -> None:
        """``size`` is the Go struct size charged per record: 0 < size <= FIX_ALLOC_CHUNK.

        ``debug=True`` keeps the ids of free records so that a double free raises
        HeapCorruption (Go's ``throw``); without it only freeing more records than are live is
        caught.
        """
        if not 0 < size <= FIX_ALLOC_CHUNK:
            raise InvalidSize(f"fixalloc: record size {size} not in (0, {FIX_ALLOC_CHUNK}]")
        self.size = size
        self._factory = factory
        self._first = first
        self._reset = reset if zero else None  # zero=False: fields survive reuse
        self._inuse_stat = inuse
        self._sys_stat = sys
        self._free: list[T] = []  # LIFO, like Go's mlink list: the warmest record comes back
        # Bytes left in the current notional chunk. Invariant: 0 <= _nchunk < FIX_ALLOC_CHUNK
        # after the first alloc; a value < size means the next fresh record opens a new chunk.
        self._nchunk = 0
        self._inuse = 0  # Invariant: _inuse == _live * size
        self._sys = 0    # Invariant: _sys is a multiple of FIX_ALLOC_CHUNK, >= _inuse
        self._live = 0   # records handed out and not freed
        self._debug = debug
        self._free_ids: set[int] = set()  # debug only: id() of every record on _free

    # --- public surface ----------------------------------------------------------------------

    @property
    def inuse_bytes(self) -> int:
        """Bytes Go would count as in use: live records * size."""
        return self._inuse

    @property
    def sys_bytes(self) -> int:
        """Bytes Go would have obtained for this allocator: notional 16 KiB chunks."""
        return self._sys

    @property
    def live(self) -> int:
        """Records handed out and not yet freed."""
        return self._live

    @property
    def free_count(self) -> int:
        """Records waiting on the free list."""
        return len(self._free)

    def alloc(self) -> T:
        """Return a recycled record if one is free, else a new one from the factory."""
        if self._free:
            rec = self._free.pop()
            if self._debug:
                self._free_ids.discard(id(rec))
            if self._reset is not None:
                self._reset(rec)
        else:
            rec = self._new_record()
        self._charge(self.size)
        return rec

    def free(self, rec: T) -> None:
        """Put ``rec`` on the free list. It must have come from this allocator's alloc."""
        if self._live <= 0:
            raise HeapCorruption("fixalloc: free with no live records (double free?)")
        if self._debug:
            key = id(rec)
            if key in self._free_ids:
                raise HeapCorruption(f"fixalloc: double free of {rec!r}")
            self._free_ids.add(key)
        self._free.append(rec)
        self._charge(-self.size)

    def clear(self) -> None:
        """Drop every record (heap close) and take back all the accounting this allocator did.

        Afterwards inuse_bytes, sys_bytes and live are 0 and the ``inuse`` / ``sys`` stats are
        reduced by exactly what this allocator had added to them. Records still held by callers
        are simply forgotten (they are Python objects; nothing is returned to the OS).
        """
        if self._inuse_stat is not None:
            self._inuse_stat.sub(self._inuse)
        self._sys_stat.sub(self._sys)
        self._free.clear()
        self._free_ids.clear()
        self._nchunk = self._inuse = self._sys = self._live = 0

    # --- helpers -----------------------------------------------------------------------------

    def _new_record(self) -> T:
        """Carve a fresh record from the notional chunk, opening a new chunk when it is full."""
        rec = self._factory()
        if self._first is not None:
            self._first(rec)
        # Charge only once the record exists, so a raising factory or hook changes nothing here.
        if self._nchunk < self.size:
            # Go: persistentalloc(_FixAllocChunk); the old chunk's tail is wasted. Where the
            # stat takes real memory (special records' persistentalloc chunks) it can fail:
            # then no chunk is counted and the record is dropped, never handed out.
            self._sys_stat.add(FIX_ALLOC_CHUNK)
            self._nchunk = FIX_ALLOC_CHUNK
            self._sys += FIX_ALLOC_CHUNK
        self._nchunk -= self.size
        return rec

    def _charge(self, n: int) -> None:
        self._inuse += n
        self._live += 1 if n > 0 else -1
        if self._inuse_stat is not None:
            self._inuse_stat.add(n)

    def __repr__(self) -> str:
        return (f"FixAlloc(size={self.size}, live={self._live}, free={len(self._free)}, "
                f"inuse={self._inuse}, sys={self._sys})")
