"""The native mark path: a whole drain in one loop compiled by numba (Go's gcDrain, scanobject
and greyobject as Go runs them: one object at a time off a mark stack, each word resolved
with findObject and shaded on the spot).

Why: the vectorised path (gc/markvec.py) pays some 40 numpy passes per pointer, and the
scalar path (gc/markscalar.py) Python's interpretation per object; a compiled loop pays a
few nanoseconds per word, which brings a collection within about 2x of Boehm's GC_gcollect
(docs/performance.md). The loop releases the interpreter lock (nogil). numba
is a dependency wherever it ships wheels (README: Dependencies). Without it (a platform with
no numba wheel, or GCALLOC_NO_JIT=1), before the kernel has loaded, or on a heap whose
arenas are not in slot order, the Marker keeps its numpy paths, which stay the reference
the tests compare this one with.

What it reads: the same SpanSnapshot tables as the other paths (page -> span id -> rlimit,
rbase, divmul, gbase; freeidx and the allocBits for the isFree check; wbase, welem, wsize
for an object's words; scannable, typed and the span types' layouts) and, for typed
objects, the heap bitmap. Arenas in slot order (``SpanSnapshot.contiguous``) make both
lookups plain offsets from heap_lo: heap byte offset d is page d >> PAGE_SHIFT of the page
map and byte d >> 5 of the bitmap.

The mark stack holds (span id, first word) pairs. A kernel call stops when the stack is full
in the middle of an object; ``drain`` then doubles the stack and calls again, and the kernel
resumes that object where it stopped (the loop never rebinds an array, which would keep numba
from hoisting its data pointers out of the loop).

Invariants, the same as the other paths': only allocated objects end marked (pointers
outside the snapshot's spans, past a span's last slot and into free slots are dropped; a
free slot's mark word becomes -1); noscan objects are marked but never scanned; typed
objects are scanned only at the words their heap-bitmap pointer bit marks, span types only
at their layout's pointer words; the path marks what the scalar and vectorised paths mark
from the same frontier (tests compare them on random graphs). It finishes the frontier.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from gcalloc.gc.spansnapshot import SpanSnapshot
from gcalloc.sizeclasses import PAGE_SHIFT

STACK_START = 1 << 14        # mark stack entries to begin with (it doubles when full)

# The compiled drain, loaded once per process (numba caches the machine code on disk, so
# only the first process after an install compiles it, a few seconds). prepare() starts the
# load on a thread of its own when a Heap is made, so that no collection waits for it: a
# cycle that starts before it is ready marks on the numpy paths.
_kernel: Any = None               # the compiled drain, once loaded
_unavailable: str | None = None   # why there is none, once known
_lock = threading.Lock()          # held while loading
_started = False


def _after_fork_in_child() -> None:
    """A child forked while the loader ran gets a free lock and may start it again."""
    global _lock, _started
    _lock = threading.Lock()
    if _kernel is None and _unavailable is None:
        _started = False


if hasattr(os, "register_at_fork"):   # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


def prepare() -> None:
    """Start loading the compiled drain in the background (idempotent, never blocks)."""
    global _started
    if not _started:
        _started = True
        threading.Thread(target=_load, name="gcalloc-jit", daemon=True).start()


def ready() -> bool:
    """Whether the compiled drain is loaded (never blocks)."""
    return _kernel is not None


def available() -> bool:
    """Whether the compiled drain can run here, waiting for it to load if need be: numba
    imports and the kernel compiles. GCALLOC_NO_JIT=1 turns the path off."""
    return _load() is not None


def why_unavailable() -> str | None:
    """None if the native path is available, else the reason."""
    _load()
    return _unavailable


def _load() -> Any:
    global _kernel, _unavailable
    with _lock:
        if _kernel is None and _unavailable is None:
            if os.environ.get("GCALLOC_NO_JIT") == "1":
                _unavailable = "GCALLOC_NO_JIT=1"
            else:
                try:
                    _kernel = _compile()
                except Exception as exc:   # no numba, or one that cannot compile
                    _unavailable = f"{type(exc).__name__}: {exc}"
    return _kernel


class NativePath:
    """Drains frontiers of one cycle into its mark words ``state`` with the compiled loop.
    Counts the objects it marked, the words it scanned and the objects it scanned."""

    def __init__(self, snap: SpanSnapshot, state: np.ndarray) -> None:
        self.snap = snap
        self.state = state
        self.marked = self.scanned = self.objects = 0
        self._tables: tuple | None = None

    @staticmethod
    def usable(snap: SpanSnapshot) -> bool:
        """Whether this path can mark in the snapshot now: arenas in slot order, and the
        compiled drain loaded."""
        return snap.contiguous and ready()

    def drain(self, sids: np.ndarray, idxs: np.ndarray) -> None:
        """Mark everything reachable from the grey objects (span ids, slots)."""
        if not len(sids):
            return
        sn = self.snap
        kernel = _kernel
        tables = self._kernel_tables()
        cap = max(STACK_START, 2 * len(sids))
        stack_s = np.empty(cap, np.int64)
        stack_w = np.empty(cap, np.int64)
        n = len(sids)
        stack_s[:n] = sids
        stack_w[:n] = np.take(sn.welem, sids) * idxs + np.take(sn.wbase, sids)
        # marked, words scanned, objects scanned; and an object cut short: resume index + 1
        # (0: none), its span id, its first word
        counts = np.zeros(6, np.int64)
        while True:
            n = kernel(*tables, self.state, stack_s, stack_w, n, counts)
            if not counts[3]:
                break
            # The stack filled up in the middle of an object: double it and go on there.
            stack_s = _grown(stack_s, n, 2 * len(stack_s))
            stack_w = _grown(stack_w, n, 2 * len(stack_w))
        self.marked += int(counts[0])
        self.scanned += int(counts[1])
        self.objects += int(counts[2])

    def _kernel_tables(self) -> tuple:
        """The snapshot's tables as the kernel takes them, made on the first drain."""
        if self._tables is None:
            sn = self.snap
            sn.refine_freeidx()
            npages = (sn.heap_hi - sn.heap_lo) >> PAGE_SHIFT
            lays = sn.layouts
            lens = np.array([0 if lay is None else len(lay.offsets) for lay in lays], np.int64)
            offs = [lay.offsets.astype(np.int64) for lay in lays if lay is not None]
            lay_off = np.concatenate(offs) if offs else np.zeros(1, np.int64)
            bm0 = int(sn.arena_bitmap[0]) if len(sn.arena_bitmap) else 0
            self._tables = (
                sn.heap_words, np.uint64(sn.heap_lo), np.uint64(sn.heap_hi - sn.heap_lo),
                sn.page_sids()[:npages], sn.rlimit, sn.rbase, sn.divmul, sn.gbase, sn.welem,
                sn.wbase, sn.wsize, sn.freeidx, sn.table.allocbits, sn.bits8,
                sn.scannable.view(np.uint8), sn.typed.view(np.uint8),
                sn.layout.astype(np.int64), lay_off, np.cumsum(lens) - lens, lens,
                sn.arenas.bitmap[bm0:bm0 + max(1, (sn.heap_hi - sn.heap_lo) >> 5)])
        return self._tables


def _grown(a: np.ndarray, n: int, cap: int) -> np.ndarray:
    b = np.empty(cap, a.dtype)
    b[:n] = a[:n]
    return b


def _compile() -> Any:
    """The kernel, compiled (or loaded from numba's cache) now: njit compiles on the first
    call, so it is called once on empty tables of the dtypes NativePath passes, and a
    collection never compiles it with the world stopped."""
    import numba  # a dependency where it has wheels (README: Dependencies)

    kernel = numba.njit(cache=True, nogil=True)(_drain)
    i64 = np.zeros(1, np.int64)
    u64 = np.zeros(1, np.uint64)
    u8 = np.zeros(1, np.uint8)
    kernel(u64, np.uint64(0), np.uint64(0), i64, i64, i64, u64, i64, i64, i64, i64, i64, i64,
           u8, u8, u8, i64, i64, i64, i64, u8, np.zeros(1, np.int32), i64.copy(), i64.copy(),
           0, np.zeros(6, np.int64))
    return kernel


def _drain(heap_words, lo, heap_size, page_sid, rlimit, rbase, divmul, gbase, welem, wbase,
           wsize, freeidx, allocbits, bits8, scannable, typed, layout, lay_off, lay_start,
           lay_len, bitmap, state, stack_s, stack_w, n, counts):   # pragma: no cover (jit)
    """The kernel: drain the mark stack's n entries; return the entries left. It stops early
    only when the stack is full in the middle of an object, which it then leaves in
    counts[3:6] (resume index + 1, span id, first word) for the next call, once the caller
    has grown the stack: so the stack holds what is grey, never an object's whole word
    count ahead (a big pointer array is resumed, as Go scans it in oblets). Compiled by
    numba; plain Python runs it too, slowly."""
    cap = len(stack_s)
    marked = scanned = objects = 0
    start = counts[3]
    counts[3] = 0
    s0 = counts[4]
    first = counts[5]
    while start or n:
        if start:                  # the object cut short by the last call
            j = start - 1
            start = 0
        else:
            n -= 1
            s0 = stack_s[n]
            first = stack_w[n]
            j = 0
            objects += 1
            scanned += wsize[s0]
        k = layout[s0]
        count = lay_len[k] if k else wsize[s0]
        bits = typed[s0] and not k
        while j < count:
            if n == cap:           # no room for a push: hand back, to resume at j
                counts[3] = j + 1
                counts[4] = s0
                counts[5] = first
                break
            w = first + lay_off[lay_start[k] + j] if k else first + j
            j += 1
            if bits and not (bitmap[w >> 2] >> (w & 3)) & 1:
                continue
            du = heap_words[w] - lo
            if du >= heap_size:
                continue
            d = np.int64(du)
            s = page_sid[d >> PAGE_SHIFT]
            if d >= rlimit[s]:
                continue
            slot = np.int64((np.uint64(d - rbase[s]) * divmul[s]) >> np.uint64(32))
            g = gbase[s] + slot
            if state[g] != 0:      # marked, or a free slot seen before
                continue
            if slot >= freeidx[s]:
                b = bits8[allocbits[s] + (slot >> 3)]
                if not (b >> (slot & 7)) & 1:
                    state[g] = -1
                    continue
            state[g] = 1
            marked += 1
            if scannable[s]:
                stack_s[n] = s
                stack_w[n] = wbase[s] + slot * welem[s]
                n += 1
        if counts[3]:
            break
    counts[0] += marked
    counts[1] += scanned
    counts[2] += objects
    return n
