"""Marking: reachable objects are never freed and keep their contents; unreachable
ones (cycles included) are freed; the vectorised and scalar mark paths agree.

Paths are forced through ``heap._gc.scalar_frontier`` and ``heap._gc.graph_cost``, with the
native path (gc/marknative.py) off: 0 drains every frontier with numpy, 10**9 (graph path
off) drains everything in the Python loop, a small value makes the two hand work back and
forth; ``graph`` sends every narrow frontier to the graph path (gc/markgraph.py) at once and
``graph-only`` every frontier; ``numpy`` is the numpy paths' default crossover; ``native``
(the default: numba is a test dependency) drains in the compiled loop after the roots.
Random graphs mix conservative, typed and noscan objects, small and large (multi-oblet)
ones, interior pointers, scalar decoys and every kind of root; the marks of each path are
compared with each other and with a model's BFS.
"""

from __future__ import annotations

import ctypes
import math
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from heaputil import peek, poke

import gcalloc
from gcalloc.gc import marknative
from gcalloc.gc.mark import CHUNK_CAP, OBLET_WORDS, PARALLEL_FRONTIER, SCALAR_FRONTIER, Marker
from gcalloc.gc.types import Type
from gcalloc.mspan import SPAN_IN_USE

U64 = ctypes.c_uint64
# mode: (scalar_frontier, graph_cost); the native path is off but in "native"
MODES = {"vector": (0, math.inf), "scalar": (10**9, math.inf), "handoff": (3, math.inf),
         "graph": (SCALAR_FRONTIER, 0.0), "graph-only": (10**9, 0.0), "numpy": (None, None),
         "native": (None, None)}


def new_heap() -> gcalloc.Heap:
    return gcalloc.Heap(-1, scavenger=False, debug="")


@pytest.fixture(params=list(MODES))
def mode(request):
    return request.param


def force(heap: gcalloc.Heap, mode: str) -> None:
    heap._gc.scalar_frontier, heap._gc.graph_cost = MODES[mode]
    heap._gc.native_mark = mode == "native"
    if mode == "native":
        assert marknative.available(), marknative.why_unavailable()


def live(heap: gcalloc.Heap, p: int) -> bool:
    return heap.lookup(p) is not None


def objects(heap: gcalloc.Heap) -> int:
    return heap.read_memstats().heap_objects


# --- binary trees, cycles, DAGs, lists ------------------------------------------------------

class TreeNode(ctypes.Structure):
    _fields_ = [("left", ctypes.c_void_p), ("check", ctypes.c_uint64),
                ("right", ctypes.c_void_p)]


def build_tree(heap: gcalloc.Heap, depth: int, key: int, typed: bool) -> int:
    """A complete binary tree; node k holds check = key * 2**32 + k."""
    addrs = [heap.alloc(24, type=TreeNode if typed else None) for _ in range((1 << depth) - 1)]
    for k, p in enumerate(addrs):
        node = TreeNode.from_address(p)
        node.check = (key << 32) + k
        if 2 * k + 2 < len(addrs):
            node.left, node.right = addrs[2 * k + 1], addrs[2 * k + 2]
    return addrs[0]


def check_tree(root: int, depth: int, key: int) -> int:
    """Walk the tree and return its node count; asserts every check word."""
    seen = 0
    stack = [(root, 0)]
    while stack:
        p, k = stack.pop()
        node = TreeNode.from_address(p)
        assert node.check == (key << 32) + k
        seen += 1
        if node.left:
            stack.append((node.left, 2 * k + 1))
            stack.append((node.right, 2 * k + 2))
    assert seen == (1 << depth) - 1
    return seen


@pytest.mark.parametrize("typed", [False, True], ids=["conservative", "typed"])
def test_binary_trees_survive_with_contents(heap, mode, typed):
    force(heap, mode)
    depth = 11
    keep = [heap.handle(build_tree(heap, depth, key, typed)) for key in (1, 2)]
    garbage = [build_tree(heap, depth, key, typed) for key in (3, 4)]
    assert objects(heap) == 4 * ((1 << depth) - 1)
    heap.collect()
    for key, h in zip((1, 2), keep, strict=True):
        check_tree(h.addr, depth, key)
    assert not any(live(heap, g) for g in garbage)
    assert objects(heap) == 2 * ((1 << depth) - 1)
    assert heap._gc.last_marker.marked_objects == 2 * ((1 << depth) - 1)
    del keep[0]
    heap.collect()
    assert objects(heap) == (1 << depth) - 1
    heap.verify()


def ring(heap: gcalloc.Heap, n: int, size: int = 32) -> list[int]:
    ps = [heap.alloc(size) for _ in range(n)]
    for i, p in enumerate(ps):
        poke(p, ps[(i + 1) % n])
        poke(p + 8, i)
    return ps


def test_unreachable_cycles_are_freed(heap, mode):
    force(heap, mode)
    dead = ring(heap, 500) + ring(heap, 1) + ring(heap, 3, size=50_000)
    kept = ring(heap, 300)
    heap.add_root(kept[123])
    heap.collect()
    assert not any(live(heap, p) for p in dead)
    assert all(live(heap, p) for p in kept)
    assert [peek(p + 8) for p in kept] == list(range(300))
    assert objects(heap) == 300


def test_dag_shared_nodes_survive_once(heap, mode):
    force(heap, mode)
    width, layers = 40, 30
    grid = [[heap.alloc(24) for _ in range(width)] for _ in range(layers)]
    for r in range(layers - 1):
        for c in range(width):
            poke(grid[r][c], grid[r + 1][c])
            poke(grid[r][c] + 8, grid[r + 1][(c + 1) % width])
            poke(grid[r][c] + 16, r * width + c)
    for c in range(width):
        poke(grid[-1][c] + 16, (layers - 1) * width + c)
    unreachable_top = grid[0][1:]
    h = heap.handle(grid[0][0])
    heap.collect()
    # From (0, 0) layer r reaches columns 0..r (mod width): min(r + 1, width) nodes.
    expected = sum(min(r + 1, width) for r in range(layers))
    assert objects(heap) == expected
    assert heap._gc.last_marker.marked_objects == expected
    assert not any(live(heap, p) for p in unreachable_top)
    for r in range(layers):
        for c in range(min(r + 1, width)):
            assert peek(grid[r][c] + 16) == r * width + c
    assert h.alive


def test_long_list_marks_on_either_path(heap, mode):
    force(heap, mode)
    n = 20_000
    ps = [heap.alloc(16) for _ in range(n)]
    for i in range(n - 1):
        poke(ps[i], ps[i + 1])
        poke(ps[i] + 8, i)
    heap.add_root(ps[0])
    heap.collect()
    assert objects(heap) == n
    marker = heap._gc.last_marker
    if mode == "vector":
        assert marker.scalar_objects == 0 and marker.vector_steps >= n - 1
    elif mode == "scalar":
        assert marker.vector_steps == 0 and marker.scalar_objects == n
    elif mode == "numpy":       # a long narrow stretch: the scalar path hands it on
        assert marker.vector_steps == 0 and marker.graph_searches == 1
        assert 0 < marker.scalar_objects < n
    elif mode == "native":
        assert marker.native_objects == n and marker.vector_steps == marker.scalar_objects == 0
    poke(ps[n // 2], 0)                    # cut the list in half
    heap.collect()
    assert objects(heap) == n // 2 + 1
    assert live(heap, ps[n // 2]) and not live(heap, ps[n // 2 + 1])


def test_wide_fanout_marks_on_either_path(heap, mode):
    force(heap, mode)
    n = 5000
    hub = heap.alloc(8 * n)
    leaves = [heap.alloc(48) for _ in range(n)]
    for i, p in enumerate(leaves):
        poke(hub + 8 * i, p + 8 * (i % 6))
        poke(p, i)
    heap.add_root(hub)
    heap.collect()
    assert objects(heap) == n + 1
    marker = heap._gc.last_marker
    if mode == "vector":
        assert marker.scalar_objects == 0
    elif mode == "scalar":
        assert marker.vector_steps == 0
    assert [peek(p) for p in leaves] == list(range(n))


def test_pointer_into_slot_a_sweep_freed_is_ignored(heap, mode):
    """After a sweep, freeindex is 0 and allocBits say which slots are taken. A span whose
    allocBits are all set skips the per-object allocation check; one with a slot freed by
    the sweep must still drop a pointer into that slot (48-byte class: 170 slots, so the
    last allocBits word has padding bits)."""
    force(heap, mode)
    ps = [heap.alloc(48) for _ in range(400)]
    s = heap._alloc.mheap.span_of(ps[0])
    assert s.nelems % 64
    table = heap.alloc(8 * len(ps))
    for i, p in enumerate(ps):
        poke(table + 8 * i, p)
    heap.add_root(table)
    heap.collect()                          # every slot of s survives: allocBits all set
    assert heap._gc.last_marker.freeidx[s.id] == s.nelems
    dead = ps[5]
    assert heap._alloc.mheap.span_of(dead) is s
    poke(table + 8 * 5, 0)
    heap.collect()                          # frees dead's slot
    # This cycle marked after a sweep (freeindex 0) over allocBits all set: on its first
    # vector step the popcount found no free slot, so no object of s needed the check.
    if heap._gc.last_marker.vector_steps:
        assert heap._gc.last_marker.freeidx[s.id] == s.nelems
    assert not live(heap, dead)
    poke(ps[6] + 8, dead + 16)              # a stale interior pointer into the free slot
    heap.collect()
    marker = heap._gc.last_marker
    assert marker.freeidx[s.id] == 0
    assert not marker.is_marked(s, s.object_index(dead))
    assert not live(heap, dead) and objects(heap) == len(ps)      # 399 + the table
    heap.verify()


def test_wide_mixed_frontier_spans_blocks_and_chunks(heap):
    """A frontier wider than a chunk, of objects of many sizes (blocks cut by word count),
    with shared and interior targets: vector, parallel and scalar marks agree."""
    rng = random.Random(11)
    n = CHUNK_CAP + 5000
    hub = heap.alloc(8 * n)
    targets = [heap.alloc(rng.choice((16, 48, 112, 512))) for _ in range(n // 8)]
    reached = set()
    for i in range(n):
        size = rng.choice((16, 32, 80, 144, 256, 1024))
        p = heap.alloc(size)
        poke(hub + 8 * i, p)
        a, b = rng.choice(targets), rng.choice(targets)
        poke(p, a + 8)                           # interior
        poke(p + size - 8, b)
        reached |= {a, b}
    dead = [heap.alloc(32) for _ in range(300)]
    heap.add_root(hub)
    with ThreadPoolExecutor(max_workers=1) as executor:
        parallel = mark_only(heap, 0, executor)
    vector = mark_only(heap, 0)
    scalar = mark_only(heap, 10**9)
    assert vector.vector_steps and not scalar.vector_steps
    assert np.array_equal(parallel.marks, vector.marks)
    assert np.array_equal(vector.marks, scalar.marks)
    assert vector.marked_objects == scalar.marked_objects
    force(heap, "vector")
    heap.collect()
    assert not any(live(heap, p) for p in dead)
    assert objects(heap) == 1 + n + len(reached)


def test_multi_oblet_object_is_scanned_to_the_end(heap, mode):
    force(heap, mode)
    nwords = 3 * OBLET_WORDS + 5
    big = heap.alloc(8 * nwords)
    targets = {w: heap.alloc(64) for w in (0, OBLET_WORDS - 1, OBLET_WORDS,
                                           2 * OBLET_WORDS + 7, nwords - 1)}
    for w, q in targets.items():
        poke(big + 8 * w, q)
    heap.add_root(big + 12345)             # interior root into the big object
    heap.collect()
    assert all(live(heap, q) for q in targets.values())
    assert objects(heap) == 1 + len(targets)


def test_tiny_objects_reachable_from_heap_survive(heap, mode):
    force(heap, mode)
    n = 600
    holder = heap.alloc(8 * n)
    tinies = []
    for i in range(n):
        p = heap.alloc(8, noscan=True)
        poke(p, 0xABC000 + i)
        tinies.append(p)
        poke(holder + 8 * i, p)
    for _ in range(300):                   # garbage tiny objects and blocks
        heap.alloc(4, noscan=True)
    heap.add_root(holder)
    heap.collect()
    assert all(live(heap, p) for p in tinies)
    assert [peek(p) for p in tinies] == [0xABC000 + i for i in range(n)]
    heap.verify()


# --- random graphs: the two paths agree -------------------------------------------------------

@dataclass
class Obj:
    addr: int
    size: int
    kind: str                                   # "cons", "typed", "noscan"
    ptr_words: list[int]                        # words the collector may read as pointers
    edges: list[int] = field(default_factory=list)   # model indexes this object keeps
    words: dict[int, int] = field(default_factory=dict)   # word -> value written


SIZES = [16, 24, 32, 48, 64, 112, 256, 1024, 4096, 24_576, 40_000, 150_000, 300_000]


def build_random_graph(heap: gcalloc.Heap, seed: int, n: int = 500):
    """Allocate n objects and random edges; returns (objs, root_indexes, keepalive)."""
    rng = random.Random(seed)
    objs: list[Obj] = []
    for _ in range(n):
        size = rng.choice(SIZES[:9]) if rng.random() < 0.95 else rng.choice(SIZES[9:])
        kind = rng.choices(["cons", "typed", "noscan"], [5, 3, 1])[0]
        nwords = size // 8
        if kind == "typed":
            mask = rng.getrandbits(min(nwords, 64)) | 1
            t = Type(8 * min(nwords, 64), mask)
            size = t.size * (nwords // (t.size // 8))
            addr = heap.alloc(size, type=t)
            stride = t.size // 8
            ptr_words = [e * stride + w for e in range(size // t.size)
                         for w in t.pointer_words()]
        else:
            addr = heap.alloc(size, noscan=kind == "noscan")
            ptr_words = [] if kind == "noscan" else list(range(nwords))
        objs.append(Obj(addr, size, kind, ptr_words))
    for o in objs:
        nwords = o.size // 8
        ptr_set = set(o.ptr_words)
        chosen = rng.sample(range(nwords), min(nwords, rng.randint(0, 6)))
        for w in chosen:
            j = rng.randrange(n)
            target = objs[j]
            off = rng.randrange(target.size) if rng.random() < 0.3 else 0
            value = target.addr + off
            o.words[w] = value
            if w in ptr_set:
                o.edges.append(j)
        for w in rng.sample(range(nwords), min(nwords, 2)):
            if w not in o.words:
                o.words[w] = rng.getrandbits(20)      # small scalars: never addresses
        for w, v in o.words.items():
            poke(o.addr + 8 * w, v)
    roots = rng.sample(range(n), 6)
    keep = []
    arr = (U64 * 3)(objs[roots[0]].addr, objs[roots[1]].addr + 8, 0xFFFF_FFFF)
    keep.append(arr)
    keep.append(heap.add_root_range(ctypes.addressof(arr), ctypes.sizeof(arr)))
    heap.add_root(objs[roots[2]].addr)
    heap.add_root(objs[roots[3]].addr + objs[roots[3]].size - 1)
    keep.append(heap.handle(objs[roots[4]].addr))
    keep.append(heap.handle(objs[roots[5]].addr))
    return objs, roots, keep


def reachable(objs: list[Obj], roots: list[int]) -> set[int]:
    seen = set(roots)
    stack = list(roots)
    while stack:
        for j in objs[stack.pop()].edges:
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return seen


def mark_only(heap: gcalloc.Heap, scalar_frontier: int, pool=None,
              graph_cost: float | None = math.inf, native: bool = False) -> Marker:
    """Mark without sweeping, as a cycle would (single-threaded test: no world to stop);
    the graph path off unless graph_cost says otherwise, the native path off unless
    native."""
    heap._alloc.flush_mcaches()
    spans = [s for s in heap._alloc.mheap.live_spans() if s.state == SPAN_IN_USE]
    marker = Marker(heap._alloc.mheap, spans, scalar_frontier=scalar_frontier, pool=pool,
                    graph_cost=graph_cost, native=native)
    with heap._gc.roots.lock:
        marker.mark_from(heap._gc.roots.candidates())
    return marker


@pytest.mark.parametrize("seed", range(6))
def test_random_graph_mark_paths_agree(heap, seed):
    objs, roots, keep = build_random_graph(heap, seed)
    expected = reachable(objs, roots)
    markers = {name: mark_only(heap, SCALAR_FRONTIER if frontier is None else frontier,
                               graph_cost=cost, native=name == "native")
               for name, (frontier, cost) in MODES.items()}
    vector = markers["vector"]
    assert markers["native"].native_objects > 0 and markers["native"].vector_steps == 0
    assert vector.scalar_objects == 0 and vector.vector_steps > 0
    assert markers["scalar"].vector_steps == 0 and markers["scalar"].scalar_objects > 0
    assert markers["graph-only"].graph_searches == 1
    assert markers["graph-only"].vector_steps == markers["graph-only"].scalar_objects == 0
    assert markers["graph"].graph_searches >= 1
    for name, marker in markers.items():
        assert np.array_equal(marker.marks, vector.marks), name
        got = set()
        for i, o in enumerate(objs):
            s = heap._alloc.mheap.span_of(o.addr)
            if marker.is_marked(s, s.object_index(o.addr)):
                got.add(i)
        assert got == expected, name
        assert marker.marked_objects == len(expected), name
    force(heap, "vector")
    heap.collect()
    assert np.array_equal(heap._gc.last_marker.marks, vector.marks)
    survivors = {i for i, o in enumerate(objs) if live(heap, o.addr)}
    assert survivors == expected
    assert objects(heap) == len(expected)
    for i in expected:
        o = objs[i]
        assert all(peek(o.addr + 8 * w) == v for w, v in o.words.items())
    heap.verify()
    del keep


@pytest.mark.parametrize("seed", range(100, 103))
def test_random_graph_collect_each_path_same_survivors(seed):
    """The same graph built in fresh heaps, collected with each path forced: the survivors
    (by model index) and the bytes marked are the same."""
    results = {}
    for name in MODES:
        heap = new_heap()
        try:
            force(heap, name)
            objs, roots, keep = build_random_graph(heap, seed, n=300)
            heap.collect()
            survivors = frozenset(i for i, o in enumerate(objs) if live(heap, o.addr))
            ms = heap.read_memstats()
            results[name] = (survivors, ms.heap_objects, ms.heap_alloc)
            assert survivors == reachable(objs, roots)
            heap.verify()
            del keep
        finally:
            heap.close()
    assert len(set(results.values())) == 1, results


def test_second_cycle_uses_fresh_mark_bits(heap, mode):
    """Marks from one cycle must not leak into the next: after dropping a root, the object
    goes away on the following cycle."""
    force(heap, mode)
    ps = [heap.alloc(64) for _ in range(50)]
    for p in ps:
        heap.add_root(p)
    heap.collect()
    for p in ps[::2]:
        heap.remove_root(p)
    heap.collect()
    assert [live(heap, p) for p in ps] == [i % 2 == 1 for i in range(50)]
    for p in ps[1::2]:
        heap.remove_root(p)
    heap.collect()
    assert objects(heap) == 0


class CountingPool:
    """An executor wrapper that counts the work handed to the second mark worker."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.submitted = 0

    def submit(self, fn, *args):
        self.submitted += 1
        return self.executor.submit(fn, *args)


def test_parallel_vector_steps_agree_with_single_worker(heap):
    """Frontiers of PARALLEL_FRONTIER objects or more are split between two mark workers;
    shared targets may be shaded by both at once. The marks must equal the single-worker
    and scalar ones."""
    rng = random.Random(7)
    n = PARALLEL_FRONTIER + 4000
    hub = heap.alloc(8 * n)
    level1 = [heap.alloc(32) for _ in range(n)]
    level2 = [heap.alloc(48) for _ in range(n // 4)]
    dead = [heap.alloc(48) for _ in range(500)]
    for i, p in enumerate(level1):
        poke(hub + 8 * i, p)
        poke(p, rng.choice(level2))              # many parents per child
        poke(p + 8, rng.choice(level2) + 40)     # interior
        poke(p + 16, i)
    poke(hub + 8 * (n - 1), 0)                   # the last level-1 object is garbage
    heap.add_root(hub)
    reached2 = {heap.lookup(peek(p + off))[0] for p in level1[:-1] for off in (0, 8)}
    with ThreadPoolExecutor(max_workers=1) as executor:
        pool = CountingPool(executor)
        parallel = mark_only(heap, 0, pool)
    single = mark_only(heap, 0)
    scalar = mark_only(heap, 10**9)
    assert pool.submitted >= 1                   # the second worker did take part
    assert np.array_equal(parallel.marks, single.marks)
    assert np.array_equal(single.marks, scalar.marks)
    heap.collect()
    expected = 1 + (n - 1) + len(reached2)
    assert objects(heap) == expected
    assert not live(heap, level1[-1]) and not any(live(heap, p) for p in dead)
    assert [peek(p + 16) for p in level1[:-1]] == list(range(n - 1))


def test_large_object_usable_tail_is_part_of_the_object(heap, mode):
    """Every byte usable_size promises belongs to the object: an interior pointer to the last
    one finds it, and a pointer stored in the last usable word is scanned like any other.
    (For a 40000-byte request usable_size says 40960, but lookup and the marker stop at
    40000.)"""
    force(heap, mode)
    p = heap.alloc(40_000)
    usable = heap.usable_size(p)
    assert usable >= 40_000
    assert heap.lookup(p + usable - 1) == heap.lookup(p) == (p, usable)
    target = heap.alloc(64)
    poke(p + usable - 8, target)
    heap.add_root(p)
    heap.collect()
    assert live(heap, target)


def test_objects_allocated_while_marking_are_black(heap):
    """An allocation made while the cycle marks (here by an after_mark hook on the
    collector's own thread) is live for that cycle even though nothing points to it, and
    the sweep's counts include it; the next cycle frees it."""
    keep = [heap.alloc(48) for _ in range(10)]
    roots = [heap.handle(p) for p in keep]
    made: list[int] = []

    def allocate_during_mark(marker):
        made.extend(heap.alloc(48) for _ in range(3))

    heap._gc.after_mark.append(allocate_during_mark)
    heap.collect()
    heap._gc.after_mark.remove(allocate_during_mark)
    assert len(made) == 3 and all(live(heap, p) for p in made)
    assert objects(heap) == len(keep) + 3
    assert heap._gc.pacer.heap_marked == 48 * (len(keep) + 3)     # the pacer counts them
    heap.verify()
    heap.collect()
    assert not any(live(heap, p) for p in made) and objects(heap) == len(keep)
    del roots


def test_mark_buffers_reused_across_cycles_give_fresh_marks(heap):
    """The collector keeps its mark words, workspaces and chunks from cycle to cycle
    (MarkScratch). Cycles of different sizes, one wide enough for two workers, mark exactly
    what a Marker with fresh buffers marks."""
    rng = random.Random(3)
    heap._gc.scalar_frontier = 0
    heap._gc.native_mark = False
    for n in (PARALLEL_FRONTIER * 2, 3000, 200, 20000):
        hub = heap.alloc(8 * n)
        objs = [heap.alloc(rng.choice([16, 32, 48, 64, 128, 2048])) for _ in range(n)]
        for i, p in enumerate(objs):
            poke(hub + 8 * i, p)
            poke(p, rng.choice(objs) + rng.choice([0, 8]))
        for q in rng.sample(objs, n // 3):
            poke(q, 0)
        root = heap.handle(hub)
        reference = mark_only(heap, 0)           # fresh buffers
        heap._alloc.stop_the_world()
        try:
            heap._gc.sweeper.finish()
            heap._alloc.flush_mcaches()
            marker = heap._gc._mark([])            # the collector's kept buffers
            got, count = marker.marks.copy(), marker.marked_objects
            heap._gc._terminate(marker)
        finally:
            heap._alloc.start_the_world()
        assert np.array_equal(reference.marks, got)
        assert reference.marked_objects == count
        root.release()
        heap.collect()
    heap.verify()


def test_noscan_shortcut_holds_only_without_noscan_spans(heap):
    """shade skips the per-object noscan look-up when no snapshot span is noscan; a heap
    with one noscan object keeps it, and that object is marked but never scanned."""
    force(heap, "vector")
    root = build_tree(heap, 12, 7, typed=False)
    h = heap.handle(root)
    heap.collect()
    assert heap._gc.last_marker.snapshot.all_scannable
    p = heap.alloc(64, noscan=True)
    q = heap.alloc(64)
    poke(p, q)                               # noscan: p's word must not keep q
    TreeNode.from_address(root).check = p    # a scan word: keeps p
    heap.collect()
    assert not heap._gc.last_marker.snapshot.all_scannable
    assert live(heap, p) and not live(heap, q)
    assert check_tree_count(heap, root) == (1 << 12) - 1
    h.release()


def check_tree_count(heap: gcalloc.Heap, root: int) -> int:
    seen, stack = 0, [root]
    while stack:
        p = stack.pop()
        assert live(heap, p)
        seen += 1
        node = TreeNode.from_address(p)
        if node.left:
            stack += [node.left, node.right]
    return seen


def test_native_kernel_is_compiled_when_it_is_ready(heap):
    """The loader compiles the kernel (njit alone would compile it on its first call, in a
    collection with the world stopped), for the very types a collection passes: a cycle
    adds no second compiled version."""
    force(heap, "native")
    assert len(marknative._kernel.signatures) == 1
    h = heap.handle(heap.alloc(32))          # conservative: scanned by the native drain
    heap.collect()
    assert heap._gc.last_marker.native_objects >= 1
    assert len(marknative._kernel.signatures) == 1
    h.release()


def test_native_stack_grows_for_an_object_with_many_pointers(heap):
    """The native drain's mark stack starts at STACK_START entries; an object whose words
    push more than that fills it: the kernel hands back in the middle of the object, the
    stack doubles, and the kernel resumes the object where it stopped, losing nothing."""
    force(heap, "native")
    n = 3 * marknative.STACK_START
    table = heap.alloc(8 * n)
    leaves = [heap.alloc(32) for _ in range(n)]
    for i, p in enumerate(leaves):
        poke(table + 8 * i, p)
        poke(p, i)
    h = heap.handle(table)
    heap.collect()
    m = heap._gc.last_marker
    assert m.native_objects == n + 1 and m.marked_objects == n + 1
    assert objects(heap) == n + 1 and [peek(p) for p in leaves] == list(range(n))
    poke(table + 8 * 7, 0)
    heap.collect()
    assert not live(heap, leaves[7]) and objects(heap) == n
    h.release()


def test_without_the_jit_collect_marks_on_the_numpy_paths():
    """GCALLOC_NO_JIT=1: no native path (it says why), and collect() marks all the same."""
    code = (
        "import ctypes\n"
        "import gcalloc\n"
        "from gcalloc.gc import marknative\n"
        "assert not marknative.available(), 'jit on'\n"
        "assert marknative.why_unavailable() == 'GCALLOC_NO_JIT=1'\n"
        "with gcalloc.Heap(-1) as h:\n"
        "    ps = [h.alloc(16) for _ in range(5000)]\n"
        "    for a, b in zip(ps, ps[1:]):\n"
        "        ctypes.c_uint64.from_address(a).value = b\n"
        "    r = h.handle(ps[0])\n"
        "    h.collect()\n"
        "    m = h._gc.last_marker\n"
        "    assert m.native_objects == 0 and m.marked_objects == 5000, m.marked_objects\n"
        "    assert h.read_memstats().heap_objects == 5000\n"
        "print('ok')\n")
    env = dict(os.environ, GCALLOC_NO_JIT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
