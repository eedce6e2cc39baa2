"""Heap profile: sampled allocations by call stack (Go's mprof.go, memory half).

The allocator samples on average one allocation per ``mem_profile_rate`` bytes (malloc.py's
countdown) and calls ``record(p, size)`` for each (Go's mProf_Malloc), with ``size`` the
object's usable size. ``record`` takes the allocating Python call stack — up to 32 frames,
starting at the first frame outside the heap's own modules (``is_internal``) — finds or
makes the *bucket* for ``(size, stack)``, counts the allocation in it, and attaches a profile
special to the object (gc/specials.py). When the object dies (sweep) or is freed explicitly,
freespecial calls ``free(bucket, size)`` (Go's mProf_Free).

Publication per GC cycle, exactly as Go does it, so that the profile describes the heap as of
the last completed collection and is not biased toward allocations (which are seen at once)
over frees (which are seen only when a later sweep finds the object dead). Each bucket has an
``active`` record (what ``records()`` reports) and three ``future`` records indexed by cycle
``C`` modulo 3:

    record        counts into future[C+2]
    free          counts into future[C+1]
    next_cycle    C += 1                      at mark termination, world stopped
    flush         active += future[C]; clear  after the world restarts
    post_sweep    active += future[C+1]; clear  once the cycle's sweep finished (collect())

So after ``Heap.collect()`` the profile holds every sampled allocation made before that
collection's mark termination and every free its sweep found. If nothing was ever published
(no collection yet) ``records()`` folds in all three future records, as Go's MemProfile does.

Accounting: every bucket costs what Go's would (48-byte header + 8 bytes per frame + a
128-byte memRecord), taken from persistentalloc and charged to ``buckhash_sys``. Go's fixed
179,999-entry hash table is a Python dict here and is not charged.

Explicit frees (Heap.free) are immediate events, like allocations, so they count into
future[C+2] as well: an object allocated and freed between two collections is published with
both events at once, and ``active`` never shows more frees than allocations.

Invariants (under ``lock``): counts only grow; for every bucket, published frees never exceed
published allocations; buckets are never removed (Go keeps them for the process's life).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from types import CodeType

from gcalloc.os import SysMemStat

MAX_STACK = 32              # Go's maxStack: frames kept per bucket
BUCKET_HEADER_BYTES = 48    # Go's bucket: next, allnext, typ, hash, size, nstk
MEM_RECORD_BYTES = 128      # Go's memRecord: active + future[3], four uintptrs each

_ALLOCS, _FREES, _ALLOC_BYTES, _FREE_BYTES = range(4)
# gcalloc's own frames, skipped at the top of a stack: the heap's machinery (the allocator,
# the collector, the OS layer). Other modules of the package — the demo, the CLI — use the
# heap like any caller and appear in stacks.
_INTERNAL_PACKAGES = ("gcalloc.gc.", "gcalloc.os.")
_INTERNAL_MODULES = frozenset(f"gcalloc.{m}" for m in (
    "heap", "malloc", "mcache", "mcentral", "mheap", "mspan", "arena", "fixalloc",
    "persistent", "scavenge", "gcbits", "mstats", "verify", "sizeclasses", "errors"))


def is_internal(module: str) -> bool:
    """Whether frames of ``module`` are gcalloc's own (left out of allocation stacks)."""
    return module in _INTERNAL_MODULES or module.startswith(_INTERNAL_PACKAGES)


@dataclass(frozen=True)
class Frame:
    """One frame of an allocation stack: ``function`` is ``module.qualname``."""

    function: str
    filename: str
    line: int
    start_line: int = 0


@dataclass(frozen=True)
class MemProfileRecord:
    """One bucket of the heap profile (Go's MemProfileRecord): raw sampled counts, not scaled
    by the sampling rate (pprof.scale_heap_sample estimates the true counts). ``stack`` is
    innermost frame first."""

    alloc_objects: int
    alloc_bytes: int
    free_objects: int
    free_bytes: int
    inuse_objects: int
    inuse_bytes: int
    stack: tuple[Frame, ...]


class Bucket:
    """Profile counts for one (object size, call stack)."""

    __slots__ = ("size", "codes", "lines", "active", "future")

    def __init__(self, size: int, codes: tuple[CodeType, ...], lines: tuple[int, ...]):
        self.size = size
        self.codes = codes
        self.lines = lines
        self.active = [0, 0, 0, 0]            # allocs, frees, alloc_bytes, free_bytes
        self.future = [[0, 0, 0, 0] for _ in range(3)]

    def flush_future(self, i: int) -> None:
        """active += future[i]; future[i] = 0."""
        f = self.future[i]
        a = self.active
        for k in range(4):
            a[k] += f[k]
            f[k] = 0


class MemProfiler:
    """The heap profile of one heap. ``set_profile_bucket(p, bucket)`` attaches the profile
    special; ``persistent`` and ``buckhash_sys`` pay for buckets."""

    def __init__(self, span_of, specials, persistent, buckhash_sys: SysMemStat) -> None:
        self.lock = threading.Lock()          # Go's proflock
        self._span_of = span_of
        self._specials = specials
        self._persistent = persistent
        self._buckhash_sys = buckhash_sys
        self.buckets: dict[tuple, Bucket] = {}
        self.cycle = 0
        self.flushed = True
        self._internal: dict[CodeType, bool] = {}   # code -> inside gcalloc?
        self._names: dict[CodeType, str] = {}       # code -> module.qualname

    # --- the allocator's and the sweeper's side ----------------------------------------

    def record(self, p: int, size: int) -> None:
        """mProf_Malloc: a sampled allocation of ``size`` bytes at p (the allocator's
        ``on_sample`` hook)."""
        codes, lines = self._stack(sys._getframe(1))
        with self.lock:
            b = self._bucket(size, codes, lines)
            f = b.future[(self.cycle + 2) % 3]
            f[_ALLOCS] += 1
            f[_ALLOC_BYTES] += size
        s = self._span_of(p)
        self._specials.set_profile_bucket(s, p - s.base, b)

    def free(self, b: Bucket, size: int, explicit: bool = False) -> None:
        """mProf_Free: a sampled object of ``size`` bytes was freed, by sweep or (explicit)
        by Heap.free."""
        with self.lock:
            f = b.future[(self.cycle + (2 if explicit else 1)) % 3]
            f[_FREES] += 1
            f[_FREE_BYTES] += size

    def _stack(self, f) -> tuple[tuple[CodeType, ...], tuple[int, ...]]:
        """The call stack from the first frame outside gcalloc outward, at most MAX_STACK
        frames: (code objects, current lines)."""
        internal = self._internal
        while f is not None:
            code = f.f_code
            inside = internal.get(code)
            if inside is None:
                inside = internal[code] = is_internal(f.f_globals.get("__name__") or "")
            if not inside:
                break
            f = f.f_back
        codes: list[CodeType] = []
        lines: list[int] = []
        names = self._names
        while f is not None and len(codes) < MAX_STACK:
            code = f.f_code
            if code not in names:
                module = f.f_globals.get("__name__") or "?"
                names[code] = f"{module}.{getattr(code, 'co_qualname', code.co_name)}"
            codes.append(code)
            lines.append(f.f_lineno or 0)
            f = f.f_back
        return tuple(codes), tuple(lines)

    def _bucket(self, size: int, codes: tuple, lines: tuple) -> Bucket:
        key = (size, codes, lines)
        b = self.buckets.get(key)
        if b is None:
            nbytes = BUCKET_HEADER_BYTES + 8 * len(codes) + MEM_RECORD_BYTES
            self._persistent.alloc(nbytes, 8, self._buckhash_sys)
            b = self.buckets[key] = Bucket(size, codes, lines)
        return b

    # --- publication (the collector's side) --------------------------------------------

    def next_cycle(self) -> None:
        """mProf_NextCycle: mark termination, with the world stopped."""
        with self.lock:
            self.cycle += 1
            self.flushed = False

    def flush(self) -> None:
        """mProf_Flush: publish cycle C (once per cycle)."""
        with self.lock:
            if not self.flushed:
                self._flush_locked(self.cycle % 3)
                self.flushed = True

    def post_sweep(self) -> None:
        """mProf_PostSweep: the cycle's sweep is over; publish C+1 without advancing."""
        with self.lock:
            self._flush_locked((self.cycle + 1) % 3)

    def _flush_locked(self, i: int) -> None:
        for b in self.buckets.values():
            b.flush_future(i)

    def install(self, collector) -> None:
        """Hook the cycle: next_cycle at mark termination; flush (and post_sweep when the
        sweep is finished, as after collect()) once the world restarted."""
        collector.after_mark.append(lambda marker: self.next_cycle())
        collector.after_cycle.append(lambda: self._after_cycle(collector))

    def _after_cycle(self, collector) -> None:
        with collector.lock:      # no other cycle in between: done() is about this one
            self.flush()
            if collector.sweeper.done():
                self.post_sweep()

    # --- reading -------------------------------------------------------------------------

    def records(self, inuse_zero: bool = True) -> list[MemProfileRecord]:
        """The published profile (Go's MemProfile): one record per bucket; with
        ``inuse_zero=False`` only buckets with bytes still in use."""
        with self.lock:
            self._flush_locked(self.cycle % 3)   # between next_cycle and flush
            buckets = list(self.buckets.values())
            if all(b.active[_ALLOCS] == 0 and b.active[_FREES] == 0 for b in buckets):
                # Nothing published yet (no collection): show everything recorded.
                for b in buckets:
                    for i in range(3):
                        b.flush_future(i)
            rows = [(b, tuple(b.active)) for b in buckets]
        out = []
        for b, (allocs, frees, alloc_bytes, free_bytes) in rows:
            if allocs == 0 and frees == 0:
                continue
            if not inuse_zero and alloc_bytes == free_bytes:
                continue
            out.append(MemProfileRecord(allocs, alloc_bytes, frees, free_bytes,
                                        allocs - frees, alloc_bytes - free_bytes,
                                        self._frames(b)))
        return out

    def _frames(self, b: Bucket) -> tuple[Frame, ...]:
        names = self._names
        return tuple(Frame(names.get(code, code.co_name), code.co_filename, line,
                           code.co_firstlineno) for code, line in zip(b.codes, b.lines,
                                                                       strict=True))

    def close(self) -> None:
        with self.lock:
            self.buckets.clear()
            self._internal.clear()
            self._names.clear()
