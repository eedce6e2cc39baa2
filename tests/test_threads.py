"""Threads: many threads allocating, writing and freeing at once; mcaches given back when threads
end; the collector running while threads allocate Handles.

The stress test keeps raw addresses in Python lists, so its heap runs with ``gc_percent=-1``.
Every object gets a per-object pattern in its first and last word; a slot handed to two
threads, or a slot reused while still live, shows up as a wrong pattern.
"""

from __future__ import annotations

import ctypes
import gc
import random
import threading

import pytest

import gcalloc
from gcalloc.mcache import MCACHE_RECORD_BYTES

MASK = (1 << 64) - 1
THREADS = 8
PER_THREAD = 100_000
BATCH = 2_000
HANG = 300.0      # seconds: only a hang guard; nothing here is timed
u64 = ctypes.c_uint64.from_address


def _sizes(rng: random.Random) -> tuple[int, bool]:
    """(size, noscan) for one object: mostly small, some above 1016 B, a few large."""
    r = rng.random()
    if r < 0.002:
        return rng.randrange(32769, 200_000), True
    if r < 0.05:
        return rng.randrange(1017, 8193), rng.random() < 0.5
    return rng.randrange(16, 1017), rng.random() < 0.5


def _stress(heap: gcalloc.Heap, tid: int, out: dict, start: threading.Barrier) -> None:
    rng = random.Random(tid)
    live: dict[int, tuple[int, int]] = {}     # address -> (size, pattern)
    tiny: dict[int, int] = {}                 # tiny objects: never freed (TinyObjectFree)
    seq = 0
    bad = []

    def check(p: int, size: int, pat: int) -> None:
        last = p + ((size - 8) & ~7)
        if u64(p).value != pat or u64(last).value != pat ^ MASK:
            bad.append((tid, p, size))

    first = heap.alloc(16)                       # attaches this thread's mcache
    u64(first).value = 0
    u64(first + 8).value = MASK
    live[first] = (16, 0)
    start.wait()
    made = 1
    freed = 0
    while made < PER_THREAD:
        for _ in range(min(BATCH, PER_THREAD - made)):
            seq += 1
            pat = (tid << 56) | seq
            if rng.random() < 0.03:
                p = heap.alloc(8, noscan=True)   # tiny: shares a block with others
                u64(p).value = pat
                tiny[p] = pat
            else:
                size, noscan = _sizes(rng)
                p = heap.alloc(size, noscan=noscan)
                if p in live:
                    bad.append((tid, p, "handed out twice"))
                u64(p).value = pat
                u64(p + ((size - 8) & ~7)).value = pat ^ MASK
                live[p] = (size, pat)
            made += 1
        # Free about half of what is live, checking each object first.
        victims = [p for p in live if rng.random() < 0.5]
        for p in victims:
            size, pat = live.pop(p)
            check(p, size, pat)
            heap.free(p)
            freed += 1
    for p, (size, pat) in live.items():
        check(p, size, pat)
    for p, pat in tiny.items():
        if u64(p).value != pat:
            bad.append((tid, p, "tiny"))
    for p in live:
        heap.free(p)
        freed += 1
    out[tid] = (made, freed, bad, list(tiny))


def test_eight_threads_alloc_write_free():
    h = gcalloc.Heap(gc_percent=-1, scavenger=False, debug="")
    try:
        mcaches_before = len(h._alloc.mcaches)
        out: dict = {}
        errors: list[BaseException] = []
        start = threading.Barrier(THREADS + 1)

        def run(tid: int) -> None:
            try:
                _stress(h, tid, out, start)
            except BaseException as e:   # reported below, with the thread's id
                errors.append(e)
                start.abort()

        threads = [threading.Thread(target=run, args=(i,), name=f"stress-{i}")
                   for i in range(THREADS)]
        for t in threads:
            t.start()
        start.wait()
        # Every thread has allocated once and waits at the barrier: one mcache each.
        assert len(h._alloc.mcaches) == mcaches_before + THREADS
        for t in threads:
            t.join()
        assert not errors, errors
        assert sorted(out) == list(range(THREADS))
        problems = [b for made, freed, bad, _ in out.values() for b in bad]
        assert problems == []
        gc.collect()
        assert len(h._alloc.mcaches) == mcaches_before
        h.verify()
        ms = h.read_memstats()
        tiny = [p for *_, t in out.values() for p in t]
        blocks = {h.lookup(p)[0] for p in tiny}
        assert all(h.lookup(p)[1] == 16 for p in tiny)
        total = sum(made for made, *_ in out.values())
        frees = sum(freed for _, freed, *_ in out.values())
        assert total == THREADS * PER_THREAD
        assert ms.mallocs == total
        # Tiny allocations count as freed at once; what lives is one object per tiny block.
        assert ms.frees == frees + len(tiny) - len(blocks)
        assert ms.heap_objects == len(blocks)
        assert ms.heap_alloc == 16 * len(blocks)
        assert ms.mcache_inuse == mcaches_before * MCACHE_RECORD_BYTES
    finally:
        h.close()


def test_thread_exit_gives_the_mcache_back():
    with gcalloc.Heap(gc_percent=-1, debug="") as h:
        ready = threading.Barrier(5)
        leave = threading.Event()
        kept: list[int] = []
        lock = threading.Lock()

        def work() -> None:
            mine = [h.alloc(size) for size in (24, 24, 200, 5000, 100000)]
            with lock:
                kept.extend(mine)
            ready.wait()
            leave.wait()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            ready.wait()
            assert len(h._alloc.mcaches) == 4        # the four threads are alive, one mcache each
            assert h.read_memstats().mcache_inuse == 4 * MCACHE_RECORD_BYTES
        finally:
            leave.set()
            for t in threads:
                t.join()
        gc.collect()
        assert len(h._alloc.mcaches) == 0
        ms = h.read_memstats()
        assert ms.mcache_inuse == 0
        assert (ms.mallocs, ms.heap_objects) == (20, 20)
        assert ms.heap_alloc == 4 * (24 + 24 + 208 + 5376 + 13 * 8192)
        # Their spans went back to mcentral: nothing is cached, every object survives.
        assert all(h._alloc.mheap.span_of(p).cached_by is None for p in kept)
        assert all(h.lookup(p) == (p, h.usable_size(p)) for p in kept)
        h.verify()
        for p in kept:                       # and another thread can free them
            h.free(p)
        assert h.read_memstats().heap_objects == 0
        h.verify()


def test_thread_exit_with_a_tiny_block_and_runs():
    with gcalloc.Heap(gc_percent=-1, debug="") as h:
        got: list[int] = []

        def work() -> None:
            got.append(h.alloc(3, noscan=True))
            got.append(h.alloc(64))           # leaves a reserved run behind

        t = threading.Thread(target=work)
        t.start()
        t.join()
        gc.collect()
        assert len(h._alloc.mcaches) == 0
        tiny, small = got
        assert h.lookup(tiny) == (tiny, 16)
        assert h.lookup(small + 64) is None  # the unused run came back as free slots
        ms = h.read_memstats()
        assert (ms.mallocs, ms.heap_objects) == (2, 2)
        h.verify()
        assert h.alloc(64) == small + 64      # ... and is handed out again


def test_collector_runs_while_threads_allocate_handles():
    """GC on: four threads make Handles, keep one in ten and drop the rest, while the main
    thread collects. Kept values stay intact; dropped objects are reclaimed.

    The cycles are driven, not counted in a time window: after every block of 200 objects a
    worker asks for a cycle and waits until one that *started after its request* has ended,
    while the other workers go on allocating. So each worker sees ``per_thread // BLOCK``
    distinct cycles whatever the scheduling, and every object it dropped before its last
    request was unreachable when that cycle started and must have been freed."""
    vec = ctypes.c_uint64 * 4
    per_thread, block, nthreads = 4000, 200, 4
    h = gcalloc.Heap(debug="")
    try:
        kept: dict[int, list] = {}
        errors: list[BaseException] = []
        cond = threading.Condition()
        state = {"started": 0, "ended": 0, "wanted": 0, "running": nthreads}

        def cycle_after_now() -> None:
            with cond:
                need = state["started"] + 1
                state["wanted"] = max(state["wanted"], need)
                cond.notify_all()
                if not cond.wait_for(lambda: state["ended"] >= need or errors, HANG):
                    raise AssertionError("no cycle came")   # a hang guard, not a timing bar

        def work(tid: int) -> None:
            mine = []
            try:
                for i in range(per_thread):
                    hd = h.new(vec)
                    v = hd.view
                    for k in range(4):
                        v[k] = (tid << 48) | (i << 4) | k
                    if i % 10 == 0:
                        mine.append((i, hd))
                    if i % block == block - 1:
                        cycle_after_now()
                        for j, old in mine:    # values written before the cycle are intact
                            if list(old.view) != [(tid << 48) | (j << 4) | k for k in range(4)]:
                                raise AssertionError(f"thread {tid}: object {j} changed")
                kept[tid] = mine
            except BaseException as e:
                errors.append(e)
            finally:
                with cond:
                    state["running"] -= 1
                    cond.notify_all()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(nthreads)]
        for t in threads:
            t.start()
        cycles = 0
        while True:
            with cond:
                cond.wait_for(lambda: state["wanted"] > state["ended"] or not state["running"],
                              HANG)
                if state["wanted"] <= state["ended"]:
                    break
                state["started"] += 1
            h.collect()                        # workers not waiting are allocating meanwhile
            cycles += 1
            with cond:
                state["ended"] = state["started"]
                cond.notify_all()
        for t in threads:
            t.join()
        assert not errors, errors
        assert cycles >= per_thread // block, cycles
        during = h.read_memstats()
        # Each worker's last request came after its last object but one (``hd`` still holds
        # it); everything else it dropped was garbage when that cycle started.
        dropped = per_thread - per_thread // 10 - 1
        assert during.frees >= nthreads * dropped, (during.frees, nthreads * dropped)
        for tid, mine in kept.items():
            for i, hd in mine:
                assert list(hd.view) == [(tid << 48) | (i << 4) | k for k in range(4)]
        h.verify()
        gc.collect()
        h.collect()
        h.verify()
        ms = h.read_memstats()
        nkept = sum(len(m) for m in kept.values())
        assert nkept == nthreads * per_thread // 10
        assert ms.num_gc >= cycles
        assert ms.heap_objects == nkept
        assert ms.mallocs == nthreads * per_thread
        for tid, mine in kept.items():
            for i, hd in mine:
                assert h.lookup(hd.addr) == (hd.addr, 32)
                assert list(hd.view) == [(tid << 48) | (i << 4) | k for k in range(4)]
    finally:
        h.close()


@pytest.mark.parametrize("nthreads", [2, 4])
def test_threads_share_spans_of_one_class_without_overlap(nthreads):
    with gcalloc.Heap(gc_percent=-1, debug="") as h:
        results: dict[int, list[int]] = {}
        start = threading.Barrier(nthreads)

        def work(tid: int) -> None:
            start.wait()
            results[tid] = [h.alloc(48) for _ in range(5000)]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        everything = [p for ps in results.values() for p in ps]
        assert len(everything) == len(set(everything)) == 5000 * nthreads
        gc.collect()
        assert h.read_memstats().heap_objects == 5000 * nthreads
        h.verify()


def test_a_new_stop_waits_for_the_threads_the_last_one_parked():
    """World fairness: a thread that stops the world again right after starting it (a
    collect() loop) waits until every thread it had parked has left park, so each of them
    gets on with its allocation between two cycles instead of starving."""
    from gcalloc.mcache import MCache
    from gcalloc.world import World

    w = World()
    w.stop([], None)
    c = MCache()
    c.mallocing = True
    left = threading.Event()

    def parked() -> None:
        w.park(c)          # the world is stopped: waits here
        left.set()

    t = threading.Thread(target=parked)
    t.start()
    while True:            # until the thread is inside park's wait
        with w.cond:
            if w.parked == 1:
                break
    w.start()
    w.stop([], None)       # at once: no stop before the parked thread is out
    try:
        assert w.parked == 0
        assert c.mallocing  # it raised its flag on the way out, under the lock
    finally:
        w.start()
    t.join()
    assert left.is_set()
