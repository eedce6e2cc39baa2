"""gcBits arenas: where every span's allocBits and gcmarkBits live (Go's gcBitsArenas).

Bits are carved from 64 KiB chunks of one reserved region, mapped on demand through a
LinearAlloc, so that a single numpy view (``bits8``/``bits64``) covers every bitmap of every
span and a bit's place is arithmetic: bit i of a bitmap at offset ``off`` is
``bits8[off + i // 8] >> (i % 8) & 1``.

Chunks move through epochs, as in Go 1.8 mheap.go: new mark bits come from ``next``; at the end
of a collection ``next_epoch()`` moves previous -> free, current -> previous, next -> current.
A span's allocBits are its mark bits of the last cycle, so a chunk is recycled only two epochs
after it stopped being handed out: by then no span's allocBits or gcmarkBits point into it.

Invariants:
- every bitmap handed out starts 8-byte aligned and is a whole number of uint64 words, so the
  allocator reads 64 allocation bits at once from ``bits64``;
- a bitmap handed out is zero.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import cast

import numpy as np

from gcalloc import os as gos
from gcalloc.errors import OutOfMemory
from gcalloc.os import SysMemStat
from gcalloc.persistent import LinearAlloc

GC_BITS_CHUNK_BYTES = 64 << 10


def whole_region_view(base: int, size: int, dtype: type) -> np.ndarray:
    """A numpy array over [base, base+size) without touching it (unmapped parts must not be
    read: callers index only what they mapped)."""
    raw = (ctypes.c_uint8 * size).from_address(base)
    # a ctypes array exports the buffer protocol; numpy's stubs do not list it
    return np.frombuffer(cast(memoryview, raw), dtype=np.uint8).view(dtype)


class _Chunk:
    __slots__ = ("off", "free")

    def __init__(self, off: int) -> None:
        self.off = off    # offset of the chunk in the region
        self.free = 0     # bytes of the chunk handed out; the chunk is full at CHUNK_BYTES


class GCBits:
    """The gcBits arenas of one heap."""

    def __init__(self, region_bytes: int, stat: SysMemStat) -> None:
        base = gos.sys_reserve(None, region_bytes)
        if base is None:
            raise OutOfMemory(f"cannot reserve {region_bytes:#x} bytes for gcBits arenas")
        self.base = base
        self.size = region_bytes
        self._stat = stat
        self._linear = LinearAlloc(base, region_bytes)
        self.bits8 = whole_region_view(base, region_bytes, np.uint8)
        self.bits64 = self.bits8.view(np.uint64)
        self._lock = threading.Lock()
        self._free: list[_Chunk] = []
        self._next: list[_Chunk] = []       # the chunk being carved is _next[-1]
        self._current: list[_Chunk] = []
        self._previous: list[_Chunk] = []

    def new_bits(self, nelems: int) -> int:
        """Offset of a zeroed bitmap of at least nelems bits (Go's newMarkBits)."""
        nbytes = ((nelems + 63) >> 6) << 3
        with self._lock:
            chunk = self._next[-1] if self._next else None
            if chunk is None or chunk.free + nbytes > GC_BITS_CHUNK_BYTES:
                chunk = self._new_chunk()
            off = chunk.off + chunk.free
            chunk.free += nbytes
            return off

    def new_bits_many(self, counts: Sequence[int] | np.ndarray) -> list[int]:
        """new_bits for each count in one locked pass (sweeping many spans at once): the
        bitmaps are laid end to end, a chunk at a time."""
        nbytes = ((np.asarray(counts, dtype=np.int64) + 63) >> 6) << 3
        ends = np.cumsum(nbytes)                  # end of bitmap i if all went in one chunk
        out = np.empty(len(nbytes), np.int64)
        i = 0
        with self._lock:
            chunk = self._next[-1] if self._next else None
            while i < len(nbytes):
                if chunk is None or chunk.free + nbytes[i] > GC_BITS_CHUNK_BYTES:
                    chunk = self._new_chunk()
                # bitmaps i..k-1 fit in what is left of the chunk
                done = ends[i - 1] if i else 0
                k = int(np.searchsorted(ends, done + GC_BITS_CHUNK_BYTES - chunk.free,
                                        side="right"))
                out[i:k] = chunk.off + chunk.free + (ends[i:k] - nbytes[i:k] - done)
                chunk.free += int(ends[k - 1] - done)
                i = k
        return out.tolist()

    def _new_chunk(self) -> _Chunk:
        if self._free:
            chunk = self._free.pop()
            self.bits8[chunk.off:chunk.off + GC_BITS_CHUNK_BYTES] = 0
            chunk.free = 0
        else:
            p = self._linear.alloc(GC_BITS_CHUNK_BYTES, GC_BITS_CHUNK_BYTES, self._stat)
            if p is None:
                raise OutOfMemory("gcBits region exhausted")
            chunk = _Chunk(p - self.base)
        self._next.append(chunk)
        return chunk

    def next_epoch(self) -> None:
        """End of a mark phase: previous -> free, current -> previous, next -> current."""
        with self._lock:
            self._free.extend(self._previous)
            self._previous = self._current
            self._current = self._next
            self._next = []

    def release(self) -> None:
        """Return the whole region to the OS (heap close)."""
        self._linear.release(self._stat)
        self._free = self._next = self._current = self._previous = []
