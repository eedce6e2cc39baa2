"""Mark: stop-the-world tri-colour marking into a per-cycle array of mark words, then into
each span's gcmarkBits (Go's mgcmark.go gcDrain and gcMarkTermination's marking, done as
whole-frontier array operations). This module owns the Marker, which drives one cycle:
it builds the cycle's span snapshot, chooses a path for each frontier, and packs the marks.

Colours: an object is white until its mark word is set (grey), and black once its words have
been scanned. The grey set is a *frontier* of (span id, slot) pairs, kept in chunks. Once
numba has loaded it, the **native** path (gc/marknative.py) drains every frontier in one
compiled loop, as Go's gcDrain does. Without it the numpy paths do, and they must all agree
(tests compare them on random graphs):

- the **vectorised** path (gc/markvec.py), for frontiers wider than ``scalar_frontier``:
  one breadth-first level at a time, as numpy array operations;
- the **scalar** path (gc/markscalar.py), for narrow frontiers (a long linked list has a
  frontier of one object): a loop in Python over the same structures, handing the frontier
  back to the vectorised path once it grows wide;
- the **graph** path (gc/markgraph.py), for narrow frontiers that stay narrow: one
  breadth-first search in scipy over the candidate edges.

Frontiers of PARALLEL_FRONTIER objects or more are split between two mark workers (numpy
releases the interpreter lock inside each array operation).

The rest lives beside it: gc/spansnapshot.py numbers the cycle's objects (span ``sid``'s slot
``i`` is ``gbase[sid] + i``, each span's range padded to 64) and holds the per-span tables;
gc/markbuf.py holds the frontier chunks, the workers' scratch arrays and the MarkScratch the
Collector keeps from cycle to cycle. Mark words (int32, one per numbered object): 0 white,
> 0 marked (a shade ticket, or 1), -1 a free slot a candidate pointed at. ``finish`` packs
``> 0`` into gcmarkBits: thanks to the padding, span by span exactly its bytes.

Invariants: only allocated objects end the cycle marked (each path drops pointers into free
slots, free spans or outside the heap; objects allocated during marking are allocated
black, so live this cycle: ``finish`` marks them, in snapshot spans or not); noscan objects
are marked but never scanned, on either path or through ``mark_referents``; typed objects
are scanned only at the words their heap bitmap marks as pointers; a grey object is in
exactly one frontier, except that two mark workers racing on one object may both scan it
(``_parallel_step``); every path marks the same objects.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import TYPE_CHECKING

import numpy as np

from gcalloc.gc.markbuf import CHUNK_CAP, OBLET_WORDS, Frontier, MarkScratch
from gcalloc.gc.markgraph import GraphPath, buffers_of
from gcalloc.gc.marknative import NativePath
from gcalloc.gc.markscalar import ScalarPath
from gcalloc.gc.markvec import VectorPath
from gcalloc.gc.spansnapshot import SpanSnapshot
from gcalloc.mspan import SPAN_IN_USE, MSpan

if TYPE_CHECKING:
    from gcalloc.mheap import MHeap

# Imported from here by the Collector and the tests.
__all__ = ["CHUNK_CAP", "OBLET_WORDS", "PARALLEL_FRONTIER", "SCALAR_FRONTIER", "MarkScratch",
           "Marker"]

SCALAR_FRONTIER = 48        # frontiers at most this wide drain in Python
PARALLEL_FRONTIER = 16384   # frontiers at least this wide are split between two workers


class Marker:
    """One cycle's marking state over the in-use spans of an allocator.

    pool: a one-thread executor for the second mark worker, or None to mark on this thread
    only. scratch: the buffers kept from cycle to cycle (fresh ones if None). graph_cost:
    when a narrow stretch moves to the graph path (markgraph.GRAPH_WORD_COST if None; 0
    moves every narrow frontier there at once, tests use it to force the path)."""

    def __init__(self, mheap: MHeap, spans: list[MSpan], scalar_frontier: int = SCALAR_FRONTIER,
                 pool: Executor | None = None, scratch: MarkScratch | None = None,
                 graph_cost: float | None = None, native: bool = False) -> None:
        self.mheap = mheap
        self.spans = spans
        self.scalar_frontier = scalar_frontier
        self.pool = pool
        self.scratch = MarkScratch() if scratch is None else scratch
        self.snapshot = SpanSnapshot(mheap, spans)
        self.state = self.scratch.mark_words(self.snapshot.total)   # the mark words
        self.vector = VectorPath(self.snapshot, self.state, self.scratch)
        self.scalar = ScalarPath(self.snapshot, self.state, scalar_frontier)
        self.graph = GraphPath(self.snapshot, self.state, graph_cost, buffers_of(self.scratch))
        self.native = (NativePath(self.snapshot, self.state)
                       if native and NativePath.usable(self.snapshot) else None)
        self.vector_steps = 0
        self._marked_here = 0        # by mark_object
        self._packed: np.ndarray | None = None   # finish's packed marks
        self.black: list[int] = []   # objects allocated during marking (allocate black)

    # --- the snapshot tables the Collector, its hooks and the tests read ----------------

    @property
    def ids(self) -> np.ndarray:
        return self.snapshot.ids

    @property
    def total(self) -> int:
        return self.snapshot.total

    @property
    def objsize(self) -> np.ndarray:
        return self.snapshot.objsize

    @property
    def in_snapshot(self) -> np.ndarray:
        return self.snapshot.in_snapshot

    @property
    def freeidx(self) -> np.ndarray:
        return self.snapshot.freeidx

    # --- entry points ------------------------------------------------------------------

    def mark_from(self, candidates: np.ndarray) -> None:
        """Mark everything reachable from the candidate pointers."""
        self._drain(self.vector.shade(np.asarray(candidates, dtype=np.uint64)))

    def drain(self, sids: np.ndarray, idxs: np.ndarray) -> None:
        """Mark everything reachable from the grey objects (span ids, slots)."""
        self._drain(Frontier.of(sids, idxs))

    @property
    def marked_objects(self) -> int:
        return (sum(self.vector.marked) + self.scalar.marked + self.graph.marked
                + self._native_count("marked") + self._marked_here)

    @property
    def scanned_words(self) -> int:
        return (sum(self.vector.scanned) + self.scalar.scanned + self.graph.scanned
                + self._native_count("scanned"))

    @property
    def native_objects(self) -> int:
        """Objects the native path scanned (0 when it is off or unavailable)."""
        return self._native_count("objects")

    def _native_count(self, name: str) -> int:
        return 0 if self.native is None else getattr(self.native, name)

    @property
    def scalar_objects(self) -> int:
        return self.scalar.objects

    @property
    def graph_searches(self) -> int:
        return self.graph.runs

    def _drain(self, frontier: Frontier) -> None:
        if self.native is not None:
            if frontier.count:
                self.native.drain(*_arrays(frontier))
            self.scratch.release(frontier.buffers)
            return
        stretch = 0   # words the scalar path scanned since the frontier was last wide
        while frontier.count:
            if frontier.count <= self.scalar_frontier:
                budget = self.graph.scalar_budget(stretch, self.scanned_words - stretch)
                if budget > 0:
                    sids, idxs = frontier.lists()
                    self.scratch.release(frontier.buffers)
                    before = self.scalar.scanned
                    frontier = Frontier.of(*self.scalar.drain(sids, idxs, budget))
                    stretch += self.scalar.scanned - before
                    if not (frontier.count and frontier.count <= self.scalar_frontier
                            and self.graph.worth_it(stretch, self.scanned_words - stretch)):
                        continue
                # Narrow for long enough: the graph path marks all that is reachable.
                self.graph.drain(*_arrays(frontier))
                self.scratch.release(frontier.buffers)
                return
            stretch = 0
            self.vector_steps += 1
            self.snapshot.refine_freeidx()
            if self.pool is not None and frontier.count >= PARALLEL_FRONTIER:
                nxt = self._parallel_step(self.pool, frontier)
            else:
                nxt = self.vector.step(frontier.chunks)
            self.scratch.release(frontier.buffers)
            frontier = nxt

    def _parallel_step(self, pool: Executor, frontier: Frontier) -> Frontier:
        """One vector step with the frontier split between two workers (numpy releases the
        interpreter lock inside array operations). Both may mark the same object at once and
        both then scan it: a repeat, never a loss (see markvec's _shade_block)."""
        mine, theirs = frontier.split()
        self.scratch.workspace(1)   # made here: two threads growing the list could swap them
        other = pool.submit(self.vector.step, theirs, 1)
        return self.vector.step(mine, 0).join(other.result())

    # --- allocate black and termination ------------------------------------------------

    def allocated_black(self, p: int) -> None:
        """An object allocated while marking: it is live this cycle."""
        self.black.append(p)

    def finish(self) -> None:
        """Write every span's gcmarkBits from the mark words (and the black allocations)."""
        sn = self.snapshot
        if sn.total:
            packed = self._packed_marks()
            nbytes = sn.padded >> 3
            starts = np.cumsum(nbytes) - nbytes
            dest = np.repeat(sn.table.markbits[sn.ids] - starts, nbytes) + \
                np.arange(len(packed), dtype=np.int64)
            sn.bits8[dest] = packed
        for p in self.black:          # black objects in spans the cycle did not number
            s = self.mheap.span_of(p)
            if s is None or s.state != SPAN_IN_USE or sn.in_snapshot[s.id]:
                continue
            idx = s.object_index(p)
            byte = s.gcmarkBits + (idx >> 3)
            sn.bits8[byte] = int(sn.bits8[byte]) | (1 << (idx & 7))

    @property
    def marks(self) -> np.ndarray:
        """1 for each marked object number, else 0 (uint8; tests compare markers with it)."""
        return (self.state > 0).view(np.uint8)

    def _packed_marks(self) -> np.ndarray:
        """The marks packed 8 to a byte, span by span exactly the bytes of its gcmarkBits
        (computed once, after marking is over)."""
        if self._packed is None:
            self._mark_black_in_snapshot()
            self._packed = np.packbits(self.state > 0, bitorder="little")
        return self._packed

    def _mark_black_in_snapshot(self) -> None:
        """Black objects in numbered spans are marked in their mark words, so that the
        packed marks, marked_per_span (and the batch sweep that trusts it) count them."""
        for p in self.black:
            s = self.mheap.span_of(p)
            if s is not None and s.state == SPAN_IN_USE and self.snapshot.in_snapshot[s.id]:
                self.state[int(self.snapshot.gbase[s.id]) + s.object_index(p)] = 1

    def marked_per_span(self) -> np.ndarray:
        """Objects marked in each span of ``spans`` (in order), after marking is over:
        popcounts of the packed marks, 64 slots at a time (each span's range is a multiple
        of 64), summed per span."""
        if not self.snapshot.total:
            return np.zeros(0, np.int64)
        counts = np.bitwise_count(self._packed_marks().view(np.uint64))
        chunks = self.snapshot.padded >> 6
        return np.add.reduceat(counts, np.cumsum(chunks) - chunks, dtype=np.int64)

    def is_marked(self, s: MSpan, idx: int) -> bool:
        """Whether slot idx of snapshot span s is marked (before finish)."""
        return bool(self.state[int(self.snapshot.gbase[s.id]) + idx] > 0)

    # --- specials (gc/finalizer.py) ----------------------------------------------------

    def mark_referents(self, sids: np.ndarray, idxs: np.ndarray) -> None:
        """Mark everything reachable from the given objects (snapshot span ids, slots)
        without marking the objects themselves, unless their referents lead back to them:
        Go's markroot for finalizer specials. Noscan objects reference nothing."""
        scan = self.snapshot.scannable[sids]
        sids, idxs = sids[scan], idxs[scan]
        if len(sids):
            self._drain(self.vector.step(Frontier.of(sids, idxs).chunks))

    def mark_object(self, s: MSpan, idx: int) -> bool:
        """Mark slot idx of snapshot span s without scanning it (its referents are marked
        already); True if it was white."""
        g = int(self.snapshot.gbase[s.id]) + idx
        if self.state[g]:
            return False
        self.state[g] = 1
        self._marked_here += 1
        return True


def _arrays(frontier: Frontier) -> tuple[np.ndarray, np.ndarray]:
    """A frontier's (span ids, slots) as two arrays."""
    if len(frontier.chunks) == 1:
        return frontier.chunks[0]
    return (np.concatenate([s for s, _ in frontier.chunks]),
            np.concatenate([i for _, i in frontier.chunks]))
