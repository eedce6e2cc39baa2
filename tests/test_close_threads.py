"""close() while other threads are inside the heap: allocating (small, tiny, large, typed),
freeing, looking up, rooting, collecting, scavenging, running a finalizer.

Each scenario runs in a subprocess, so that a segfault fails the test instead of killing
pytest, and a hang fails it by timeout. The main thread of the subprocess closes the heap after
a fixed amount of progress (every thread signals an Event after k rounds), never after a sleep.
Every thread must end with HeapClosed and nothing else, every public call after close() must
raise HeapClosed from every thread, and nothing may be printed to stderr (an "Exception ignored"
from a weakref callback or a finalizer counts as a failure).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

import gcalloc
from gcalloc.errors import GcallocError, HeapClosed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import ctypes, json, sys, threading
import gcalloc
from gcalloc.errors import HeapClosed

class Pair(ctypes.Structure):
    _fields_ = [("a", ctypes.c_void_p), ("n", ctypes.c_int64)]

def one_round(h, i, step):
    """Everything a thread does, once: the fast path, every slow path, the other calls."""
    for n in range(64):
        h.alloc(n * 7 + 16)                       # small, scan (fast path, then refills)
        h.alloc(n % 15 + 1, noscan=True)          # tiny
    h.alloc(2000 + i)                             # small, above the fast path's sizes
    h.alloc(50000)                                # large
    h.alloc(3 * ctypes.sizeof(Pair), type=Pair)   # typed: writes heap bits
    with h.no_gc():     # raw addresses are no roots: another thread's cycle would free p
        p = h.alloc(200 + i)
        h.lookup(p)
        h.usable_size(p)
        hd = h.handle(p)
        h.free(h.alloc(1500))
        h.add_root(p)
        h.remove_root(p)
    if step % 4 == i % 4:
        h.collect()
    del hd

def after_close(h, old):
    """Every public call once more: each must raise HeapClosed. Returns those that did not."""
    calls = {
        "alloc fast": lambda: h.alloc(48), "alloc tiny": lambda: h.alloc(4, noscan=True),
        "alloc 2000": lambda: h.alloc(2000), "alloc large": lambda: h.alloc(50000),
        "alloc typed": lambda: h.alloc(16, type=Pair), "new": lambda: h.new(Pair),
        "free": lambda: h.free(old), "lookup": lambda: h.lookup(old),
        "usable_size": lambda: h.usable_size(old), "handle": lambda: h.handle(old),
        "add_root": lambda: h.add_root(old), "collect": h.collect,
        "read_memstats": h.read_memstats, "verify": h.verify, "scavenge": h.scavenge,
        "set_finalizer": lambda: h.set_finalizer(old, print),
        "memprofile": h.memprofile, "run_finalizers": h.run_finalizers,
    }
    bad = []
    for name, call in calls.items():
        try:
            call()
            bad.append(name + ": returned")
        except HeapClosed:
            pass
        except BaseException as e:
            bad.append(f"{name}: {type(e).__name__}: {e}")
    return bad

def run_threads(h, nthreads, rounds, body_round, before_close=None):
    ready = [threading.Event() for _ in range(nthreads)]
    outcome = [None] * nthreads
    later = [None] * nthreads
    def body(i):
        step = 0
        old = h.alloc(64)
        try:
            while True:
                body_round(h, i, step)
                step += 1
                if step == rounds:
                    ready[i].set()
        except HeapClosed:
            outcome[i] = "HeapClosed"
            later[i] = after_close(h, old)
        except BaseException as e:
            outcome[i] = f"{type(e).__name__}: {e}"
        finally:
            ready[i].set()
    ts = [threading.Thread(target=body, args=(i,)) for i in range(nthreads)]
    for t in ts:
        t.start()
    for e in ready:
        e.wait()
    if before_close is not None:
        before_close()
    h.close()
    h.close()
    for t in ts:
        t.join()
    return {"outcome": outcome, "later": later}

def scenario_alloc():
    # The background scavenger releases every free span as often as it can meanwhile.
    h = gcalloc.Heap(scavenger=True)
    h._scavenger.period, h._scavenger.limit = 0.0005, -1.0
    return run_threads(h, 4, 3, one_round)

def scenario_collect():
    # A cycle is in progress (it has marked, the world is stopped) when close() is called.
    h = gcalloc.Heap()
    closing = threading.Event()
    in_cycle = threading.Event()
    armed = []
    def hook(marker):
        if armed and not in_cycle.is_set():
            in_cycle.set()
            closing.wait()
    h._gc.after_mark.append(hook)
    def collect_round(h, i, step):
        if i == 0:
            h.alloc(100)
            h.collect()
        else:
            one_round(h, i, step)
    def before_close():
        armed.append(True)     # thread 0's next cycle waits in its mark hook for close()
        in_cycle.wait()
        closing.set()
    r = run_threads(h, 3, 3, collect_round, before_close)
    r["cycle_was_running"] = in_cycle.is_set()
    return r

def scenario_finalizer():
    # The finalizer thread is inside a finalizer that allocates when close() is called.
    h = gcalloc.Heap()
    running = threading.Event()
    seen = []
    def fin(p):
        running.set()
        try:
            while True:
                h.alloc(64)
                h.alloc(50000)
        except HeapClosed:
            seen.append("HeapClosed")
        except BaseException as e:
            seen.append(f"{type(e).__name__}: {e}")
    h.set_finalizer(h.alloc(64), fin)
    h.collect()
    r = run_threads(h, 2, 3, one_round, running.wait)
    r["finalizer"] = seen
    return r

print(json.dumps(globals()["scenario_" + sys.argv[1]]()))
'''


def run_scenario(name: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONFAULTHANDLER="1")
    env.pop("GCALLOC_DEBUG", None)
    try:
        proc = subprocess.run([sys.executable, "-c", WORKER, name], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scenario {name}: still running after 120 s (deadlocked)")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert proc.stderr == "", proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["outcome"] == ["HeapClosed"] * len(result["outcome"]), result
    assert result["later"] == [[]] * len(result["later"]), result
    return result


def test_close_while_threads_allocate_free_root_and_collect():
    for _ in range(5):
        run_scenario("alloc")


def test_close_while_another_thread_collects():
    for _ in range(3):
        assert run_scenario("collect")["cycle_was_running"]


def test_close_while_the_finalizer_thread_runs_a_finalizer():
    for _ in range(3):
        assert run_scenario("finalizer")["finalizer"] == ["HeapClosed"]


class Pair(ctypes.Structure):
    _fields_ = [("a", ctypes.c_void_p), ("n", ctypes.c_int64)]


def test_handle_view_after_close_raises_heap_closed():
    heap = gcalloc.Heap()
    typed = heap.new(Pair)
    arr = heap.new(Pair, 3)
    untyped = heap.handle(heap.alloc(32))
    assert typed.view is typed.view       # made once
    assert arr.view is arr.view and len(arr.view) == 3
    assert untyped.view is None
    typed.view.n = 7
    heap.close()
    for h in (typed, arr, untyped):
        with pytest.raises(HeapClosed):
            _ = h.view
        assert h.alive
        h.release()                       # still fine: only the root table is touched
        assert not h.alive
        with pytest.raises(GcallocError):
            _ = h.view
