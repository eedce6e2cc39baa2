"""Collection speed: gcalloc's collect() against Boehm GC's GC_gcollect on the same graphs.

Workloads (each built once, then collected several times; the table gives the median):

- ``gcbench tree``: a GCBench binary tree of depth D (2^(D+1)-1 live 24-byte nodes: left,
  right, value), conservative objects linked through their first two words; Boehm builds the
  same tree with GC_malloc and roots it with GC_add_roots. Side by side: our full
  collection (mark + eager sweep, i.e. runtime.GC) at most 4x GC_gcollect.
- ``typed gcbench tree``: the same tree built untyped and with ``type=TreeNode`` (left, right:
  POINTER; value: c_int64) in two heaps, their collect()s alternating: the typed one reads
  only the two pointer words of each node (its spans carry the node's layout).
- ``narrow shapes``: graphs whose breadth-first frontier stays a few objects wide, each
  beside Boehm on the same graph: singly linked lists of 5x10^5 and 10^6 24-byte nodes, a
  doubly linked list, a list whose nodes each hang a 7-node subtree, and a *caterpillar* (a
  chain with a 2-node leg at every node). They start on the scalar (Python) mark path and
  move to the graph path (gc/markgraph.py) once the scalar path has done its share; then
  the same 5x10^5-node list in a heap that is 90% garbage, with and without the graph path.
  Both heaps hold the graph at once and are collected in turn, one of each per round.
- ``random graph``: N nodes with 3 random edges each, all reachable from a root array;
  collected by Boehm and by gcalloc in turn, one of each per round.
- ``garbage cycles``: ~500 spans of fresh garbage (8 size classes) and nothing live, the
  shape of an allocation loop's automatic cycles: the per-cycle fixed cost of marking
  (Marker setup, roots) and of the whole cycle without the lazy sweep.
- sweep time per span, and how many objects each mark path handled.

Boehm is skipped with a message where libgc is missing. Run:
``python bench/bench_gc.py [--depth 18] [--list 1000000] [--repeat 5] [--quick]``
(``--list`` is the longer list; the shorter is half of it).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import gcalloc  # noqa: E402
from gcalloc.gc import marknative  # noqa: E402

BOEHM_PATHS = ("libgc.so.1", "/usr/lib/x86_64-linux-gnu/libgc.so.1", "libgc.so")
_word = ctypes.c_uint64


def link(p: int, left: int, right: int) -> None:
    _word.from_address(p).value = left
    _word.from_address(p + 8).value = right


def build_tree(alloc, depth: int) -> int:
    """Bottom-up, level by level (no recursion: depth 18 has 2^18 leaves)."""
    level = [alloc(24) for _ in range(1 << depth)]
    for d in range(depth - 1, -1, -1):
        level = [_node(alloc, level[2 * i], level[2 * i + 1]) for i in range(1 << d)]
    return level[0]


def _node(alloc, left: int, right: int) -> int:
    p = alloc(24)
    link(p, left, right)
    return p


class TreeNode(ctypes.Structure):
    pass


TreeNode._fields_ = [("left", ctypes.POINTER(TreeNode)), ("right", ctypes.POINTER(TreeNode)),
                     ("value", ctypes.c_int64)]


def tree_rows(boehm: Boehm, depth: int, repeat: int) -> None:
    """The GCBench tree in Boehm's heap and in two of ours, built untyped (conservative) and
    typed (``type=TreeNode``: left, right, value), collected in turn, one of each per round
    (ours twice: as they collect by default and on the numpy paths, native drain off), so
    that all see the same load: medians, each round's ratio to Boehm (median over rounds),
    the phase times of the untyped heap's cycle, and typed / untyped."""
    lib = boehm.lib
    heaps, roots = [], []
    try:
        for typ in (None, TreeNode):
            h = gcalloc.Heap(gc_percent=-1)
            heaps.append(h)
            roots.append(h.handle(build_tree(lambda n, h=h, typ=typ: h.alloc(n, type=typ),
                                             depth)))
            h.collect()
            assert h.read_memstats().heap_objects == (1 << (depth + 1)) - 1
        untyped, typed = heaps
        if lib is not None:
            lib.GC_disable()
            boehm.roots[0] = build_tree(lib.GC_malloc, depth)
            lib.GC_enable()
            lib.GC_gcollect()
        runs = _in_turn([lib.GC_gcollect if lib is not None else None, untyped.collect,
                         typed.collect, lambda: numpy_collect(untyped),
                         lambda: numpy_collect(typed)], max(repeat, 9))
        untyped.collect()
        m = untyped._gc.last_marker
        stats = mark_paths(m), m.marked_objects, len(m.spans)
        pause, sweep = mark_phase_times(untyped, repeat)
    finally:
        if lib is not None:
            boehm.roots[0] = 0
            lib.GC_gcollect()
        for r in roots:
            r.release()
        for h in heaps:
            h.close()
    b = runs[0]
    print(f"\nGCBench tree, depth {depth}: {stats[1]:,} live 24-byte nodes in {stats[2]} spans, "
          f"Boehm's and ours collected in turn ({len(runs[1])} rounds)")
    print(f"  {'':40}{'ms':>9}{'x Boehm':>9}")
    rows = [("Boehm GC_gcollect", b), ("collect()", runs[1]), ("typed tree collect()", runs[2]),
            ("collect(), numpy paths", runs[3]), ("typed tree collect(), numpy paths", runs[4])]
    for label, times in rows:
        if not times:
            print(f"  {label:40}{'-':>9}  (libgc not found: apt-get install libgc1)")
            continue
        ratio = f"{_paired(b, times):9.2f}" if b else f"{'-':>9}"
        print(f"  {label:40}{statistics.median(times) * 1000:9.1f}{ratio}")
    print(f"  untyped pause without sweep {pause * 1000:.1f} ms, eager sweep {sweep * 1000:.1f} "
          f"ms; mark paths: {stats[0]}")
    worst = max(_paired(b, runs[1]), _paired(b, runs[2])) if b else None
    both = f"{'yes' if worst <= 2 else 'no'} ({worst:.2f}x)" if worst else "no Boehm"
    print(f"  typed / untyped = {_paired(runs[1], runs[2]):.2f}, on the numpy paths "
          f"{_paired(runs[3], runs[4]):.2f} (median of each round's ratio; bar <= 1.10); "
          f"both <= 2x Boehm: {both}")


def numpy_collect(h: gcalloc.Heap) -> None:
    """collect() with the native drain off: the numpy paths (gc/markvec.py and the rest)."""
    h._gc.native_mark = False
    try:
        h.collect()
    finally:
        h._gc.native_mark = True


def mark_paths(m) -> str:
    """What each mark path did in a Marker's cycle."""
    if m.native_objects:
        return f"{m.native_objects:,} objects on the native path"
    return (f"{m.vector_steps} vector steps, {m.scalar_objects:,} scalar objects, "
            f"{m.graph_searches} graph searches")


def _in_turn(fns: list, rounds: int) -> list[list[float]]:
    """Each function's times over ``rounds`` rounds, one call of each per round (None: not
    timed, an empty list)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, times):
            if fn is None:
                continue
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return times


def _paired(base: list[float], other: list[float]) -> float:
    """The median of other / base over rounds timed in turn."""
    return statistics.median(o / b for b, o in zip(base, other))


def build_list(alloc, n: int) -> int:
    head = 0
    for _ in range(n):
        p = alloc(24)
        link(p, head, 0)
        head = p
    return head


def build_dlist(alloc, n: int) -> int:
    """A doubly linked list: word 0 the next node, word 1 the previous one."""
    head = prev = alloc(24)
    for _ in range(n - 1):
        p = alloc(24)
        link(prev, p, _word.from_address(prev + 8).value)
        link(p, 0, prev)
        prev = p
    return head


def build_list_of_trees(alloc, n: int, depth: int = 2) -> int:
    """A list of n nodes (next, subtree), each hanging a binary tree of 2^(depth+1)-1 nodes."""
    head = 0
    for _ in range(n):
        p = alloc(24)
        link(p, head, build_tree(alloc, depth))
        head = p
    return head


def build_caterpillar(alloc, n: int, leg: int = 2) -> int:
    """A chain of n nodes (next, leg), each with a chain of ``leg`` nodes hanging off it."""
    head = 0
    for _ in range(n):
        foot = build_list(alloc, leg)
        p = alloc(24)
        link(p, head, foot)
        head = p
    return head


def narrow_shapes(n: int) -> list[tuple[str, object, int, int]]:
    """(label, builder, argument, objects) of the narrow rows; n: the longer list."""
    return [(f"singly linked list, {n // 2:,}", build_list, n // 2, n // 2),
            (f"singly linked list, {n:,}", build_list, n, n),
            (f"doubly linked list, {n // 2:,}", build_dlist, n // 2, n // 2),
            (f"list of 7-node trees, {n // 16:,}", build_list_of_trees, n // 16, n // 2),
            (f"caterpillar (2-node legs), {n // 6:,}", build_caterpillar, n // 6, n // 2)]


def build_graph(alloc, n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    nodes = [alloc(32) for _ in range(n)]
    for p in nodes:
        for k in range(3):
            _word.from_address(p + 8 * k).value = nodes[rng.randrange(n)]
    return nodes


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Boehm:
    def __init__(self) -> None:
        self.lib = None
        for path in BOEHM_PATHS:
            try:
                self.lib = ctypes.CDLL(path)
                break
            except OSError:
                continue
        if self.lib is None:
            return
        lib = self.lib
        lib.GC_init()
        lib.GC_malloc.restype = ctypes.c_void_p
        lib.GC_malloc.argtypes = [ctypes.c_size_t]
        lib.GC_add_roots.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.GC_get_heap_size.restype = ctypes.c_size_t
        self.roots = (ctypes.c_uint64 * 4)()
        lib.GC_add_roots(ctypes.addressof(self.roots), ctypes.addressof(self.roots) + 32)


def mark_phase_times(h, repeat: int) -> tuple[float, float]:
    """(pause without the eager sweep, eager sweep) medians, from gctrace's own clocks."""
    pauses, sweeps = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        h._alloc.stop_the_world()
        try:
            h._gc.sweeper.finish()
            h._alloc.flush_mcaches()
            marker = h._gc._mark([])
            h._gc._terminate(marker)
            t1 = time.perf_counter()
            h._gc.sweeper.sweep_batch(marker.spans, marker.marked_per_span(), True)
            h._gc.sweeper.finish()
            t2 = time.perf_counter()
        finally:
            h._alloc.start_the_world()
        pauses.append(t1 - t)
        sweeps.append(t2 - t1)
    return statistics.median(pauses), statistics.median(sweeps)


def side_by_side(boehm: Boehm, build, arg: int, repeat: int):
    """collect() and GC_gcollect on the same graph build(alloc, arg), built in both heaps
    and collected in turn, one of each per round (ours also on the numpy paths), so that
    all see the same load: (Boehm's median or None, ours, ours on the numpy paths, the mark
    paths of our last default cycle)."""
    lib = boehm.lib
    with gcalloc.Heap(gc_percent=-1) as h:
        root = h.handle(build(h.alloc, arg))
        h.collect()
        if lib is not None:
            lib.GC_disable()
            boehm.roots[1] = build(lib.GC_malloc, arg)   # rooted in Boehm's root range
            lib.GC_enable()
            lib.GC_gcollect()
        theirs, ours, numpy_ours = _collect_in_turn(lib, h, repeat)
        if lib is not None:
            boehm.roots[1] = 0
            lib.GC_gcollect()
        h.collect()
        paths = mark_paths(h._gc.last_marker)
        root.release()
    return (statistics.median(theirs) if theirs else None, statistics.median(ours),
            statistics.median(numpy_ours), paths)


def _collect_in_turn(lib, h: gcalloc.Heap, repeat: int) -> list[list[float]]:
    """[Boehm's GC_gcollect times, ours, ours on the numpy paths] over ``repeat`` rounds, one
    of each per round; Boehm's list is empty without libgc."""
    return _in_turn([lib.GC_gcollect if lib is not None else None, h.collect,
                     lambda: numpy_collect(h)], repeat)


def list_in_garbage(n: int, repeat: int, graph: bool) -> tuple[float, float]:
    """(pause without the eager sweep, eager sweep) medians, as mark_phase_times, of a heap
    holding an n-node list and 9 times its bytes of fresh garbage (conservative 64-byte
    objects, allocated again before every cycle); graph=False keeps every narrow frontier
    on the scalar path."""
    pauses, sweeps = [], []
    with gcalloc.Heap(gc_percent=-1) as h:
        h._gc.native_mark = False      # the numpy paths: this row compares two of them
        if not graph:
            h._gc.graph_cost = math.inf
        root = h.handle(build_list(h.alloc, n))
        for _ in range(repeat + 1):
            for _ in range(n * 24 * 9 // 64):
                h.alloc(64)
            pause, sweep = mark_phase_times(h, 1)
            pauses.append(pause)
            sweeps.append(sweep)
        assert h.read_memstats().heap_objects == n
        root.release()
    return statistics.median(pauses[1:]), statistics.median(sweeps[1:])


def graph_side_by_side(boehm: Boehm, n: int, repeat: int):
    """collect() and GC_gcollect on build_graph's n nodes, each heap's rooted by a table of
    all of them (a root range), collected in turn, one of each per round: (Boehm's median
    or None, ours, our last cycle's vector steps, objects on the scalar path)."""
    lib = boehm.lib
    with gcalloc.Heap(gc_percent=-1) as h:
        table = (ctypes.c_uint64 * n)(*build_graph(h.alloc, n))
        token = h.add_root_range(ctypes.addressof(table), ctypes.sizeof(table))
        h.collect()
        if lib is not None:
            lib.GC_disable()
            theirs_table = (ctypes.c_uint64 * n)(*build_graph(lib.GC_malloc, n))
            lib.GC_add_roots(ctypes.addressof(theirs_table),
                             ctypes.addressof(theirs_table) + ctypes.sizeof(theirs_table))
            lib.GC_enable()
            lib.GC_gcollect()
        theirs, ours, numpy_ours = _collect_in_turn(lib, h, repeat)
        if lib is not None:
            ctypes.memset(theirs_table, 0, ctypes.sizeof(theirs_table))
            lib.GC_gcollect()
        h.collect()
        paths = mark_paths(h._gc.last_marker)
        h.remove_root_range(token)
    return (statistics.median(theirs) if theirs else None, statistics.median(ours),
            statistics.median(numpy_ours), paths)


def garbage_cycles(repeat: int, spans: int = 500) -> tuple[float, float, int]:
    """(mark, mark + termination + batch sweep) medians of automatic-style cycles over
    ``spans`` spans of garbage, and the spans per cycle."""
    sizes = (16, 24, 32, 48, 64, 96, 128, 256)
    marks, cycles, nspans = [], [], 0
    with gcalloc.Heap(gc_percent=-1) as h:
        for _ in range(repeat + 2):                  # the first two warm the scratch
            for size in sizes:
                for _ in range(spans * 8192 // size // len(sizes)):
                    h.alloc(size)
            h._alloc.stop_the_world()
            try:
                h._gc.sweeper.finish()
                h._alloc.flush_mcaches()
                t0 = time.perf_counter()
                marker = h._gc._mark([])
                t1 = time.perf_counter()
                h._gc._terminate(marker)
                h._gc.sweeper.sweep_batch(marker.spans, marker.marked_per_span(), False)
                t2 = time.perf_counter()
            finally:
                h._alloc.start_the_world()
            marks.append(t1 - t0)
            cycles.append(t2 - t0)
            nspans = len(marker.spans)
    return statistics.median(marks[2:]), statistics.median(cycles[2:]), nspans


def sweep_per_span(n: int, repeat: int) -> float:
    """Eager sweep cost per span when half the objects of every span die."""
    times = []
    for _ in range(repeat):
        with gcalloc.Heap(gc_percent=-1) as h:
            ps = [h.alloc(64) for _ in range(n)]
            keep = [h.handle(p) for p in ps[::2]]
            h._alloc.stop_the_world()
            try:
                h._alloc.flush_mcaches()
                marker = h._gc._mark([])
                h._gc._terminate(marker)
                t = time.perf_counter()
                h._gc.sweeper.finish()
                times.append((time.perf_counter() - t) / len(marker.spans))
            finally:
                h._alloc.start_the_world()
            del keep
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--list", type=int, default=1_000_000)
    ap.add_argument("--graph", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.list, args.graph, args.repeat = 12, 20_000, 5_000, 2
    ms = 1000.0
    print(f"gcalloc {gcalloc.__version__}, CPython {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores; medians of {args.repeat}")
    native = marknative.available()
    print("mark path: " + ("native (numba's compiled drain, gc/marknative.py)" if native else
                           f"numpy paths only ({marknative.why_unavailable()})"))
    boehm = Boehm()
    tree_rows(boehm, args.depth, args.repeat)
    print("\nnarrow shapes: collect() beside GC_gcollect on the same graph")
    print(f"  {'':38}{'objects':>10}{'Boehm ms':>10}{'ours ms':>9}{'x Boehm':>9}"
          f"{'numpy ms':>10}{'x Boehm':>9}  mark paths")
    for label, build, arg, nobj in narrow_shapes(args.list):
        bt, t, tn, paths = side_by_side(boehm, build, arg, args.repeat)
        bcol = f"{bt * ms:10.1f}" if bt else f"{'-':>10}"
        ratio = f"{t / bt:9.2f}" if bt else f"{'-':>9}"
        nratio = f"{tn / bt:9.2f}" if bt else f"{'-':>9}"
        print(f"  {label:38}{nobj:>10,}{bcol}{t * ms:9.1f}{ratio}{tn * ms:10.1f}{nratio}  {paths}")
    half = args.list // 2
    for graph in (True, False):
        pause, sweep = list_in_garbage(half, args.repeat, graph)
        how = "graph path on" if graph else "scalar path only"
        print(f"  list of {half:,} in a heap 90% garbage, numpy paths, {how}: pause without "
              f"sweep {pause * ms:.1f} ms, eager sweep {sweep * ms:.1f} ms")
    bt, t, tn, paths = graph_side_by_side(boehm, args.graph, args.repeat)
    beside = f", Boehm {bt * ms:.1f} ms ({t / bt:.2f}x; numpy paths {tn / bt:.2f}x)" if bt else ""
    print(f"random graph of {args.graph:,} nodes x 3 edges: collect() {t * ms:.1f} ms, numpy paths "
          f"{tn * ms:.1f} ms{beside}; {paths}")
    mark, cycle, nspans = garbage_cycles(args.repeat, 50 if args.quick else 500)
    print(f"garbage cycles over {nspans} spans, nothing live: mark {mark * ms:.2f} ms, "
          f"mark+termination+batch sweep {cycle * ms:.2f} ms")
    per = sweep_per_span(20_000 if args.quick else 200_000, args.repeat)
    print(f"sweep, half of each 64-byte span dead: {per * 1e6:.1f} us per span")
    return 0


if __name__ == "__main__":
    sys.exit(main())
