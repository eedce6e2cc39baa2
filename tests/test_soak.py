"""Soak: eight threads run a long seeded mix of every public operation on one heap with the
collector on, then the heap is verified and closed.

Run it with::

    python -m pytest -m soak -s tests/test_soak.py

(``-s`` shows the figures it prints: operations, cycles, wall time, peak RSS.) The default
suite skips it (``addopts = "-m 'not soak'"`` in pyproject.toml). ``GCALLOC_SOAK_OPS`` sets the
operations per thread: the default, 10^6 (8 x 10^6 in all), took 11 minutes on a loaded 2-core
machine; ``GCALLOC_SOAK_OPS=125000`` (10^6 in all) takes about a minute.

Each thread keeps its objects alive the ways a user would: raw addresses under counted roots
(``add_root`` with the allocation and ``remove_root`` with the free, each pair inside
``no_gc()``: another thread's cycle must not come between them), typed objects under Handles
(``new``, ``handle``). Every object carries a per-object pattern in its first and last word,
checked before it is freed and at the end, so a slot handed out twice, an object freed by the
collector while reachable, or a sweep that clears a live object shows up as a wrong word (or as
a DoubleFree when the thread frees it). Objects given a finalizer are dropped; each
finalizer must run exactly once. Automatic cycles come from the pacer (GOGC=100); each thread
also forces one now and then, so cycles start while the other threads are mid-allocation.

The threads are joined before ``close()``: closing while threads still allocate is a separate
guarantee with a test of its own.
"""

from __future__ import annotations

import ctypes
import os
import random
import threading
import time

import pytest

import gcalloc
from gcalloc.observe import RSSMonitor

pytestmark = pytest.mark.soak

THREADS = 8
PER_THREAD = int(os.environ.get("GCALLOC_SOAK_OPS", "1000000"))
MASK = (1 << 64) - 1
MAX_RAW = 500          # raw objects a thread keeps at most (about 4 MiB of them)
HANG = 3600.0          # seconds: a hang guard only
u64 = ctypes.c_uint64.from_address


class Cell(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("tag", ctypes.c_uint64)]


OPS = ("small", "medium", "large", "typed", "tiny", "free", "handle", "root", "unroot",
       "finalizer", "collect")
WEIGHTS = (30, 6, 1, 10, 6, 25, 5, 5, 5, 3, 0.004)


def _soak(heap: gcalloc.Heap, tid: int, counts: dict, start: threading.Barrier,
          fins: dict[int, list[int]], fin_lock: threading.Lock) -> list:
    rng = random.Random(1000 + tid)
    raw: dict[int, tuple[int, int]] = {}       # rooted raw objects: address -> (size, pattern)
    typed: list[tuple[gcalloc.Handle, int]] = []   # Handles with the tag they hold
    extra: list[int] = []                      # second roots on raw objects
    bad: list = []
    seq = 0
    made = {op: 0 for op in OPS}

    def finalizer(p: int) -> None:
        with fin_lock:
            fins[p][1] += 1

    def check(p: int, size: int, pat: int) -> None:
        if u64(p).value != pat or u64(p + ((size - 8) & ~7)).value != pat ^ MASK:
            bad.append((tid, hex(p), size))

    def new_raw(size: int, noscan: bool) -> int:
        nonlocal seq
        seq += 1
        pat = (tid << 56) | seq
        with heap.no_gc():          # until add_root, nothing roots p (Heap.new does the same)
            p = heap.alloc(size, noscan=noscan)
            heap.add_root(p)
        u64(p).value = pat
        u64(p + ((size - 8) & ~7)).value = pat ^ MASK
        raw[p] = (size, pat)
        return p

    def pick() -> int:
        # dicts keep insertion order: mostly the newest objects (their spans are still
        # cached), sometimes an old one.
        keys = list(raw) if len(raw) < 64 or rng.random() < 0.1 else list(raw)[-64:]
        return rng.choice(keys)

    start.wait()
    for _ in range(PER_THREAD):
        op = rng.choices(OPS, WEIGHTS)[0]
        if len(raw) >= MAX_RAW and op in ("small", "medium", "large"):
            op = "free"                        # a steady state, not a heap that only grows
        made[op] += 1
        if op == "small":
            new_raw(rng.randrange(16, 1017), rng.random() < 0.5)
        elif op == "medium":
            new_raw(rng.randrange(1017, 32769), rng.random() < 0.5)
        elif op == "large":
            new_raw(rng.randrange(32769, 300_000), rng.random() < 0.7)
        elif op == "typed":
            seq += 1
            hd = heap.new(Cell, rng.randrange(2, 5))    # an array: view[0] is a Cell
            tag = (tid << 56) | seq
            hd.view[0].tag = tag
            if typed and rng.random() < 0.5:
                hd.view[0].next = typed[-1][0].addr   # a pointer the collector must follow
            typed.append((hd, tag))
            if len(typed) > 400:                      # drop old Handles: garbage
                for old, t in typed[:200]:
                    if old.view[0].tag != t:
                        bad.append((tid, "typed", hex(old.addr)))
                del typed[:200]
        elif op == "tiny":
            heap.alloc(rng.randrange(1, 16), noscan=True)   # garbage at once; never freed
        elif op == "free" and raw:
            p = pick()
            size, pat = raw.pop(p)
            check(p, size, pat)
            with heap.no_gc():      # unrooted and not yet freed: another cycle would free it
                while p in extra:
                    extra.remove(p)
                    heap.remove_root(p)
                heap.remove_root(p)
                heap.free(p)
        elif op == "handle" and raw:
            p = pick()
            hd = heap.handle(p)
            if hd.addr != p or heap.lookup(p) != (p, heap.usable_size(p)):
                bad.append((tid, "handle", hex(p)))
            hd.release()
        elif op == "root" and raw:
            p = pick()
            heap.add_root(p)
            extra.append(p)
        elif op == "unroot" and extra:
            heap.remove_root(extra.pop(rng.randrange(len(extra))))
        elif op == "finalizer" and raw:
            p = pick()
            if p not in extra:
                size, pat = raw.pop(p)
                check(p, size, pat)
                heap.set_finalizer(p, finalizer)
                with fin_lock:
                    fins.setdefault(p, [0, 0])[0] += 1   # [set, run]: an address is reused
                heap.remove_root(p)                 # unreachable: the next cycle queues it
        elif op == "collect":
            heap.collect()
    for p, (size, pat) in raw.items():
        check(p, size, pat)
    for hd, tag in typed:
        if hd.view[0].tag != tag:
            bad.append((tid, "typed", hex(hd.addr)))
    counts[tid] = made
    return bad


def test_eight_threads_of_mixed_operations_then_verify_and_close():
    h = gcalloc.Heap(100, scavenger=True, debug="")
    mon = RSSMonitor(h, interval=0.5).start()
    counts: dict[int, dict] = {}
    problems: list = []
    errors: list[BaseException] = []
    fins: dict[int, list[int]] = {}
    fin_lock = threading.Lock()
    start = threading.Barrier(THREADS + 1)

    def run(tid: int) -> None:
        try:
            problems.extend(_soak(h, tid, counts, start, fins, fin_lock))
        except BaseException as e:      # reported below, with the thread's traceback
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=run, args=(i,), name=f"soak-{i}")
               for i in range(THREADS)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(HANG)
        assert not t.is_alive(), f"{t.name} hung"
    wall = time.perf_counter() - t0
    try:
        assert not errors, errors
        assert problems == []
        h.verify()
        h.collect()                                  # queues every dropped finalized object
        assert h.run_finalizers(HANG)
        h.collect()
        h.verify()
        ms = h.read_memstats()
        with fin_lock:
            nfin = sum(n for n, _ in fins.values())
            assert nfin and all(ran == n for n, ran in fins.values()), \
                {hex(p): v for p, v in fins.items() if v[0] != v[1]}
        total = sum(sum(m.values()) for m in counts.values())
        assert total == THREADS * PER_THREAD
    finally:
        h.close()
    samples = mon.stop()
    peak = max(s.rss for s in samples)
    per_op = {op: sum(m[op] for m in counts.values()) for op in OPS}
    print(f"\nsoak: {THREADS} threads x {PER_THREAD} = {total} operations in {wall:.1f} s "
          f"({total / wall:,.0f} ops/s)")
    print(f"soak: {ms.num_gc} cycles ({ms.num_forced_gc} forced, "
          f"{ms.num_gc - ms.num_forced_gc} automatic), {ms.mallocs} mallocs, {ms.frees} frees, "
          f"{nfin} finalizers run")
    print(f"soak: peak RSS {peak / 2**20:.0f} MiB (psutil, sampled every 0.5 s), "
          f"heap_sys {ms.heap_sys / 2**20:.0f} MiB")
    print("soak: operations " + ", ".join(f"{op} {n}" for op, n in per_op.items()))
    assert ms.num_gc - ms.num_forced_gc > 0 and ms.num_forced_gc > 0
    assert all(s.heap_inuse is None for s in samples[-1:])   # the last sample came after close
