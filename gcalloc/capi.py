"""The C ABI's Python side: the ``gcalloc_api`` a heap hands to C (``Heap.capi``), the thread
records whose buckets the header's inline fast path bumps, and the callbacks behind its slow
paths (gcalloc/include/gcalloc.h is the other half; docs/capi.md the contract).

    C: gcalloc_alloc(api, n) ─ bucket [cursor, end) of n's span class ─ bump (no Python)
                                  └─ used up ─► api->alloc ─► CApi._alloc ─► _refill:
          the thread's mcache (the threading.local Heap.alloc uses) ─► its Python run, else
          Allocator._take_run (sampling, pacing, black allocation) ─► the whole run to C

What this module owns, and its invariants:

- **Memory that outlives the heap.** The api struct of each heap, the process-wide
  ``gcalloc_shared`` block (the pthread key of the threads' record chains) and the thread
  records live in mappings from the OS layer (``sys_alloc``) that are never unmapped: C code
  may hold an api pointer or a record past close(), and every call through it must fail
  cleanly then, not fault. They belong to no heap's MemStats. A record is reused only after
  its thread exited (state EXITED) and the heap that owned it reaped it or closed.
- **A bucket is a run of its thread's mcache.** ``_refill`` takes the mcache's Python run of
  that class if it has one, else reserves the next run with ``_take_run``, and hands the
  whole run to the bucket (the Python iterator is emptied), so the bucket's slots are the
  span's latest reservation. ``_give_back`` returns [cursor, end) to the span with
  ``unreserve`` when they still are (the span still cached by that mcache, its ``run_end``
  the bucket's end, no Python run after it); otherwise (Python took a later run, or the span
  left the mcache) the slots stay counted as allocated, unmarked, and this cycle's sweep
  frees them. Either way no slot is handed out twice.
- **Buckets are emptied whenever the world stops for a collection** (the allocator's flush
  hook, run first in ``flush_mcaches``, after the collector stopped every C thread: they are
  suspended by signal or parked in a call, gc/cthreads.py) and at close, so no bucket
  outlives the mark that follows, and an allocation during marking gets a one-slot run
  allocated black, as Python's do.
- **A result in flight is a root.** Between the allocation a slow path makes and the moment
  its thread has the pointer in C again (``gcalloc_stop_leave``) it is in no frame the
  collector scans: the callback stores it in the record with ``CThreads.publish`` before any
  cycle can start in between -- ``_refill`` while its safepoint region still holds the world
  (the stopper waits for the mcache's ``mallocing``), the calls through ``Heap.alloc``
  under the collector's lock. A cycle the allocation itself triggers (``gc_poll``) runs on
  this thread inside that lock (an RLock) with the object as an extra root.
- **Closing stops the C threads first.** Heap.close() shuts the allocator down, then
  ``CThreads.close`` stops every registered C thread and calls ``close`` here (its
  ``on_close``): the api is marked closed and every bucket emptied while no thread can be
  halfway through a bump, then the threads resume and fail at their next slow path.
- **Records are reaped by the collector** (``on_reap``, with the world stopped, once a
  thread exited), which is also the only reader that must mask ``state``: the collector's
  request bit may be set in it.
- **Callbacks hold the CApi weakly** and are kept for the life of the process (a C thread
  may have loaded a function pointer just before close()): after the heap is gone they fail
  with HeapClosed.

Layering: public API beside Heap. It calls the allocator's slow-path pieces and the Heap's
public calls; nothing below imports it.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import weakref
from collections.abc import Callable
from operator import length_hint
from typing import TYPE_CHECKING, Any

from gcalloc import os as gos
from gcalloc.errors import (
    HeapClosed,
    InvalidArgument,
    InvalidSize,
    InvalidType,
    OutOfMemory,
)
from gcalloc.gc.cthreads import EXITED, STATE_MASK, CThreads, suspend_signal
from gcalloc.gc.types import Type
from gcalloc.malloc import MAX_ALLOC, SMALL_FAST_MAX
from gcalloc.mcache import EMPTY_RUN, EMPTY_SPAN
from gcalloc.sizeclasses import (
    MAX_SMALL_SIZE,
    NUM_SPAN_CLASSES,
    class_to_size,
    size_to_class8,
    size_to_class128,
)

if TYPE_CHECKING:
    from gcalloc.heap import Heap
    from gcalloc.mcache import MCache
    from gcalloc.mspan import MSpan

ABI_VERSION = 1
API_BYTES = 144
THREAD_BYTES = 2624
BUCKETS_OFFSET = 192          # offsetof(gcalloc_thread, buckets)
ERROR_OFFSET = 2368           # offsetof(gcalloc_thread, error)
ERROR_BYTES = 256
API_OFFSET = 128              # offsetof(gcalloc_thread, api)
REFILLS_OFFSET = 144
_BUCKET_WORD = BUCKETS_OFFSET // 8
_CLASS128_BIAS = 1024 - 128 + 1

# Callback signatures, field for field with gcalloc_api in gcalloc.h. A record pointer is
# passed as a plain uint64 (an address): the Python side only reads and writes its words.
_u64, _i64, _i32 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32
NEW_THREAD = ctypes.CFUNCTYPE(_u64, ctypes.c_void_p, _u64)
ALLOC = ctypes.CFUNCTYPE(_u64, _u64, _u64, _i32)
ALLOC_TYPED = ctypes.CFUNCTYPE(_u64, _u64, _i64, _u64)
REGISTER_TYPE = ctypes.CFUNCTYPE(_i64, _u64, _u64, _u64, _u64)
ADDR_CALL = ctypes.CFUNCTYPE(_i32, _u64, _u64)
VOID_CALL = ctypes.CFUNCTYPE(_i32, _u64)
ADD_RANGE = ctypes.CFUNCTYPE(_i64, _u64, _u64, _u64)
REMOVE_RANGE = ctypes.CFUNCTYPE(_i32, _u64, _i64)
SET_FINALIZER = ctypes.CFUNCTYPE(_i32, _u64, _u64, _u64, _u64)
NO_GC = ctypes.CFUNCTYPE(_i32, _u64, _i32)
STATS = ctypes.CFUNCTYPE(_i32, _u64, _u64)
FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class _Api(ctypes.Structure):
    """struct gcalloc_api (gcalloc.h)."""

    _fields_ = [("abi_version", ctypes.c_uint32), ("struct_size", ctypes.c_uint32),
                ("closed", ctypes.c_int32), ("suspend_signal", ctypes.c_int32),
                ("num_span_classes", ctypes.c_uint32), ("max_small_size", ctypes.c_uint32),
                ("tables_check", ctypes.c_uint64), ("shared", ctypes.c_uint64),
                ("new_thread", NEW_THREAD), ("alloc", ALLOC), ("alloc_typed", ALLOC_TYPED),
                ("register_type", REGISTER_TYPE), ("free", ADDR_CALL), ("collect", VOID_CALL),
                ("add_root", ADDR_CALL), ("remove_root", ADDR_CALL),
                ("add_root_range", ADD_RANGE), ("remove_root_range", REMOVE_RANGE),
                ("set_finalizer", SET_FINALIZER), ("no_gc", NO_GC), ("stats", STATS)]


class _Stats(ctypes.Structure):
    """struct gcalloc_stats (gcalloc.h): MemStats field names."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "heap_alloc", "heap_objects", "heap_sys", "mallocs", "frees", "num_gc", "next_gc",
        "pause_total_ns")]


assert ctypes.sizeof(_Api) == API_BYTES


def tables_check() -> int:
    """A 64-bit checksum of the size-class tables and the ABI version: the header carries the
    value it was generated with (tools/mkcapitables.py) and refuses an api whose differs."""
    h = hashlib.blake2b(digest_size=8)
    h.update(bytes(str((ABI_VERSION, tuple(class_to_size), tuple(size_to_class8),
                        tuple(size_to_class128))), "ascii"))
    return int.from_bytes(h.digest(), "little")


def span_class(size: int, noscan: bool) -> int:
    """The span class of a small size (1..32768): what the header's gcalloc__sizeclass gives."""
    if size <= SMALL_FAST_MAX:
        sc = size_to_class8[(size + 7) >> 3]
    else:
        sc = size_to_class128[(size - _CLASS128_BIAS) >> 7]
    return sc << 1 | int(noscan)


# --- memory kept for the life of the process -------------------------------------------------


class _Permanent:
    """Blocks carved from OS mappings that are never unmapped (see the module comment)."""

    CHUNK = 64 * THREAD_BYTES     # 41 pages of 4 KiB

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next = 0
        self.end = 0
        self.free_records: list[int] = []
        # Records of closed heaps: free once their thread has exited.
        self.retired: list[int] = []
        self.shared = self._carve(64)

    def _carve(self, n: int) -> int:
        n = (n + 63) & -64
        if self.next + n > self.end:
            p = gos.sys_alloc(self.CHUNK, None)
            if p is None:
                raise OutOfMemory("sys_alloc refused memory for the C ABI's records")
            self.next, self.end = p, p + self.CHUNK
        p = self.next
        self.next += n
        return p

    def api(self) -> int:
        with self.lock:
            return self._carve(API_BYTES)

    def record(self) -> int:
        with self.lock:
            if not self.free_records and self.retired:
                keep: list[int] = []
                for r in self.retired:
                    (self.free_records if _state(r) == EXITED else keep).append(r)
                self.retired = keep
            if self.free_records:
                r = self.free_records.pop()
                ctypes.memset(r, 0, THREAD_BYTES)
                return r
            return self._carve(THREAD_BYTES)

    def release(self, record: int) -> None:
        with self.lock:
            self.free_records.append(record)

    def retire(self, records: list[int]) -> None:
        with self.lock:
            self.retired.extend(records)


_permanent: _Permanent | None = None
_permanent_lock = threading.Lock()
# Every heap's callbacks, for the life of the process (see the module comment).
_kept_callbacks: list[object] = []


def _memory() -> _Permanent:
    global _permanent
    with _permanent_lock:
        if _permanent is None:
            _permanent = _Permanent()
        return _permanent


def _state(record: int) -> int:
    """The record's state (gcalloc_stop.h), without the collector's request bit."""
    return ctypes.c_int32.from_address(record).value & STATE_MASK


def _write_error(dst: int, size: int, exc: BaseException) -> None:
    if not dst:
        return
    msg = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:size - 1]
    ctypes.memmove(dst, msg + b"\0", len(msg) + 1)


# --- one heap's C ABI ------------------------------------------------------------------------


class _Record:
    """The Python side of one thread record: the mcache it refills from and, per span class,
    the (mcache, span) its bucket's run came from."""

    __slots__ = ("addr", "words", "mcache", "owns_mcache", "owners", "no_gc")

    def __init__(self, addr: int) -> None:
        self.addr = addr
        self.words = (ctypes.c_uint64 * (THREAD_BYTES // 8)).from_address(addr)
        self.mcache: MCache | None = None
        self.owns_mcache = False       # attached by _refill: detached when the record is reaped
        self.owners: dict[int, tuple[MCache, MSpan]] = {}
        self.no_gc: list[Any] = []     # the Heap.no_gc() contexts entered from C


class CApi:
    """The gcalloc_api of one heap (``Heap.capi`` is ``CApi(heap).addr``). Every callback
    turns an exception into the call's failure value and a message for gcalloc_last_error."""

    def __init__(self, heap: Heap) -> None:
        self._heap = heap
        self._a = a = heap._alloc
        self._types: list[Type] = []
        self._records: dict[int, _Record] = {}
        self._record_addrs: list[int] = []   # the same records, for the finalizer below
        self._lock = threading.Lock()
        mem = _memory()
        self.addr = mem.api()
        api = _Api.from_address(self.addr)
        ref = weakref.ref(self)
        callbacks = [
            NEW_THREAD(_weak(ref, "_new_thread", 0, err_arg=True)),
            ALLOC(_weak(ref, "_alloc", 0)),
            ALLOC_TYPED(_weak(ref, "_alloc_typed", 0)),
            REGISTER_TYPE(_weak(ref, "_register_type", -1)),
            ADDR_CALL(_weak(ref, "_free", -1)),
            VOID_CALL(_weak(ref, "_collect", -1)),
            ADDR_CALL(_weak(ref, "_add_root", -1)),
            ADDR_CALL(_weak(ref, "_remove_root", -1)),
            ADD_RANGE(_weak(ref, "_add_root_range", -1)),
            REMOVE_RANGE(_weak(ref, "_remove_root_range", -1)),
            SET_FINALIZER(_weak(ref, "_set_finalizer", -1)),
            NO_GC(_weak(ref, "_no_gc", -1)),
            STATS(_weak(ref, "_stats", -1)),
        ]
        _kept_callbacks.append(callbacks)
        names = [f[0] for f in _Api._fields_[8:]]
        for name, cb in zip(names, callbacks):
            setattr(api, name, cb)
        api.struct_size = API_BYTES
        api.suspend_signal = suspend_signal()
        api.num_span_classes = NUM_SPAN_CLASSES
        api.max_small_size = MAX_SMALL_SIZE
        api.tables_check = tables_check()
        api.shared = mem.shared
        api.closed = 0
        api.abi_version = ABI_VERSION      # last: a half-built api fails the header's check
        self._api = api
        self._cthreads: CThreads = heap._gc.cthreads
        self._cthreads.on_reap = self._on_reap
        self._cthreads.on_close = self.close
        a.flush_hooks.append(self._flush)
        # A heap dropped without close(): C calls through its api fail from then on.
        self._dropped = weakref.finalize(heap, _abandon, self.addr, self._record_addrs)

    # --- records -----------------------------------------------------------------------

    def _new_thread(self, err: int, errlen: int) -> int:
        self._a.check_open()
        addr = _memory().record()
        rec = _Record(addr)
        rec.words[API_OFFSET // 8] = self.addr
        try:
            # On this thread, inside its first call: the record is IN_CALL from here on, and
            # the header's gcalloc_stop_register leaves the call once it has the stack.
            self._cthreads.add(addr)
        except BaseException:
            _memory().release(addr)
            raise
        with self._lock:
            self._records[addr] = rec
            self._record_addrs.append(addr)
        return addr

    def _thread_mcache(self, rec: _Record) -> MCache:
        """The calling thread's mcache: Heap.alloc's (the threading.local) when this thread
        has one, else the record's own across calls (a thread Python does not know gets a
        new thread state, and so an empty threading.local, at every callback)."""
        a = self._a
        c = getattr(a._tls, "mcache", None)
        if c is None:
            c = rec.mcache
            if c is None or c not in a.mcaches:
                c = a._attach_mcache(guarded=False)
                rec.owns_mcache = True
        rec.mcache = c
        return c

    def _refill(self, rec: _Record, size: int, noscan: int) -> int:
        """The bucket of size's class is used up: hand out a slot and give the bucket the
        rest of the run it came from (a whole fresh span's free slots, up to the next
        heap-profile sample)."""
        a = self._a
        spc = span_class(size, bool(noscan))
        elemsize = class_to_size[spc >> 1]
        c = self._thread_mcache(rec)
        a._safepoint(c)
        try:
            left = length_hint(c.runs[spc])
            s = c.alloc[spc]
            due = False
            if left and s.run_end:
                end = s.run_end
                p = end - left * elemsize
            else:
                p, due = a._take_run(c, spc, True)
                s = c.alloc[spc]
                end = s.run_end
            c.runs[spc] = EMPTY_RUN
            w = rec.words
            i = _BUCKET_WORD + 2 * spc
            w[i] = p + elemsize
            w[i + 1] = end
            w[REFILLS_OFFSET // 8] += 1
            rec.owners[spc] = (c, s)
            # Still inside the safepoint region: no cycle can start before p is a root.
            CThreads.publish(rec.addr, p)
        finally:
            c.mallocing = False
        if due:
            a.hooks.gc_poll(p)
        return p

    def _give_back(self, rec: _Record) -> None:
        """Empty every bucket of rec (the world is stopped; its thread suspended)."""
        w = rec.words
        bits64 = self._a.mheap.gcbits.bits64
        for spc, (c, s) in rec.owners.items():
            i = _BUCKET_WORD + 2 * spc
            cursor, end = w[i], w[i + 1]
            w[i] = w[i + 1] = 0
            if (cursor < end and c.alloc[spc] is s and s is not EMPTY_SPAN
                    and s.run_end == end and not length_hint(c.runs[spc])):
                es = s.elemsize
                c.next_sample += s.unreserve(bits64, iter(range(cursor, end, es))) * es
        rec.owners.clear()

    def _reap(self, rec: _Record) -> None:
        """rec's thread exited: give its buckets and its own mcache back, free the record."""
        self._give_back(rec)
        c = rec.mcache
        if rec.owns_mcache and c is not None and c in self._a.mcaches:
            self._a.detach_mcache(c)
        with self._lock:
            self._records.pop(rec.addr, None)
            self._record_addrs.remove(rec.addr)
        _memory().release(rec.addr)

    def _on_reap(self, addr: int) -> None:
        rec = self._records.get(addr)
        if rec is not None:
            self._reap(rec)

    def _flush(self) -> None:
        """The allocator's flush hook: the world and every C thread are stopped for a
        collection (exited threads were reaped just before, by ``on_reap``)."""
        for rec in list(self._records.values()):
            self._give_back(rec)

    def close(self) -> None:
        """The heap is closing (``on_close``: its world stopped for good, every C thread
        stopped): every later C call fails."""
        self._api.closed = 1
        for rec in list(self._records.values()):
            w = rec.words
            for spc in range(NUM_SPAN_CLASSES):
                w[_BUCKET_WORD + 2 * spc] = w[_BUCKET_WORD + 2 * spc + 1] = 0
            rec.owners.clear()
        with self._lock:
            addrs = list(self._record_addrs)
            self._records.clear()
            self._record_addrs.clear()
        _memory().retire(addrs)
        self._dropped.detach()

    # --- the callbacks (gcalloc_api's fields) ------------------------------------------

    def _rec(self, t: int) -> _Record:
        rec = self._records.get(t)
        if rec is None:
            self._a.check_open()
            raise InvalidArgument(f"{t:#x} is not a thread record of this heap")
        return rec

    def _alloc(self, t: int, size: int, noscan: int) -> int:
        rec = self._rec(t)
        if 0 < size <= MAX_SMALL_SIZE and not self._a.efence:
            return self._refill(rec, size, noscan)
        return self._published(rec, size, None, bool(noscan))

    def _published(self, rec: _Record, size: int, typ: Type | None, noscan: bool) -> int:
        """Heap.alloc, its result published to rec before any other thread can collect."""
        with self._heap._gc.lock:
            p = self._heap.alloc(size, typ, noscan)
            CThreads.publish(rec.addr, p)
        return p

    def _register_type(self, t: int, size: int, offsets: int, n: int) -> int:
        self._rec(t)
        self._a.check_open()
        if n > max(size // 8, 1):
            raise InvalidType(f"{n} pointer offsets for a {size}-byte type: more than its "
                              f"words")
        words = (ctypes.c_uint64 * n).from_address(offsets) if n else ()
        mask = 0
        for off in words:
            if off % 8 or off + 8 > size:
                raise InvalidType(f"pointer offset {off} is not an 8-byte-aligned word "
                                  f"inside the {size}-byte type")
            mask |= 1 << (off // 8)
        typ = Type(size, mask)
        with self._lock:
            self._types.append(typ)
            return len(self._types)

    def _alloc_typed(self, t: int, type_id: int, count: int) -> int:
        rec = self._rec(t)
        self._a.check_open()
        if not 1 <= type_id <= len(self._types):
            raise InvalidArgument(f"no type with id {type_id} registered on this heap")
        typ = self._types[type_id - 1]
        if count < 1:
            raise InvalidSize(f"count must be >= 1, got {count}")
        if typ.size * count > MAX_ALLOC:
            raise InvalidSize(f"{count} x {typ.size} bytes exceeds the maximum allocation")
        return self._published(rec, typ.size * count, typ, False)

    def _free(self, t: int, p: int) -> int:
        self._rec(t)
        self._heap.free(p)
        return 0

    def _collect(self, t: int) -> int:
        self._rec(t)
        self._heap.collect()
        return 0

    def _add_root(self, t: int, p: int) -> int:
        self._rec(t)
        self._heap.add_root(p)
        return 0

    def _remove_root(self, t: int, p: int) -> int:
        self._rec(t)
        self._heap.remove_root(p)
        return 0

    def _add_root_range(self, t: int, addr: int, size: int) -> int:
        self._rec(t)
        return self._heap.add_root_range(addr, size)

    def _remove_root_range(self, t: int, token: int) -> int:
        self._rec(t)
        self._heap.remove_root_range(token)
        return 0

    def _set_finalizer(self, t: int, p: int, fn: int, data: int) -> int:
        self._rec(t)
        if not fn:
            self._heap.set_finalizer(p, None)
            return 0
        c_fn = FINALIZER(fn)      # a C function: valid while its library is loaded

        def finalize(obj: int) -> None:
            c_fn(obj, data)

        self._heap.set_finalizer(p, finalize)
        return 0

    def _no_gc(self, t: int, enter: int) -> int:
        rec = self._rec(t)
        if enter:
            cm = self._heap.no_gc()
            cm.__enter__()
            rec.no_gc.append(cm)
            return 0
        if not rec.no_gc:
            raise InvalidArgument("gcalloc_no_gc_leave without a gcalloc_no_gc_enter on this "
                                  "thread")
        rec.no_gc.pop().__exit__(None, None, None)
        return 0

    def _stats(self, t: int, out: int) -> int:
        self._rec(t)
        if not out:
            raise InvalidArgument("gcalloc_read_stats: out is NULL")
        ms = self._heap.read_memstats()
        st = _Stats.from_address(out)
        for name, *_ in _Stats._fields_:
            setattr(st, name, getattr(ms, name))
        return 0


def _weak(ref: weakref.ref, name: str, failed: int, err_arg: bool = False) -> Callable:
    """The callback for one api field: the CApi's method while it lives, an exception turned
    into ``failed`` and a message in the thread's record (or, for new_thread, the buffer the
    header passes)."""
    if err_arg:
        def new_thread(err: int, errlen: int) -> int:
            capi = ref()
            try:
                if capi is None:
                    raise HeapClosed("heap is closed")
                return getattr(capi, name)(err, errlen)
            except Exception as e:
                _write_error(err or 0, errlen, e)
                return failed
        return new_thread

    def call(t: int, *args: int) -> int:
        capi = ref()
        try:
            if capi is None:
                raise HeapClosed("heap is closed")
            return getattr(capi, name)(t, *args)
        except Exception as e:     # a Python exception cannot cross into C
            _write_error(t + ERROR_OFFSET if t else 0, ERROR_BYTES, e)
            return failed
    return call


def _abandon(api_addr: int, records: list[int]) -> None:
    """A Heap dropped without close(): mark its api closed and empty its buckets, so C
    never bumps into memory the heap's own finalizer unmaps."""
    _Api.from_address(api_addr).closed = 1
    for r in records:
        ctypes.memset(r + BUCKETS_OFFSET, 0, NUM_SPAN_CLASSES * 16)
    _memory().retire(list(records))


__all__ = ["CApi", "ABI_VERSION", "tables_check", "span_class"]
