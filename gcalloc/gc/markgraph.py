"""The graph mark path: a narrow frontier that stays narrow (a linked list, a deep chain, a
caterpillar) finished in compiled code. The candidate edges of the scan spans still holding
objects to scan are extracted as arrays with numpy, and one breadth-first search in scipy's
``scipy.sparse.csgraph`` marks everything they reach from the frontier.

Why: the scalar path (gc/markscalar.py) pays Python interpretation per object, about a
microsecond, so a 10^6-node list costs a second; the vectorised path pays numpy's per-call
cost per breadth-first level, and a list has 10^6 levels. Here the per-object work is numpy
over all candidate words at once, and the per-level work is scipy's C loop.

What it reads, and what that costs: every word of every scan span of the snapshot that holds
a white or grey object. That is O(words of those spans): it grows with what is *not yet
marked*, garbage included, not only with what is live. The Marker therefore runs this path
only once the scalar path, in one narrow stretch, has scanned a share (GRAPH_WORD_COST) of
those words itself, which bounds the extra cost when the search turns out to reach little
(docs/gc.md, "Which path marks what").

The steps, all whole-array (``_edges``, ``_targets``, ``drain``):
1. the spans to read: scan spans of the snapshot with an object that is not black (marked
   and not in the frontier), in *runs* of spans of one kind (slots, element size, typed or
   not) that follow each other in the heap, so that a run's words are one view of the heap
   with a row per span;
2. per run: keep the words inside the heap; for a typed run keep only the words whose
   heap-bitmap pointer bit is set (``SpanSnapshot.pointer_bits``); count each object's kept
   words (the run reshaped to a row per object);
3. ``find_objects``: findObject over arrays for the kept words, as the vectorised path
   resolves candidates (page -> span id -> span mirror -> slot, divmul), then the isFree
   check (slots at or past freeidx need their allocBit); a word that points at no
   allocated object of the snapshot points at a sink node instead;
4. a CSR graph: a row for each object read (black ones too: their targets are marked
   already, so reaching them changes nothing; a free slot is never a target, so its stale
   words are never followed), a leaf node for every object number, the sink, and a virtual
   root with an edge to each frontier object; ``breadth_first_order`` from the root, and
   every object node it reaches is marked.

Invariants, the same as the other paths': only allocated objects end marked (step 3 sends
pointers outside the snapshot's spans, past a span's last slot and into free slots to the
sink); noscan objects are marked but never scanned (their spans' words are never read);
typed objects are scanned only at the words their heap bitmap marks as pointers (step 2);
the path marks what the scalar and vectorised paths mark from the same frontier (tests
compare them on random graphs). It finishes the frontier: nothing is grey after it.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from gcalloc.gc.spansnapshot import SpanSnapshot
from gcalloc.sizeclasses import PAGE_SHIFT

# When the graph path pays (measured with bench/bench_gc.py; docs/gc.md, "Which path marks
# what"): the search costs about 1/30 of the scalar path's time per word, over every word of
# the scan spans not yet all black. Handing over once the scalar path has scanned
# GRAPH_WORD_COST of those words in one narrow stretch means it has spent about 1/6 of the
# search's cost by then: a long list pays ~15% more than the search alone, and a stretch
# that would have ended right after the hand-over costs at most ~7x the scalar path's.
GRAPH_WORD_COST = 1 / 192
MIN_SCALAR_WORDS = 8192     # a narrow stretch shorter than this always stays scalar
BLOCK_WORDS = 1 << 18       # words read per block (2 MiB; a span bigger than that alone)
KEEP_ENTRIES = 1 << 22      # arrays up to this many entries are kept between cycles


class GraphPath:
    """Finishes narrow frontiers of one cycle into its mark words ``state`` with a
    breadth-first search in compiled code. Counts the objects it marked, the words it read
    and the searches it ran."""

    def __init__(self, snap: SpanSnapshot, state: np.ndarray, cost: float | None = None,
                 pool: GraphBuffers | None = None) -> None:
        self.snap = snap
        self.state = state
        self.pool = GraphBuffers() if pool is None else pool
        self.cost = GRAPH_WORD_COST if cost is None else cost
        self.min_words = MIN_SCALAR_WORDS if cost is None else 0
        self.marked = self.scanned = self.runs = 0
        self._scan_words: int | None = None
        self._end: np.ndarray | None = None
        self._words: np.ndarray | None = None
        self._sure: np.ndarray | None = None

    def scan_words(self) -> int:
        """Words of all the snapshot's scan spans' slots (an upper bound on what a search
        reads; computed once per cycle, O(spans))."""
        if self._scan_words is None:
            sn = self.snap
            ids = sn.ids[sn.scannable[sn.ids]]
            nelems = sn.table.nelems[ids].astype(np.int64)
            self._scan_words = int((nelems * sn.wsize[ids]).sum())
        return self._scan_words

    def scalar_budget(self, stretch: int, scanned_before: int) -> int:
        """Words the scalar path may still scan in the current narrow stretch (``stretch``
        words so far; ``scanned_before`` words scanned in this cycle before it) before a
        search pays: the white scan words are at most scan_words() - scanned_before, and
        a search costs about ``cost`` of the scalar path's time per such word."""
        if self.cost == math.inf:                      # the graph path turned off
            return 1 << 62
        if stretch < self.min_words:                   # a cycle's usual case: no O(spans)
            return self.min_words - stretch            # pass, and ask again after that
        white = self.scan_words() - scanned_before
        return max(self.min_words, int(white * self.cost)) - stretch

    def worth_it(self, stretch: int, scanned_before: int) -> bool:
        """Whether to search now, the scalar path having scanned ``stretch`` words in the
        current narrow stretch."""
        return self.scalar_budget(stretch, scanned_before) <= 0

    def drain(self, sids: np.ndarray, idxs: np.ndarray) -> None:
        """Mark everything reachable from the grey objects (span ids, slots)."""
        sn = self.snap
        state = self.state
        self.runs += 1
        total = sn.total
        grey = sn.gbase[sids] + idxs
        # Nodes: the object numbers; a sink (total) that every pointer to no allocated
        # object leads to; a virtual root (total + 1) with an edge to each grey object.
        root = total + 1
        cnt = self.pool.get("cnt", total + 2, np.int32)
        cnt.fill(0)
        indices = self._edges(grey, cnt)
        cnt[root] = len(grey)
        indptr = self.pool.get("indptr", total + 3, np.int32)
        indptr[0] = 0
        np.cumsum(cnt, out=indptr[1:])
        # Imported on the first search, not with gcalloc: scipy.sparse takes ~0.3-0.5 s to
        # import, and most programs never make a narrow stretch this long.
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import breadth_first_order
        # The search reads only indices and indptr: the weights need not be real memory.
        ones = np.broadcast_to(np.float64(1.0), indices.shape)
        graph = csr_matrix((ones, indices, indptr), shape=(total + 2, total + 2))
        order = breadth_first_order(graph, root, directed=True, return_predecessors=False)
        reached = order[order < total]
        self.marked += int(np.count_nonzero(np.take(state, reached) == 0))
        state[reached] = 1

    def _edges(self, grey: np.ndarray, cnt: np.ndarray) -> np.ndarray:
        """The CSR indices of the search: the candidate edges of the scan spans that hold a
        white or ``grey`` object, in object-number order of their sources (a target is an
        object number, or ``total`` for a word pointing at no allocated object), then the
        grey objects (the root's edges). Each object's edge count goes to ``cnt``.

        Every object of those spans is a source, black ones included: a black object's
        targets are all marked already, so reaching it changes nothing, and an unallocated
        slot is never a target, so its stale words are never followed. The spans are read
        in *runs*: spans of one (element size, slots, typed) kind that lie end to end in
        the heap, a block of at most BLOCK_WORDS words at a time (whole spans), each a view
        of the heap reshaped to a row per span and a row per object."""
        sn = self.snap
        ids = sn.ids
        if len(ids):
            # Black objects per span: sums from each span's first object number to the
            # next span's (padding between, never marked); the scan spans not all black.
            black = self.state[:sn.total] > 0
            black[grey] = False
            nblack = np.add.reduceat(black, sn.gbase[ids], dtype=np.int64)
            ids = ids[sn.scannable[ids] & (nblack < sn.table.nelems[ids])]
        nel = sn.table.nelems[ids].astype(np.int64)
        welem = sn.welem[ids]
        # A span with a span type (layout > 0) has precise bits too: filter it as typed.
        typed = sn.typed[ids] | (sn.layout[ids] > 0)
        # kind: one object per span (large objects and the biggest classes: sizes differ),
        # else element size and slots; typed spans apart (their words are filtered)
        kind = np.where(nel == 1, 0, welem * 65536 + nel) * 2 + typed
        wbase = sn.wbase[ids]
        by = np.lexsort((wbase, kind))
        ids, nel, welem, kind, wbase = ids[by], nel[by], welem[by], kind[by], wbase[by]
        lens = np.where(nel == 1, sn.wsize[ids], nel * welem)
        # A span's pages, in words (past its last slot: a tail of a few words); a block's
        # spans have one kind, one size, follow each other in the heap and hold at most
        # BLOCK_WORDS words between them (or are one span).
        stride = self._span_words()[ids]
        first = np.cumsum(stride) - stride
        block = first // BLOCK_WORDS
        cut = np.flatnonzero((np.diff(kind) != 0) | (np.diff(stride) != 0)
                             | (np.diff(lens) != 0) | (np.diff(block) != 0)
                             | (wbase[1:] != wbase[:-1] + stride[:-1])) + 1
        out = self.pool.get("indices", int(lens.sum()) + len(grey), np.int32)
        n = 0
        span_first: list[np.ndarray] = []            # per span read: first object number
        span_edges: list[np.ndarray] = []            # and edge count
        for i, j in zip([0, *cut.tolist()], [*cut.tolist(), len(ids)]):
            gb = sn.gbase[ids[i:j]]
            c = self._block(int(wbase[i]), j - i, int(stride[i]), int(lens[i]),
                            int(nel[i]), int(welem[i]), int(kind[i]), out, n)
            if c.ndim == 1:                              # one object per span
                cnt[gb] = c
                span_edges.append(c)
            else:
                _scatter_rows(cnt, gb, c)
                span_edges.append(c.sum(axis=1, dtype=np.int32))
            span_first.append(gb)
            n += int(span_edges[-1].sum())
        self.scanned += int(lens.sum())
        if span_first:
            _object_order(out[:n], np.concatenate(span_first), np.concatenate(span_edges))
        out[n:n + len(grey)] = grey
        return out[:n + len(grey)]

    def _block(self, a: int, m: int, k: int, used: int, nel: int, welem: int, kind: int,
               out: np.ndarray, n: int) -> np.ndarray:
        """The candidate edges of m spans of one kind starting at heap word a, k words
        apart, ``used`` words of slots each: their targets go to out[n:], and the edge
        counts are returned per object (m x nel) or, for spans of one object, per span."""
        sn = self.snap
        pool = self.pool
        lo, hi = np.uint64(sn.heap_lo), np.uint64(sn.heap_hi)
        words = sn.heap_words[a:a + m * k]
        # Compares, not a subtraction: no array of words made; the tails masked off.
        inside = np.greater_equal(words, lo, out=pool.get("inside", len(words), np.bool_))
        inside &= np.less(words, hi, out=pool.get("inside2", len(words), np.bool_))
        per_span = inside.reshape(m, k)
        per_span[:, used:] = False
        e = int(np.count_nonzero(inside))
        at = np.compress(inside, pool.iota(len(words)), out=pool.get("at", e, np.int64))
        if kind & 1:                                     # typed: only the pointer words
            ptr = sn.pointer_bits(((at + a) << 3).astype(np.uint64) + lo)
            inside[at[~ptr]] = False
            at = at[ptr]
            e = len(at)
        if kind < 2:
            counts = _row_sums(per_span[:, :used])
        else:
            counts = _row_sums(per_span[:, :used].reshape(m, nel, welem))
        d = np.take(words, at, out=pool.get("d", e, np.uint64), mode="clip")
        d -= lo
        self._targets(d.view(np.int64), out[n:n + e])
        return counts

    def _targets(self, d: np.ndarray, out: np.ndarray) -> None:
        """Into out: the object number each heap offset points at if that is an allocated
        object of the snapshot, else ``total`` (one past every object: the drain's sink)."""
        sn = self.snap
        pool = self.pool
        e = len(d)
        sid, g = find_objects(sn, d, pool.get("sid", e, np.int64), pool.get("g", e, np.int64),
                              pool.get("t", e, np.int64))
        sure = np.take(self._sure_end(), sid, out=pool.get("t", e, np.int64), mode="clip")
        # One comparison settles the usual pointer: into a slot below freeidx (allocated).
        doubt = np.flatnonzero(np.greater_equal(d, sure, out=pool.get("b", e, np.bool_)))
        out[:] = g
        if len(doubt):
            dd, ds = d[doubt], sid[doubt]
            slot = g[doubt] - sn.gbase[ds]
            ok = dd < self._slot_end()[ds]                # in a slot of a snapshot span
            slot = np.where(ok, slot, 0)
            byte = sn.bits8[sn.table.allocbits[ds].astype(np.int64) + (slot >> 3)]
            ok &= ((byte >> (slot & 7).astype(np.uint8)) & 1).astype(np.bool_)   # isFree
            out[doubt[~ok]] = sn.total

    def _sure_end(self) -> np.ndarray:
        """Per span id: the heap offset past its slots below freeidx, which are allocated
        (0 outside the snapshot)."""
        if self._sure is None:
            sn = self.snap
            sn.refine_freeidx()
            t = sn.table
            below = sn.rbase + np.minimum(sn.freeidx, t.nelems) * t.elemsize.astype(np.int64)
            self._sure = np.minimum(np.where(t.nelems == 1, np.where(sn.freeidx > 0, sn.rlimit, 0),
                                             below), self._slot_end())
        return self._sure

    def _span_words(self) -> np.ndarray:
        """Per span id: the words of its pages (snapshot spans; made once per cycle)."""
        if self._words is None:
            sn = self.snap
            self._words = np.zeros(sn.table.capacity, np.int64)
            self._words[sn.ids] = [s.npages for s in sn.spans]
            self._words <<= PAGE_SHIFT - 3
        return self._words

    def _slot_end(self) -> np.ndarray:
        """Per span id: the heap offset just past its last slot (0 outside the snapshot),
        so that one comparison drops pointers past a span's slots and outside spans."""
        if self._end is None:
            sn = self.snap
            t = sn.table
            ends = sn.rbase + (t.nelems.astype(np.int64) * t.elemsize.astype(np.int64))
            self._end = np.where(t.nelems == 1, sn.rlimit, np.minimum(ends, sn.rlimit))
        return self._end


def _object_order(targets: np.ndarray, first: np.ndarray, edges: np.ndarray) -> None:
    """Reorder the edges, read span after span (``first``: each span's first object number,
    ``edges``: its edge count), in place, span by span into object-number order, as the
    rows of a CSR matrix go. Spans read in that order already (the usual case) cost a
    check."""
    if len(first) < 2 or bool((first[1:] > first[:-1]).all()):
        return
    by = np.argsort(first, kind="stable")
    old = np.cumsum(edges, dtype=np.int64) - edges
    moved = edges[by].astype(np.int64)
    new = np.cumsum(moved) - moved
    targets[:] = targets[np.repeat(old[by] - new, moved) + np.arange(len(targets))]


def _scatter_rows(cnt: np.ndarray, first: np.ndarray, c: np.ndarray) -> None:
    """cnt[first[i] + j] = c[i, j]: spans' object counts into their object numbers; spans
    numbered at equal steps (consecutive in the snapshot, the usual case) as one strided
    store."""
    m, n = c.shape
    step = int(first[1] - first[0]) if m > 1 else n
    a = int(first[0])
    # The strided store needs the last row's whole step inside cnt: the last span's object
    # numbers may end closer to cnt's end than a step.
    if (step >= n and a + m * step <= len(cnt)
            and bool((np.diff(first) == step).all())):
        cnt[a:a + m * step].reshape(m, step)[:, :n] = c
    else:
        cnt[first[:, None] + np.arange(n)] = c


def _row_sums(m: np.ndarray) -> np.ndarray:
    """How many are set along the last axis of a bool array (a few: added column by column,
    faster than a reduction along the short axis)."""
    if m.shape[-1] > 8:
        return m.sum(axis=-1, dtype=np.int32)
    out = m[..., 0].astype(np.int32)
    for j in range(1, m.shape[-1]):
        out += m[..., j]
    return out


def find_objects(sn: SpanSnapshot, d: np.ndarray, sid: np.ndarray, g: np.ndarray,
                 tmp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """findObject over arrays: for heap offsets d (pointer - heap_lo, each in [0, heap_hi -
    heap_lo)), into sid and g (tmp: scratch of the same length): the span id of each one's
    page and the object number it points into if it points into a slot of that span
    (whether it does, and whether the slot is allocated, is the caller's check). The same
    resolution as the vectorised path's shade."""
    if sn.contiguous:
        np.take(sn.page_sids(), np.right_shift(d, PAGE_SHIFT, out=tmp), out=sid, mode="clip")
    else:
        page = sn.page_index_general(d)
        sid[:] = np.where(page >= 0, np.take(sn.page_sids(), np.maximum(page, 0)), 0)
    off = np.subtract(d, np.take(sn.rbase, sid, out=tmp, mode="clip"), out=tmp).view(np.uint64)
    off *= np.take(sn.divmul, sid, out=g.view(np.uint64), mode="clip")
    off >>= np.uint64(32)
    np.take(sn.gbase, sid, out=g, mode="clip")
    g += off.view(np.int64)
    return sid, g


class GraphBuffers:
    """The graph path's arrays, kept from cycle to cycle with the Collector's MarkScratch (a
    fresh multi-MB numpy temporary costs a page fault per 4 KiB, much of a search's time):
    by name, each grown as needed, kept up to KEEP_ENTRIES entries (bigger ones are made
    for the one search). A block's arrays are at most BLOCK_WORDS long, so what is kept is
    a few MiB plus the CSR arrays, one int32 per object number and per edge."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._iota = np.zeros(0, np.int64)

    def get(self, name: str, n: int, dtype: type) -> np.ndarray:
        a = self._arrays.get(name)
        if a is None or len(a) < n or a.dtype != dtype:
            a = np.empty(n + (n >> 3), dtype)
            if len(a) <= KEEP_ENTRIES:
                self._arrays[name] = a
        return a[:n]

    def iota(self, n: int) -> np.ndarray:
        """0, 1, ..., n - 1."""
        if len(self._iota) < n:
            self._iota = np.arange(max(n, min(BLOCK_WORDS, KEEP_ENTRIES)), dtype=np.int64)
        return self._iota[:n]


_POOLS: weakref.WeakKeyDictionary[object, GraphBuffers] = weakref.WeakKeyDictionary()


def buffers_of(owner: object) -> GraphBuffers:
    """The GraphBuffers kept with ``owner`` (a Collector's MarkScratch)."""
    pool = _POOLS.get(owner)
    if pool is None:
        pool = _POOLS[owner] = GraphBuffers()
    return pool
