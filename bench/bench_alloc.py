"""Allocation speed: gcalloc's Heap.alloc against Boehm GC and libc malloc, all from Python.

The workload is a mixed small-object loop: sizes cycle through 8..512 bytes and
every other allocation is noscan (pointer-free), so noscan requests below 16 bytes take the
tiny allocator and the rest spread over 26 size classes, scan and noscan. Each variant makes
the same sequence of calls from a Python ``for`` loop:

- ``gcalloc Heap.alloc``      ``alloc(size, noscan=flag)`` on one Heap kept for every
  repetition, as Boehm keeps its one heap: from the second repetition on, both allocate
  into a heap grown by the runs before (the medians compare these warm runs);
- ``gcalloc, new Heap``       the same on a Heap created for the repetition and closed after
  (each run pays the growth of a fresh heap: arenas, first-touch page faults);
- ``Boehm GC_malloc/_atomic`` libgc's ``GC_malloc`` (scan) / ``GC_malloc_atomic`` (noscan)
  through ctypes with argtypes/restype set (skipped, with a message, where libgc is missing);
- ``libc malloc+free``        ``free(malloc(size))`` through ctypes;
- ``libc malloc``             ``malloc(size)`` alone (the blocks are freed after timing);
- ``empty Python call``       a Python function taking the same arguments and doing nothing:
  the floor any Python-level allocator pays.

Repetitions interleave the variants in one process; the table gives the median ns per call and
the ratio to Boehm. Run ``python bench/bench_alloc.py [-n N] [-r REPEAT]``.

``--typed`` runs the typed table instead: each row times a typed call against the untyped call
it stands beside, interleaved in one process on one Heap with the collector off (a collect()
between repetitions, outside the timing, empties it), and prints the ratio and the bar:
``alloc(size, type=T)`` against ``alloc(size)`` for a 24-byte ``Node``, the 96-byte ``Big``,
arrays of n Nodes and a large (> 32 KiB) array; ``new(T)``, ``handle(p)`` and an
``add_root``/``remove_root`` pair against ``alloc(24)`` (on one object again and again, and on
a new object each time, which add_root must look up; the typed bars' verdict counts the
first, as that bar was first measured, and names the second if it is over 4x). A typed
row's time includes writing
its heap bits (once per run, when the run is taken). Boehm's ``GC_malloc`` and
``GC_malloc_explicitly_typed`` and a ``GC_add_roots``/``GC_remove_roots`` pair stand beside
where libgc is present.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import gcalloc  # noqa: E402

BOEHM_PATHS = ("/usr/lib/x86_64-linux-gnu/libgc.so.1", "libgc.so.1", "libgc.so")


def workload(n: int) -> list[tuple[int, bool]]:
    """(size, noscan) for n calls: sizes 8..512 cycling, noscan on every other call."""
    return [(8 + i % 505, bool(i & 1)) for i in range(n)]


def load_boehm() -> ctypes.CDLL | None:
    for path in BOEHM_PATHS + ((ctypes.util.find_library("gc") or "",)):
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.GC_init.argtypes = []
        lib.GC_init.restype = None
        for name in ("GC_malloc", "GC_malloc_atomic"):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_size_t]
            fn.restype = ctypes.c_void_p
        lib.GC_init()
        return lib
    return None


def load_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    return libc


def run_gcalloc(work: list[tuple[int, bool]], h: gcalloc.Heap) -> float:
    alloc = h.alloc
    t0 = time.perf_counter_ns()
    for size, noscan in work:
        alloc(size, noscan=noscan)
    t1 = time.perf_counter_ns()
    return (t1 - t0) / len(work)


def run_gcalloc_new_heap(work: list[tuple[int, bool]]) -> float:
    with gcalloc.Heap() as h:
        return run_gcalloc(work, h)


def run_boehm(work: list[tuple[int, bool]], lib: ctypes.CDLL) -> float:
    scan, atomic = lib.GC_malloc, lib.GC_malloc_atomic
    calls = [(atomic if noscan else scan, size) for size, noscan in work]
    t0 = time.perf_counter_ns()
    for fn, size in calls:
        fn(size)
    t1 = time.perf_counter_ns()
    return (t1 - t0) / len(work)


def run_libc_pair(work: list[tuple[int, bool]], libc: ctypes.CDLL) -> float:
    malloc, free = libc.malloc, libc.free
    t0 = time.perf_counter_ns()
    for size, _noscan in work:
        free(malloc(size))
    t1 = time.perf_counter_ns()
    return (t1 - t0) / len(work)


def run_libc_malloc(work: list[tuple[int, bool]], libc: ctypes.CDLL) -> float:
    malloc, free = libc.malloc, libc.free
    blocks = []
    keep = blocks.append
    t0 = time.perf_counter_ns()
    for size, _noscan in work:
        keep(malloc(size))
    t1 = time.perf_counter_ns()
    for p in blocks:
        free(p)
    return (t1 - t0) / len(work)


def run_empty(work: list[tuple[int, bool]]) -> float:
    def alloc(size, type=None, noscan=False, zero=True):
        pass

    t0 = time.perf_counter_ns()
    for size, noscan in work:
        alloc(size, noscan=noscan)
    t1 = time.perf_counter_ns()
    return (t1 - t0) / len(work)


SLOW_PATHS = ("_alloc_small", "_alloc_tiny_block", "_alloc_other")


def breakdown(work: list[tuple[int, bool]], gc_percent: int) -> tuple[float, float, float, float]:
    """(total ns/op, fast-path ns/op, slow-path us per call, calls per slow path) on a heap
    that ran the workload once before: the slow paths are timed from inside (perf_counter_ns
    around each), the fast path is the rest of the loop spread over the calls that did not
    enter one. Nested slow paths count once."""
    spent = [0, 0]                     # ns inside slow paths, slow-path entries
    depth = [0]
    cls = gcalloc.malloc.Allocator
    originals = {name: getattr(cls, name) for name in SLOW_PATHS}

    def timed(fn):
        def wrapper(*a, **k):
            depth[0] += 1
            t = time.perf_counter_ns()
            try:
                return fn(*a, **k)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent[0] += time.perf_counter_ns() - t
                    spent[1] += 1
        return wrapper

    for name, fn in originals.items():
        setattr(cls, name, timed(fn))
    try:
        with gcalloc.Heap(gc_percent=gc_percent) as h:
            alloc = h.alloc
            for size, noscan in work:      # warm up, as the main table's heap is
                alloc(size, noscan=noscan)
            spent[:] = [0, 0]
            t = time.perf_counter_ns()
            for size, noscan in work:
                alloc(size, noscan=noscan)
            total = time.perf_counter_ns() - t
    finally:
        for name, fn in originals.items():
            setattr(cls, name, fn)
    n, slow_ns, slow_calls = len(work), spent[0], max(spent[1], 1)
    return (total / n, (total - slow_ns) / max(n - slow_calls, 1), slow_ns / slow_calls / 1000,
            n / slow_calls)


class Node(ctypes.Structure):
    pass


Node._fields_ = [("left", ctypes.POINTER(Node)), ("right", ctypes.POINTER(Node)),
                 ("value", ctypes.c_int64)]


class Inner(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_int32), ("next", ctypes.POINTER(Node))]


class Big(ctypes.Structure):
    """96 bytes: a nested struct, arrays, POINTER and c_char_p fields."""
    _fields_ = [("inner", Inner), ("name", ctypes.c_char_p), ("kids", ctypes.POINTER(Node) * 3),
                ("counts", ctypes.c_int32 * 6), ("weight", ctypes.c_double),
                ("parent", ctypes.POINTER(Node)), ("flags", ctypes.c_uint64)]


assert ctypes.sizeof(Node) == 24 and ctypes.sizeof(Big) == 96


def _loop_typed(h: gcalloc.Heap, calls: int, size: int, typ: object) -> float:
    alloc = h.alloc
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        alloc(size, type=typ)
    return (time.perf_counter_ns() - t0) / calls


def _loop_untyped(h: gcalloc.Heap, calls: int, size: int) -> float:
    alloc = h.alloc
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        alloc(size)
    return (time.perf_counter_ns() - t0) / calls


def _loop_keyword(h: gcalloc.Heap, calls: int, size: int) -> float:
    """alloc(size, type=None): the untyped call spelled with the keyword (its floor)."""
    alloc = h.alloc
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        alloc(size, type=None)
    return (time.perf_counter_ns() - t0) / calls


def _loop_new(h: gcalloc.Heap, calls: int) -> float:
    new = h.new
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        new(Node)
    return (time.perf_counter_ns() - t0) / calls


def _loop_handle(h: gcalloc.Heap, calls: int, p: int) -> float:
    handle = h.handle
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        handle(p)
    return (time.perf_counter_ns() - t0) / calls


def _loop_roots(h: gcalloc.Heap, calls: int, p: int) -> float:
    add, remove = h.add_root, h.remove_root
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        add(p)
        remove(p)
    return (time.perf_counter_ns() - t0) / calls


def _loop_roots_fresh(h: gcalloc.Heap, ps: list[int]) -> float:
    """The pair on a different object each time: add_root looks each one up."""
    add, remove = h.add_root, h.remove_root
    t0 = time.perf_counter_ns()
    for p in ps:
        add(p)
        remove(p)
    return (time.perf_counter_ns() - t0) / len(ps)


def _boehm_typed(lib: ctypes.CDLL):
    """(GC_malloc_explicitly_typed, Node's descriptor) or None."""
    try:
        lib.GC_make_descriptor.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.c_size_t]
        lib.GC_make_descriptor.restype = ctypes.c_size_t
        fn = lib.GC_malloc_explicitly_typed
    except AttributeError:
        return None
    fn.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    fn.restype = ctypes.c_void_p
    bm = (ctypes.c_size_t * 1)(0b011)
    return fn, lib.GC_make_descriptor(bm, 3)


def _loop_boehm(fn, calls: int, *args) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter_ns() - t0) / calls


def _loop_boehm_roots(lib: ctypes.CDLL, calls: int) -> float:
    area = (ctypes.c_uint64 * 4)()
    lo = ctypes.addressof(area)
    add, remove = lib.GC_add_roots, lib.GC_remove_roots
    for fn in (add, remove):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        fn.restype = None
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        add(lo, lo + 32)
        remove(lo, lo + 32)
    return (time.perf_counter_ns() - t0) / calls


# (label, untyped size, typed size, type, bar); calls scale down so a repetition stays
# within ~24 MiB.
TYPED_ROWS = [("alloc(24, type=Node)", 24, Node, 1.3),
              ("alloc(96, type=Big)", 96, Big, 1.3),
              ("alloc(10*24, type=Node)", 240, Node, 1.3),
              ("alloc(100*24, type=Node)", 2400, Node, 1.3),
              ("alloc(1000*24, type=Node)", 24000, Node, 1.3),
              ("alloc(2000*24, type=Node) large", 48000, Node, 1.3)]


def print_typed(n: int, repeat: int) -> None:
    """The typed table (see the module comment)."""
    boehm = load_boehm()
    typed = _boehm_typed(boehm) if boehm is not None else None
    h = gcalloc.Heap(gc_percent=-1)
    p = h.alloc(24, type=Node)
    keep = h.handle(p)
    times: dict[str, list[float]] = {}

    def add(name: str, t: float) -> None:
        times.setdefault(name, []).append(t)

    gc.disable()
    try:
        for _ in range(repeat + 1):            # the first repetition warms the heap
            for label, size, typ, _bar in TYPED_ROWS:
                calls = max(50, min(n, (24 << 20) // size))
                add("u " + label, _loop_untyped(h, calls, size))
                add("t " + label, _loop_typed(h, calls, size, typ))
                h.collect()
            add("u new", _loop_untyped(h, n, 24))
            add("t kw", _loop_keyword(h, n, 24))
            h.collect()
            add("t new", _loop_new(h, n))
            add("t handle", _loop_handle(h, n, p))
            add("t roots", _loop_roots(h, n, p))
            add("t roots fresh", _loop_roots_fresh(h, [h.alloc(24) for _ in range(n)]))
            h.collect()
            if boehm is not None:
                add("b GC_malloc(24)", _loop_boehm(boehm.GC_malloc, n, 24))
                if typed is not None:
                    add("b typed", _loop_boehm(typed[0], n, 24, typed[1]))
                add("b roots", _loop_boehm_roots(boehm, n))
    finally:
        gc.enable()
        keep.release()
        h.close()
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    print(f"typed allocation, Handles and roots: n={n} calls, {repeat} repetitions "
          f"(gc off, a warm heap), median ns/call; ratio: the median of each repetition's "
          f"typed/untyped (measured next to each other)")
    print(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'call':<34}{'typed':>8}{'untyped':>9}{'ratio':>8}{'bar':>7}")
    ok = True
    beyond: list[str] = []    # rows held to a bar that is not one of the typed bars

    def row(label: str, tkey: str, ukey: str, bar: float, typed_bar: bool = True) -> None:
        nonlocal ok
        r = statistics.median(t / u for t, u in zip(times[tkey][1:], times[ukey][1:]))
        if typed_bar:
            ok = ok and r <= bar
        elif r > bar:
            beyond.append(label.strip())
        print(f"{label:<34}{med[tkey]:8.0f}{med[ukey]:9.0f}{r:7.2f}x{bar:6.1f}x "
              f"{'ok' if r <= bar else 'MISS'}")

    for label, _size, _typ, bar in TYPED_ROWS:
        row(label, "t " + label, "u " + label, bar)
    print(f"{'alloc(24, type=None): keyword only':<34}{med['t kw']:8.0f}{med['u new']:9.0f}"
          f"{statistics.median(t / u for t, u in zip(times['t kw'][1:], times['u new'][1:])):7.2f}x"
          f"  (the floor of any type= call)")
    row("new(Node) vs alloc(24)", "t new", "u new", 2.5)
    row("handle(p) vs alloc(24)", "t handle", "u new", 3.0)
    row("add_root+remove_root vs alloc(24)", "t roots", "u new", 4.0)
    # The typed bars' root pair is on one object, as the bar was first measured; a new
    # object each time adds its look-up, and is held to the same 4x apart.
    row("  the same, a new object each pair", "t roots fresh", "u new", 4.0, typed_bar=False)
    if boehm is None:
        print("Boehm GC (libgc.so.1) not found: no Boehm rows")
    else:
        b = med["b GC_malloc(24)"]
        print(f"{'Boehm GC_malloc(24)':<34}{b:8.0f}")
        if "b typed" in med:
            print(f"{'Boehm GC_malloc_explicitly_typed':<34}{med['b typed']:8.0f}"
                  f"{'':9}{med['b typed'] / b:7.2f}x (vs GC_malloc)")
        print(f"{'Boehm GC_add_roots+GC_remove_roots':<34}{med['b roots']:8.0f}"
              f"{'':9}{med['b roots'] / b:7.2f}x (vs GC_malloc)")
    print(f"typed bars: {'all met' if ok else 'NOT all met'}"
          + (f"; over 4x beside them: {', '.join(beyond)}" if beyond else ""))


def print_breakdown(n: int, repeat: int) -> None:
    rows = [("benchmark mix, GC off", workload(n), -1),
            ("benchmark mix, GC on (GOGC=100)", workload(n), 100),
            ("alloc(48) only, GC off", [(48, False)] * n, -1),
            ("alloc(48) only, GC on", [(48, False)] * n, 100)]
    print(f"where the time goes: n={n}, median of {repeat}")
    print(f"{'workload':34}{'total ns/op':>12}{'fast ns':>9}{'slow us':>9}{'calls/slow':>11}")
    for label, work, gogc in rows:
        runs = [breakdown(work, gogc) for _ in range(repeat)]
        med = [statistics.median(r[i] for r in runs) for i in range(4)]
        print(f"{label:34}{med[0]:12.0f}{med[1]:9.0f}{med[2]:9.1f}{med[3]:11.1f}")


def print_alloc_many(n: int, repeat: int) -> None:
    """Heap.alloc_many(size, n) (Boehm's GC_malloc_many) beside n calls of alloc(size) on
    the same heap, interleaved, GC off; the bar: at most 0.1x the per-object cost."""
    print(f"\nalloc_many(size, n) vs n x alloc(size): n={n}, GC off, median of {repeat}")
    print(f"{'size':>6}{'alloc ns/obj':>14}{'alloc_many ns/obj':>19}{'ratio':>8}")
    for size, noscan in ((16, False), (64, False), (64, True), (256, False)):
        with gcalloc.Heap(-1) as h:
            one, many = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                arr = h.alloc_many(size, n, noscan=noscan)
                many.append((time.perf_counter() - t0) / n * 1e9)
                alloc = h.alloc
                t0 = time.perf_counter()
                for _ in range(n):
                    alloc(size, None, noscan)
                one.append((time.perf_counter() - t0) / n * 1e9)
                del arr
                gc.collect()
                h.collect()
        a, m = statistics.median(one), statistics.median(many)
        label = f"{size}{'n' if noscan else ''}"
        print(f"{label:>6}{a:>14.0f}{m:>19.1f}{m / a:>8.3f}  "
              f"{'meets' if m <= 0.1 * a else 'MISSES'} the bar (<= 0.1)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000, help="calls per repetition")
    ap.add_argument("-r", "--repeat", type=int, default=5, help="repetitions")
    ap.add_argument("--breakdown", action="store_true",
                    help="time the slow paths from inside instead (docs/performance.md)")
    ap.add_argument("--typed", action="store_true",
                    help="the typed table instead: type=, new, handle, roots against untyped")
    args = ap.parse_args(argv)
    if args.typed:
        print_typed(20_000 if args.n == 200_000 else args.n,
                    11 if args.repeat == 5 else args.repeat)
        return 0
    if args.breakdown:
        print_breakdown(args.n, args.repeat)
        return 0
    work = workload(args.n)
    boehm = load_boehm()
    if boehm is None:
        print("Boehm GC (libgc.so.1) not found: skipping the Boehm rows "
              "(on Debian/Ubuntu: apt-get install libgc1)")
    libc = load_libc()

    heap = gcalloc.Heap()
    variants = [("gcalloc Heap.alloc", lambda: run_gcalloc(work, heap))]
    if boehm is not None:
        variants.append(("Boehm GC_malloc/_atomic", lambda: run_boehm(work, boehm)))
    variants += [
        ("libc malloc+free", lambda: run_libc_pair(work, libc)),
        ("libc malloc", lambda: run_libc_malloc(work, libc)),
        ("empty Python call", lambda: run_empty(work)),
        ("gcalloc, new Heap", lambda: run_gcalloc_new_heap(work)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    gc.disable()           # Python's own collector would add noise to every row alike
    try:
        for _ in range(args.repeat):
            for name, fn in variants:
                times[name].append(fn())
                gc.collect()
    finally:
        gc.enable()
        heap.close()

    print(f"mixed 8..512 B, half noscan: n={args.n}, {args.repeat} repetitions, median ns/op")
    print(f"Python {platform.python_version()} ({platform.python_implementation()}), "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
    ref = statistics.median(times["Boehm GC_malloc/_atomic"]) if boehm else None
    print(f"{'variant':<26}{'ns/op':>9}{'vs Boehm':>10}   all runs")
    for name, _ in variants:
        med = statistics.median(times[name])
        ratio = f"{med / ref:.2f}x" if ref else "-"
        runs = " ".join(f"{t:.0f}" for t in times[name])
        print(f"{name:<26}{med:>9.0f}{ratio:>10}   {runs}")
    if ref:
        ours = statistics.median(times["gcalloc Heap.alloc"])
        verdict = "meets" if ours <= ref else "MISSES"
        print(f"gcalloc/Boehm = {ours / ref:.2f}: {verdict} the bar (<= 1.00)")
    print_alloc_many(100_000, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
