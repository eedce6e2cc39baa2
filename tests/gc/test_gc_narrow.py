"""The graph mark path (gc/markgraph.py) on graphs that mix narrow and wide parts: it marks
what the vectorised and scalar paths mark, and what a model's breadth-first search
reaches, over conservative, typed and noscan objects, interior pointers, pointers into free
slots and past a span's last slot, large and multi-oblet objects; the Marker hands a long
narrow stretch to it and keeps short ones on the scalar path.

Modes as in test_gc_mark.py: (scalar_frontier, graph_cost), the native path off but in
``native``; ``graph`` sends every narrow frontier to the graph path at once, ``graph-only``
every frontier, ``numpy`` is the numpy paths' default crossover.
"""

from __future__ import annotations

import ctypes
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from heaputil import peek, poke
from test_gc_mark import MODES, force, live, mark_only, objects

import gcalloc
from gcalloc.gc import markgraph
from gcalloc.gc.mark import SCALAR_FRONTIER
from gcalloc.gc.markgraph import MIN_SCALAR_WORDS
from gcalloc.gc.types import Type

# A typed node: words 0 and 2 are pointers, word 1 a scalar that may hold an address.
NODE = Type(24, 0b101, "node")


class Graph:
    """A model of what was built: object addresses and the edges the collector may follow
    (model indexes), plus the roots."""

    def __init__(self) -> None:
        self.addrs: list[int] = []
        self.edges: list[list[int]] = []
        self.roots: list[int] = []
        self.keep: list = []                # root tables and their tokens

    def add(self, addr: int) -> int:
        self.addrs.append(addr)
        self.edges.append([])
        return len(self.addrs) - 1

    def reachable(self) -> set[int]:
        seen = set(self.roots)
        stack = list(self.roots)
        while stack:
            for j in self.edges[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen


def build_mixed(heap: gcalloc.Heap, seed: int, n: int = 3000, fan: int = 2500) -> Graph:
    """A chain of n nodes (conservative, typed or large; an interior pointer now and then),
    wide in the middle (a hub with ``fan`` leaves, each leaf a short chain or a noscan
    object), with decoys only a noscan word, a typed node's scalar word, a freed slot or a
    pointer past a span's last slot lead to."""
    rng = random.Random(seed)
    g = Graph()
    decoys = [g.add(heap.alloc(rng.choice([16, 32, 48]))) for _ in range(200)]

    def decoy() -> int:
        return g.addrs[rng.choice(decoys)]

    def node() -> tuple[int, int, int]:
        """(model index, address, word offset of its next pointer)."""
        r = rng.random()
        if r < 0.02:                                    # large, the pointer at the end
            size = rng.choice([40_000, 300_000])        # 300 KB: several oblets
            p = heap.alloc(size)
            return g.add(p), p, size - 8
        if r < 0.4:
            p = heap.alloc(24, type=NODE)
            poke(p + 8, decoy())                        # scalar word: never followed
            return g.add(p), p, 0
        p = heap.alloc(rng.choice([24, 48, 64]))
        return g.add(p), p, 0

    chain = [node() for _ in range(n)]
    for (i, p, off), (j, q, _) in zip(chain, chain[1:]):
        inner = 8 if rng.random() < 0.2 and heap.usable_size(q) >= 16 else 0
        poke(p + off, q + inner)
        g.edges[i].append(j)
    hub_i, hub_p, _ = chain[n // 3]
    hub = heap.alloc(8 * fan)
    h = g.add(hub)
    poke(hub_p + 16, hub)                               # a typed node's word 2, or a
    g.edges[hub_i].append(h)                            # conservative word: followed
    for k in range(fan):
        if k % 5 == 0:                                  # noscan: its words never read
            leaf = heap.alloc(32, noscan=True)
            poke(leaf, decoy())
            g.edges[h].append(g.add(leaf))
        else:
            a, b = heap.alloc(32), heap.alloc(16)
            poke(a, b)
            ia, ib = g.add(a), g.add(b)
            g.edges[h].append(ia)
            g.edges[ia].append(ib)
        poke(hub + 8 * k, g.addrs[g.edges[h][-1]])
    # A pointer past the last slot of a 48-byte span (170 slots, 32 bytes of tail).
    q = heap.alloc(48)
    s = heap._alloc.mheap.span_of(q)
    assert s.limit - s.base < s.npages << 13
    tail = heap.alloc(24)
    poke(tail, s.base + s.nelems * s.elemsize + 8)
    g.edges[chain[n // 2][0]].append(g.add(tail))
    poke(chain[n // 2][1] + 16, tail)
    g.add(q)
    # A freed slot, pointed at from the chain: nothing marked there (its stale word
    # pointing at a decoy is not followed either).
    freed = heap.alloc(48)
    poke(freed, decoy())
    heap.free(freed)
    _, p, off = chain[-1]
    poke(p + off, freed)
    g.roots.append(chain[0][0])
    heap.add_root(chain[0][1])
    # A wide root set (a root range of short chains) ahead of the narrow chain: the first
    # levels are wide (vector path), then only the long chain is left.
    starts = []
    for _ in range(3 * SCALAR_FRONTIER):
        a, b = heap.alloc(16), heap.alloc(16)
        poke(a, b)
        ia, ib = g.add(a), g.add(b)
        g.edges[ia].append(ib)
        g.roots.append(ia)
        starts.append(a)
    table = (ctypes.c_uint64 * len(starts))(*starts)
    g.keep = [table, heap.add_root_range(ctypes.addressof(table), ctypes.sizeof(table))]
    return g


def marked(heap: gcalloc.Heap, marker, g: Graph) -> set[int]:
    got = set()
    for i, p in enumerate(g.addrs):
        s = heap._alloc.mheap.span_of(p)
        if marker.is_marked(s, s.object_index(p)):
            got.add(i)
    return got


@pytest.mark.parametrize("block", [None, 2048], ids=["blocks", "small-blocks"])
@pytest.mark.parametrize("seed", range(3))
def test_mixed_narrow_and_wide_graph_paths_agree(heap, seed, block, monkeypatch):
    """small-blocks: the graph path reads runs of spans in blocks of two pages, so runs
    split into many blocks and a large object's span is a block by itself."""
    if block is not None:
        monkeypatch.setattr(markgraph, "BLOCK_WORDS", block)
    g = build_mixed(heap, seed)
    expected = g.reachable()
    markers = {name: mark_only(heap, SCALAR_FRONTIER if frontier is None else frontier,
                               graph_cost=cost, native=name == "native")
               for name, (frontier, cost) in MODES.items()}
    vector = markers["vector"]
    assert vector.graph_searches == 0 and markers["scalar"].graph_searches == 0
    assert markers["native"].native_objects > 0 and markers["native"].graph_searches == 0
    assert markers["graph-only"].graph_searches == 1
    assert markers["graph-only"].scalar_objects == markers["graph-only"].vector_steps == 0
    assert markers["graph"].graph_searches == 1 and markers["graph"].vector_steps >= 1
    assert markers["numpy"].graph_searches >= 1        # the chain is long enough
    for name, marker in markers.items():
        assert np.array_equal(marker.marks, vector.marks), name
        assert marked(heap, marker, g) == expected, name
        assert marker.marked_objects == len(expected), name


@pytest.mark.parametrize("mode", ["graph", "graph-only", "numpy"])
def test_collect_on_the_graph_path_keeps_the_reachable_with_contents(heap, mode):
    force(heap, mode)
    g = build_mixed(heap, 7, n=2000, fan=500)
    expected = g.reachable()
    words = {i: peek(p) for i, p in enumerate(g.addrs) if i in expected}
    heap.collect()
    assert heap._gc.last_marker.graph_searches >= 1
    assert {i for i, p in enumerate(g.addrs) if live(heap, p)} == expected
    assert objects(heap) == len(expected)
    assert all(peek(g.addrs[i]) == v for i, v in words.items())
    heap.verify()
    heap.collect()                                      # a second cycle: fresh marks
    assert objects(heap) == len(expected)
    heap.verify()


def test_long_list_moves_to_the_graph_path_a_short_one_stays_scalar(heap):
    """The default crossover: a narrow stretch shorter than MIN_SCALAR_WORDS stays on the
    scalar path; a long list hands over after a share of it."""
    heap._gc.native_mark = False
    short = MIN_SCALAR_WORDS // 4                      # 16-byte nodes: 2 words each
    ps = [heap.alloc(16) for _ in range(short)]
    for a, b in zip(ps, ps[1:]):
        poke(a, b)
    root = heap.handle(ps[0])
    heap.collect()
    m = heap._gc.last_marker
    assert m.graph_searches == 0 and m.scalar_objects == short
    n = 60_000
    qs = [heap.alloc(16) for _ in range(n)]
    for a, b in zip(qs, qs[1:]):
        poke(a, b)
    poke(ps[-1], qs[0])
    heap.collect()
    m = heap._gc.last_marker
    assert m.graph_searches == 1 and m.vector_steps == 0
    assert 0 < m.scalar_objects < (short + n) // 2
    assert objects(heap) == short + n
    poke(qs[n // 2], 0)                                # cut: half the list is garbage
    heap.collect()
    assert objects(heap) == short + n // 2 + 1
    assert live(heap, qs[n // 2]) and not live(heap, qs[n // 2 + 1])
    del root


def test_graph_path_off_keeps_a_long_list_scalar(heap):
    heap._gc.graph_cost = math.inf
    heap._gc.native_mark = False
    n = 30_000
    ps = [heap.alloc(16) for _ in range(n)]
    for a, b in zip(ps, ps[1:]):
        poke(a, b)
    heap.add_root(ps[0])
    heap.collect()
    m = heap._gc.last_marker
    assert m.graph_searches == 0 and m.scalar_objects == n


def test_finalizer_referents_marked_on_the_graph_path(heap):
    """A finalizer's object is not marked, but everything it reaches is (mark_referents
    drains through the same dispatch): a long chain hanging off an unreachable object with
    a finalizer survives the cycle that queues the finalizer."""
    force(heap, "graph")
    n = 5000
    head = heap.alloc(32)
    ps = [heap.alloc(24) for _ in range(n)]
    poke(head, ps[0])
    for a, b in zip(ps, ps[1:]):
        poke(a, b)
    calls: list[int] = []
    heap.set_finalizer(head, calls.append)
    heap.collect()
    assert heap._gc.last_marker.graph_searches >= 1
    assert all(live(heap, p) for p in ps)
    assert heap.run_finalizers(30)
    assert calls == [head]
    heap.collect()
    assert not any(live(heap, p) for p in ps) and not live(heap, head)


def test_typed_scalar_words_and_noscan_words_are_not_followed(heap):
    """Only a typed object's pointer words and a scan object's words lead anywhere, on the
    graph path as on the others."""
    force(heap, "graph-only")
    a = heap.alloc(24, type=NODE)
    b = heap.alloc(40, noscan=True)
    via_scalar, via_noscan, via_ptr = heap.alloc(16), heap.alloc(16), heap.alloc(16)
    poke(a, b)
    poke(a + 8, via_scalar)
    poke(a + 16, via_ptr)
    poke(b, via_noscan)
    heap.add_root(a)
    heap.collect()
    assert heap._gc.last_marker.graph_searches == 1
    assert live(heap, a) and live(heap, b) and live(heap, via_ptr)
    assert not live(heap, via_scalar) and not live(heap, via_noscan)


def test_graph_path_with_arrays_of_typed_elements(heap):
    """An array of typed elements: the mask repeats per element, and the graph path reads
    pointer bits per word."""
    force(heap, "graph-only")
    k = 200
    arr = heap.alloc(NODE.size * k, type=NODE)
    targets = [heap.alloc(16) for _ in range(2 * k)]
    for e in range(k):
        poke(arr + 24 * e, targets[2 * e])              # word 0: pointer
        poke(arr + 24 * e + 8, targets[2 * e + 1])      # word 1: scalar
    heap.add_root(arr)
    heap.collect()
    assert [live(heap, p) for p in targets] == [True, False] * k
    u64 = ctypes.c_uint64
    assert u64.from_address(arr).value == targets[0]


@pytest.mark.parametrize("mode", ["vector", "scalar", "graph-only"])
def test_words_past_a_spans_last_slot_are_not_scanned(heap, mode):
    """The tail of a span's pages past its last slot holds no object: a stale address there
    keeps nothing alive (the graph path reads whole pages and must mask it off)."""
    force(heap, mode)
    ps = [heap.alloc(48) for _ in range(170)]          # one span of 170 slots
    s = heap._alloc.mheap.span_of(ps[0])
    assert all(heap._alloc.mheap.span_of(p) is s for p in ps)
    tail = s.base + s.nelems * s.elemsize
    assert tail + 8 <= s.base + (s.npages << 13)
    orphan = heap.alloc(64)
    poke(tail, orphan)
    table = heap.alloc(8 * len(ps))
    for i, p in enumerate(ps):
        poke(table + 8 * i, p)
    heap.add_root(table)
    heap.collect()
    assert all(live(heap, p) for p in ps)
    assert not live(heap, orphan)


def test_import_gcalloc_leaves_scipy_for_the_first_search():
    """scipy.sparse costs ~0.3-0.5 s to import: gcalloc imports it on the first graph
    search, not with itself."""
    code = "import sys, gcalloc; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(gcalloc.__file__)))
    assert out.stdout.strip() == "False"


def test_scatter_rows_when_the_last_span_ends_inside_a_step():
    """Spans numbered at equal steps whose last one ends less than a step before the end of
    the count array: the strided store would overrun it (a reshape error seen with four C
    threads building lists at GOGC=10); the counts still land at their object numbers."""
    from gcalloc.gc.markgraph import _scatter_rows

    first = np.array([0, 4, 8])
    c = np.arange(1, 7, dtype=np.int64).reshape(3, 2)
    cnt = np.zeros(10, np.int64)
    _scatter_rows(cnt, first, c)
    expected = np.zeros(10, np.int64)
    expected[(first[:, None] + np.arange(2)).ravel()] = c.ravel()
    assert np.array_equal(cnt, expected)
    wide = np.zeros(12, np.int64)          # room for every step: the strided store
    _scatter_rows(wide, first, c)
    assert np.array_equal(wide[:10], expected) and not wide[10:].any()
