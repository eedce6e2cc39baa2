"""Mark: stop-the-world tri-colour marking into a per-cycle array of mark words, then into
each span's gcmarkBits (Go's mgcmark.go, done as whole-frontier array operations).

Colours: an object is white until its mark word is set (grey), and black once its words have
been scanned. The grey set is a *frontier* of (span id, slot) pairs, kept in chunks. Two
paths drain it and must agree (tests compare them on random graphs):

- **vectorised**, for wide frontiers, one breadth-first level (a *vector step*) at a time,
  in *blocks* of at most BLOCK_WORDS candidate words (plus one oblet):
  ``_gather`` reads every word of the block's objects with one np.take from a view of the
  heap (word k of every object together, so the broadcast runs along the long axis);
  ``_typed_filter`` drops typed objects' words whose heap-bitmap pointer bit is clear;
  ``_shade_block`` resolves every candidate at once (findObject over arrays: heap offset ->
  page -> span id -> span mirror -> slot and object number), keeps the white objects,
  deduplicates them with one scatter of tickets into their mark words (which marks them
  too), only then checks that they are allocated (once per object, not once per pointer to
  it; spans whose allocBits are all set skip it), and appends the scannable ones to the
  next frontier. All of it runs in each worker's Workspace buffers (np.take and ufuncs with
  out=; selections by one np.flatnonzero) and the frontier chunks come from a pool, so a
  step allocates almost nothing: fresh numpy temporaries cost a page fault per 4 KiB,
  a large part of the time of a collection of a large heap;
- **scalar**, for narrow frontiers (a long linked list has a frontier of one object): a loop
  in Python over the same structures, one frontier (breadth-first level) at a time.

Frontiers of PARALLEL_FRONTIER objects or more are split between two mark workers (numpy
releases the interpreter lock inside each array operation).

Objects are numbered for the cycle: span ``sid``'s slot ``i`` is ``gbase[sid] + i``, with each
span's range rounded up to 64 so that packing the marks gives, span by span, exactly the
bytes of its gcmarkBits. Mark words (int32): 0 white, > 0 marked (a shade ticket, or 1), -1 a
free slot a candidate pointed at. ``finish`` packs ``> 0`` into gcmarkBits. The Collector's
MarkScratch keeps the mark words, workspaces and chunk buffers from cycle to cycle.

Invariants: only allocated objects end the cycle marked (pointers into free slots, free
spans or outside the heap are dropped); a grey object is in exactly one frontier, except
that two mark workers racing on one object may both scan it; noscan objects are marked but
never scanned.
"""

from __future__ import annotations

import struct

import numpy as np

from gcalloc.addrspace import ADDRESS_SPACE_BASE as _MEM_BASE
from gcalloc.addrspace import MEM64, word_index
from gcalloc.addrspace import MEM_RAW as _MEM_RAW
from gcalloc.arena import (
    ARENA_BASE_OFFSET,
    ARENA_L2_BITS,
    LOG_HEAP_ARENA_BYTES,
    PAGES_PER_ARENA,
    arena_index,
)
from gcalloc.mspan import SPAN_IN_USE, MSpan
from gcalloc.sizeclasses import PAGE_SHIFT

SCALAR_FRONTIER = 48        # frontiers at most this wide drain in Python
FEW_OBJECTS = 8             # a cycle's first scalar objects, up to this many, skip the tables
PARALLEL_FRONTIER = 16384   # frontiers at least this wide are split between two workers
OBLET_WORDS = 16384         # Go's maxObletBytes (128 KiB): big objects scan in pieces
BLOCK_WORDS = 1 << 15       # candidate words per block of a vector step (see Workspace)
BUF_WORDS = BLOCK_WORDS + OBLET_WORDS
CHUNK_CAP = 1 << 16         # objects per frontier chunk (at least one block's output)
KEEP_CHUNKS = 16            # frontier chunk buffers kept between cycles (1 MiB each)
KEEP_MARK_WORDS = 1 << 22   # mark-word arrays up to this many words (16 MiB) are kept
assert CHUNK_CAP >= BUF_WORDS  # a block's output always fits in one chunk
_WORDS = {}


def _unpack_words(n: int, view: memoryview, offset: int) -> tuple[int, ...]:
    """n little-endian words at offset of the address-space view (cached struct per n)."""
    st = _WORDS.get(n)
    if st is None:
        st = _WORDS[n] = struct.Struct(f"<{n}Q")
    return st.unpack_from(view, offset)


class Workspace:
    """One mark worker's scratch arrays, reused by every block of every vector step and (the
    Collector keeps them) by every cycle: numpy temporaries of this size are otherwise fresh
    memory each time, and faulting it in costs more than the arithmetic. They grow with the
    blocks and chunks seen, to about 6 MiB. Arrays come in pairs where a selection copies
    from one to the other."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.size = self.chunk_size = 0

    def ensure(self, n: int) -> None:
        """Room for a block of n candidate words (n <= BUF_WORDS)."""
        if n <= self.size:
            return
        n = min(BUF_WORDS, max(n, 2 * self.size, 1024))
        self.widx = np.empty(n, np.int64)      # word indexes; freeidx
        self.vals = np.empty(n, np.uint64)     # candidate words; divmul
        self.off = np.empty(n, np.int64)       # heap offsets of candidates inside the heap
        self.off2 = np.empty(n, np.int64)
        self.sid = np.empty(n, np.int64)
        self.sid2 = np.empty(n, np.int64)
        self.t1 = np.empty(n, np.int64)        # page, limit, then slot
        self.t2 = np.empty(n, np.int64)
        self.g = np.empty(n, np.int64)         # object numbers
        self.g2 = np.empty(n, np.int64)
        self.st = np.empty(n, np.int32)        # mark words read back
        self.mask = np.empty(n, np.bool_)
        base = self.worker * BUF_WORDS + 1     # workers' tickets never collide
        self.tickets = np.arange(base, base + n, dtype=np.int32)
        self.iota = np.arange(n, dtype=np.int64)
        self.size = n

    def ensure_chunk(self, n: int) -> None:
        """Room for a frontier chunk of n objects (n <= CHUNK_CAP): first word, words, typed."""
        if n <= self.chunk_size:
            return
        n = min(CHUNK_CAP, max(n, 2 * self.chunk_size, 1024))
        self.first = np.empty(n, np.int64)
        self.nwords = np.empty(n, np.int64)
        self.typed = np.empty(n, np.bool_)
        self.chunk_size = n

    def spare(self, g: np.ndarray, sid: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
        """The buffers of the (object number, span id, slot) pairs that do not hold these."""
        return [_other(g, self.g, self.g2), _other(sid, self.sid, self.sid2),
                _other(idx, self.t1, self.t2)]


class MarkScratch:
    """What a Collector keeps from cycle to cycle for its Markers: the mark workers'
    Workspaces and the mark-word array (up to KEEP_MARK_WORDS words; a bigger heap gets a
    fresh one each cycle). So a Marker's mark words are valid until the next cycle starts."""

    def __init__(self) -> None:
        self.workspaces: list[Workspace] = []
        self._words = np.zeros(0, np.int32)
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []   # free frontier buffers

    def workspace(self, worker: int) -> Workspace:
        while len(self.workspaces) <= worker:
            self.workspaces.append(Workspace(len(self.workspaces)))
        return self.workspaces[worker]

    def chunk_buffer(self) -> tuple[np.ndarray, np.ndarray]:
        """A (span ids, slots) pair of CHUNK_CAP-long arrays for a frontier chunk (list pop
        and append are atomic: the two workers share the pool without a lock)."""
        try:
            return self._chunks.pop()
        except IndexError:
            return np.empty(CHUNK_CAP, np.int64), np.empty(CHUNK_CAP, np.int64)

    def release(self, buffers: list) -> None:
        """Return frontier buffers to the pool, keeping at most KEEP_CHUNKS."""
        room = KEEP_CHUNKS - len(self._chunks)
        self._chunks.extend(buffers[:max(room, 0)])

    def mark_words(self, n: int) -> np.ndarray:
        """n zeroed mark words."""
        if n > KEEP_MARK_WORDS:
            return np.zeros(n, np.int32)
        if len(self._words) < n:
            # some room to grow, never past what may be kept
            self._words = np.zeros(min(n + (n >> 3), KEEP_MARK_WORDS), np.int32)
            return self._words[:n]
        words = self._words[:n]
        words.fill(0)
        return words


class Marker:
    """One cycle's marking state over the in-use spans of an allocator."""

    def __init__(self, mheap, spans: list[MSpan], scalar_frontier: int = SCALAR_FRONTIER,
                 pool=None, scratch: MarkScratch | None = None):
        self.mheap = mheap
        self.arenas = mheap.arenas
        self.table = mheap.table
        self.bits8 = mheap.gcbits.bits8
        self.scalar_frontier = scalar_frontier
        self.scratch = MarkScratch() if scratch is None else scratch
        self.table.sync()
        cap = self.table.capacity
        self.spans = spans
        self.ids = ids = np.array([s.id for s in spans], dtype=np.int64)
        t = self.table
        nelems = t.nelems[ids]
        padded = (nelems + 63) & ~63
        self.padded = padded
        self.total = int(padded.sum())
        self.gbase = np.zeros(cap, np.int64)
        self.gbase[ids] = np.cumsum(padded) - padded
        # freeidx[sid]: slots below it are allocated, so shade checks allocBits only for
        # slots at or past it (Go's isFree test) - nelems for spans with no free slot.
        self.freeidx = np.zeros(cap, np.int64)
        freeindex = np.array([s.freeindex for s in spans], dtype=np.int64)
        self.freeidx[ids] = freeindex
        # Raised to nelems for spans with no free slot on the first vector step or when the
        # scalar tables are made (_refine_freeidx): a cycle that marks a handful of objects
        # never pays for it.
        self._unrefined: tuple | None = (ids, nelems, padded, freeindex)
        self.typed = np.zeros(cap, np.bool_)
        self.typed[ids] = [s.typed for s in spans]
        # Spans of one object (large objects, and the biggest size classes): the object is
        # the span's [base, limit) and every offset in it is slot 0 (divmul 0). For a small
        # span of one object limit - base is its elemsize anyway.
        single = t.nelems == 1
        self.objsize = np.where(single, t.limit - t.base, t.elemsize)
        self.in_snapshot = np.zeros(cap, np.bool_)
        self.in_snapshot[ids] = True
        # Go 1.17's divMul: off * divmul >> 32 == off // elemsize for every offset in a span.
        self.divmul = np.where(single, np.uint64(0),
                               np.uint64(0xFFFFFFFF) // np.maximum(t.elemsize, 1) + np.uint64(1))
        # In words: element size, object size (large objects: their requested size).
        self.welem = (t.elemsize >> np.uint64(3)).astype(np.int64)
        self.wsize = (self.objsize >> np.uint64(3)).astype(np.int64)
        self.scannable = t.noscan == 0
        # The per-object mark word (see the module comment): 0 white, > 0 marked, -1 a free
        # slot some candidate pointed at.
        self.state = self.scratch.mark_words(self.total)
        # pool: a one-thread executor for the second mark worker, or None to mark on this
        # thread only.
        self.pool = pool
        self._page_sid: np.ndarray | None = None
        self._packed: np.ndarray | None = None   # finish's packed marks
        arenas = self.arenas.all
        self.arena_base = np.array([a.base for a in arenas], dtype=np.uint64)
        self.arena_bitmap = np.array([a.bitmap_off for a in arenas], dtype=np.int64)
        self.l2_only = self.arenas.l1[0] if len(self.arenas.l1) == 1 else None
        self.heap_lo = min((a.base for a in arenas), default=0)
        # No arena yet (a cycle before the first allocation): an empty heap range, so that
        # every candidate falls outside it.
        self.heap_hi = (max(a.base for a in arenas) + (PAGES_PER_ARENA << PAGE_SHIFT)
                        if arenas else 0)
        # Arenas laid out in slot order without gaps (the usual case: hints grow the heap
        # upward): then a pointer's page-map index is simply (P - heap_lo) >> PAGE_SHIFT.
        arena_bytes = PAGES_PER_ARENA << PAGE_SHIFT
        self.contiguous = all(a.base == self.heap_lo + a.slot * arena_bytes for a in arenas)
        lo = np.uint64(self.heap_lo)
        # The heap's words, and each span's base as an index into them. A view of just the
        # heap, not the whole address space: np.take(..., out=buf) copies through a fresh
        # temporary when its source may overlap buf, and every buffer is in the address space.
        start = word_index(self.heap_lo) if arenas else 0
        self.heap_words = MEM64[start:start + ((self.heap_hi - self.heap_lo) >> 3)]
        self.wbase = (t.base.astype(np.int64) - self.heap_lo) >> 3
        self.rbase = (self.table.base - lo).astype(np.int64)    # span base - heap_lo
        self.rlimit = np.zeros(cap, np.int64)                   # 0: not a span to mark in
        self.rlimit[ids] = (self.table.limit[ids] - lo).astype(np.int64)
        self._tables = None          # the scalar path's list copies (built on first use)
        self._mem_view: memoryview | None = None
        self._marked = [0, 0]        # per worker, summed by marked_objects
        self._scanned = [0, 0]
        self.vector_steps = 0
        self.scalar_objects = 0
        self.black: list[int] = []   # objects allocated during marking (allocate black)

    def _refine_freeidx(self) -> None:
        """freeidx = nelems for every span whose allocBits are all set (after a sweep that
        kept every object, say), so shade skips their objects' allocation check. Either
        value is correct; this one is cheaper for wide steps."""
        if self._unrefined is None:
            return
        ids, nelems, padded, freeindex = self._unrefined
        self._unrefined = None
        swept = np.flatnonzero(freeindex < nelems)   # fresh spans allocated to the end: none
        full = swept[self._no_free_slot(ids[swept], nelems[swept], padded[swept])]
        self.freeidx[ids[full]] = nelems[full]

    def _no_free_slot(self, ids: np.ndarray, nelems: np.ndarray,
                      padded: np.ndarray) -> np.ndarray:
        """Per span: every slot's allocBit is set (after a sweep that kept every object, say),
        counted with popcounts of each span's allocBits words, padding bits masked off."""
        if not len(ids):
            return np.zeros(0, np.bool_)
        chunks = padded >> 6
        starts = np.cumsum(chunks) - chunks
        words = np.take(self.mheap.gcbits.bits64, np.repeat(
            (self.table.allocbits[ids] >> 3) - starts, chunks) + np.arange(int(chunks.sum())))
        ones = np.add.reduceat(np.bitwise_count(words), starts, dtype=np.int64)
        last = words[starts + chunks - 1]
        rem = (nelems & 63).astype(np.uint64)
        pad = np.where(rem > 0, last >> rem, np.uint64(0))   # bits past nelems
        return ones - np.bitwise_count(pad) == nelems

    # --- entry points ------------------------------------------------------------------

    def mark_from(self, candidates: np.ndarray) -> None:
        """Mark everything reachable from the candidate pointers."""
        self._drain(self.shade(np.asarray(candidates, dtype=np.uint64)))

    @property
    def marked_objects(self) -> int:
        return sum(self._marked)

    @property
    def scanned_words(self) -> int:
        return sum(self._scanned)

    def drain(self, sids: np.ndarray, idxs: np.ndarray) -> None:
        """Mark everything reachable from the grey objects (span ids, slots)."""
        self._drain(_Frontier.of(sids, idxs))

    def _drain(self, frontier: _Frontier) -> None:
        while frontier.count:
            if frontier.count <= self.scalar_frontier:
                sids, idxs = frontier.lists()
                self.scratch.release(frontier.buffers)
                frontier = _Frontier.of(*self._drain_scalar(sids, idxs))
                continue
            self.vector_steps += 1
            self._refine_freeidx()
            if self.pool is not None and frontier.count >= PARALLEL_FRONTIER:
                nxt = self._parallel_step(frontier)
            else:
                nxt = self._vector_step(frontier.chunks)
            self.scratch.release(frontier.buffers)
            frontier = nxt

    def _parallel_step(self, frontier: _Frontier) -> _Frontier:
        """One vector step with the frontier split between two workers (numpy releases the
        interpreter lock inside array operations). Both may mark the same object at once and
        both then scan it: a repeat, never a loss (see _shade_block)."""
        mine, theirs = frontier.split()
        self._workspace(1)   # made here: two threads growing the list could swap workspaces
        other = self.pool.submit(self._vector_step, theirs, 1)
        return self._vector_step(mine, 0).join(other.result())

    # --- vectorised path ---------------------------------------------------------------

    def _vector_step(self, chunks: list, worker: int = 0) -> _Frontier:
        """Scan the grey objects and shade what their words point at, one block of at most
        BLOCK_WORDS words (plus one oblet) at a time; return the next frontier."""
        ws = self._workspace(worker)
        out = _Frontier(self.scratch)
        for sids, idxs in chunks:
            n = len(sids)
            ws.ensure_chunk(n)
            first = np.take(self.welem, sids, out=ws.first[:n], mode="clip")
            first *= idxs
            first += np.take(self.wbase, sids, out=ws.nwords[:n], mode="clip")  # word index
            nwords = np.take(self.wsize, sids, out=ws.nwords[:n], mode="clip")
            typed = np.take(self.typed, sids, out=ws.typed[:n], mode="clip")
            if nwords.max(initial=0) > OBLET_WORDS:
                first, nwords, typed = _split_oblets(first, nwords, typed)
            any_typed = bool(typed.any())
            ws.ensure(min(int(nwords.sum()), BUF_WORDS))
            for lo, hi, n0 in _blocks(nwords):
                vals = self._gather(ws, first[lo:hi], nwords[lo:hi], n0, worker)
                if any_typed:
                    vals = self._typed_filter(ws, vals, typed[lo:hi], nwords[lo:hi], n0)
                self._shade_block(ws, vals, worker, out)
        return out.done()

    def shade(self, P: np.ndarray, worker: int = 0) -> _Frontier:
        """Mark the objects the candidate pointers P point at; return the newly grey scan
        objects."""
        ws = self._workspace(worker)
        out = _Frontier(self.scratch)
        ws.ensure(min(len(P), BLOCK_WORDS))
        for i in range(0, len(P), BLOCK_WORDS):
            part = P[i:i + BLOCK_WORDS]
            vals = ws.vals[:len(part)]
            vals[:] = part
            self._shade_block(ws, vals, worker, out)
        return out.done()

    def _gather(self, ws: Workspace, first: np.ndarray, nwords: np.ndarray, n0: int,
                worker: int) -> np.ndarray:
        """The words of the objects starting at word indexes ``first``, into ws.vals (in no
        particular order; ws.widx keeps each one's word index). n0: the objects' common
        size in words, or 0 if sizes differ."""
        if n0:
            # One object size (the usual frontier): broadcast with the longer axis inner,
            # where numpy's loops are fast (word k of every object together, for a block of
            # many small objects).
            m = len(first)
            nw = m * n0
            if m >= n0:
                np.add(ws.iota[:n0, None], first, out=ws.widx[:nw].reshape(n0, m))
            else:
                np.add(first[:, None], ws.iota[:n0], out=ws.widx[:nw].reshape(m, n0))
        else:
            starts = np.cumsum(nwords) - nwords
            run = np.repeat(first - starts, nwords)
            nw = len(run)
            np.add(run, ws.iota[:nw], out=ws.widx[:nw])
        self._scanned[worker] += nw
        return np.take(self.heap_words, ws.widx[:nw], out=ws.vals[:nw], mode="clip")

    def _typed_filter(self, ws: Workspace, vals: np.ndarray, typed: np.ndarray,
                      nwords: np.ndarray, n0: int) -> np.ndarray:
        """Drop the words of typed objects whose heap-bitmap pointer bit is clear (word order
        as _gather left it)."""
        if not typed.any():
            return vals
        if not n0:
            word_typed = np.repeat(typed, nwords)
        elif len(typed) >= n0:
            word_typed = np.tile(typed, n0)
        else:
            word_typed = np.repeat(typed, n0)
        widx = ws.widx[:len(vals)]
        addrs = (np.compress(word_typed, widx).astype(np.uint64) << np.uint64(3)) \
            + np.uint64(self.heap_lo)
        keep = ~word_typed
        keep[word_typed] = self._pointer_bits(addrs)
        return np.compress(keep, vals)

    def _shade_block(self, ws: Workspace, v: np.ndarray, worker: int,
                     out: _Frontier) -> None:
        """shade for one block of candidates v (overwritten), in ws's buffers; the new grey
        scan objects go to out.

        findObject first, over arrays (heap offset -> page -> span id -> span mirror -> slot
        and object number), dropping pointers outside every span this cycle marks in. Then
        deduplication: every white candidate scatters a ticket (its position, offset per
        worker) into its object's mark word, which marks the object, and keeps the object
        only if it reads its own ticket back, so of several candidates for one object
        exactly the last writer keeps it. Two workers racing on one object may both keep it
        (a repeat scan), never neither: the last writer reads its own ticket. Only then is
        each kept object checked to be allocated (once per cycle, not per pointer).

        np.take and ufuncs with out= buffers: several times faster than fancy indexing and
        boolean masks, and no fresh memory (mode="clip" because "raise" buffers its output;
        every index here is in range by construction); selections by _select."""
        np.subtract(v, np.uint64(self.heap_lo), out=v)   # below heap_lo wraps to huge
        inside = np.less(v, np.uint64(self.heap_hi - self.heap_lo), out=ws.mask[:len(v)])
        k = int(np.count_nonzero(inside))
        if not k:
            return
        d = _select(inside, [v.view(np.int64)], [ws.off])[0]
        sid = self._span_ids(ws, d)
        keep = np.less(d, np.take(self.rlimit, sid, out=ws.t1[:k], mode="clip"),
                       out=ws.mask[:k])
        if not keep.all():
            d, sid = _select(keep, [d, sid], [ws.off2, ws.sid2])
            k = len(d)
        idx = np.take(self.rbase, sid, out=ws.t1[:k], mode="clip")
        np.subtract(d, idx, out=idx)                     # offset in the span
        u = idx.view(np.uint64)
        u *= np.take(self.divmul, sid, out=ws.vals[:k], mode="clip")
        u >>= np.uint64(32)                              # slot
        g = np.take(self.gbase, sid, out=ws.g[:k], mode="clip")
        g += idx                                         # object number
        state = self.state
        white = np.equal(np.take(state, g, out=ws.st[:k], mode="clip"), 0, out=ws.mask[:k])
        if not white.all():
            g, sid, idx = _select(white, [g, sid, idx], ws.spare(g, sid, idx))
            k = len(g)
        tickets = ws.tickets[:k]
        state[g] = tickets
        if k > 1:
            mine = np.equal(np.take(state, g, out=ws.st[:k], mode="clip"), tickets,
                            out=ws.mask[:k])
            if not mine.all():
                g, sid, idx = _select(mine, [g, sid, idx], ws.spare(g, sid, idx))
        sid, idx = self._drop_free(ws, g, sid, idx)
        self._marked[worker] += len(sid)
        scan = np.take(self.scannable, sid, out=ws.mask[:len(sid)], mode="clip")
        out.add(sid, idx, None if scan.all() else np.flatnonzero(scan))

    def _span_ids(self, ws: Workspace, d: np.ndarray) -> np.ndarray:
        """Span id (0: none) of each heap offset d, into ws.sid."""
        page_sid = self._page_sids()
        out = ws.sid[:len(d)]
        if self.contiguous:
            return np.take(page_sid, np.right_shift(d, PAGE_SHIFT, out=ws.t1[:len(d)]), out=out,
                           mode="clip")
        page = self._page_index_general(d)
        out[:] = np.where(page >= 0, np.take(page_sid, np.maximum(page, 0)), 0)
        return out

    def _page_sids(self) -> np.ndarray:
        """The page map of this heap's arenas as int64 (numpy converts narrower index arrays
        on every take), made on the first vector step of a cycle."""
        if self._page_sid is None:
            npages = len(self.arenas.all) * PAGES_PER_ARENA
            self._page_sid = self.arenas.page_span[:npages].astype(np.int64)
        return self._page_sid

    def _page_index_general(self, d: np.ndarray) -> np.ndarray:
        """Page-map index of heap offsets d when arenas are not laid out in slot order."""
        P = d.astype(np.uint64) + np.uint64(self.heap_lo)
        if self.l2_only is not None:   # one L2 table (64-bit Linux/macOS): index it directly
            ri = (P - np.uint64(ARENA_BASE_OFFSET)) >> np.uint64(LOG_HEAP_ARENA_BYTES)
            slot = self.l2_only[ri.astype(np.int64)].astype(np.int64) - 1
        else:
            slot = self.arenas.slots_of(P).astype(np.int64) - 1
        # -1 for a pointer inside [heap_lo, heap_hi) but in no arena of this heap.
        inside = slot >= 0
        page = slot * PAGES_PER_ARENA + ((P >> np.uint64(PAGE_SHIFT)).astype(np.int64)
                                         & (PAGES_PER_ARENA - 1))
        return np.where(inside, page, -1)

    def _drop_free(self, ws: Workspace, g: np.ndarray, sid: np.ndarray,
                   idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unmark and drop the slots that hold no allocated object (Go's isFree check: at or
        past freeindex and clear in allocBits); their mark word becomes -1."""
        fi = np.take(self.freeidx, sid, out=ws.widx[:len(sid)], mode="clip")
        maybe_free = np.greater_equal(idx, fi, out=ws.mask[:len(sid)])
        if not maybe_free.any():
            return sid, idx
        fs, fi = np.compress(maybe_free, sid), np.compress(maybe_free, idx)
        byte = np.take(self.bits8, np.take(self.table.allocbits, fs) + (fi >> 3))
        allocated = ((byte >> (fi & 7).astype(np.uint8)) & 1).astype(np.bool_)
        if allocated.all():
            return sid, idx
        keep = ~maybe_free
        keep[maybe_free] = allocated
        self.state[np.compress(~keep, g)] = -1
        return np.compress(keep, sid), np.compress(keep, idx)

    def _workspace(self, worker: int) -> Workspace:
        return self.scratch.workspace(worker)

    def _pointer_bits(self, addrs: np.ndarray) -> np.ndarray:
        slot = self.arenas.slots_of(addrs) - 1
        off = (addrs - self.arena_base[slot]) >> np.uint64(3)
        byte = self.arenas.bitmap[self.arena_bitmap[slot] + (off >> np.uint64(2)).astype(np.int64)]
        return ((byte >> (off & np.uint64(3)).astype(np.uint8)) & 1).astype(np.bool_)

    # --- scalar path -------------------------------------------------------------------

    def _find_object_scalar(self, v: int) -> tuple[MSpan, int] | None:
        if not self.heap_lo <= v < self.heap_hi:
            return None
        ri = arena_index(v)
        l2 = self.arenas.l1[ri >> ARENA_L2_BITS]
        if l2 is None:
            return None
        slot = int(l2[ri & ((1 << ARENA_L2_BITS) - 1)])
        if not slot:
            return None
        arena = self.arenas.all[slot - 1]
        sid = int(self.arenas.page_span[arena.pages_off + ((v - arena.base) >> PAGE_SHIFT)])
        if not sid or not self.in_snapshot[sid]:
            return None
        s = self.mheap.spans[sid]
        if s.state != SPAN_IN_USE or not s.base <= v < s.limit:
            return None
        idx = (v - s.base) // s.elemsize
        if idx >= s.freeindex and not (int(self.bits8[s.allocBits + (idx >> 3)]) >> (idx & 7)) & 1:
            return None
        return s, idx

    def _drain_scalar(self, sids: list[int], idxs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Scan narrow frontiers in Python, breadth first, until the frontier empties or
        grows wider than ``scalar_frontier``; return that wide frontier to the vector path."""
        if not self.contiguous or (self._tables is None and len(sids) <= FEW_OBJECTS
                                   and self.scalar_objects < FEW_OBJECTS):
            # The first few objects of a cycle (often all there is: a cycle over garbage
            # marks a root or two) do without the list copies of the tables.
            return self._drain_scalar_general(sids, idxs)
        pages, rlimit, rbase, divmul, freeidx, gbase, scannable, sbase, selem, ssize, \
            typed = self._scalar_tables()
        marks = self._marks_view()
        lo, span = self.heap_lo, self.heap_hi - self.heap_lo
        mv, unpack = self._mem_view, _unpack_words
        limit = self.scalar_frontier
        scanned = marked = objects = 0
        while sids and len(sids) <= limit:
            next_sids: list[int] = []
            next_idxs: list[int] = []
            objects += len(sids)
            for sid, idx in zip(sids, idxs):
                size = ssize[sid]
                base = sbase[sid] + idx * selem[sid]
                scanned += size >> 3
                if typed[sid]:
                    words = self._typed_words(base, size)
                else:
                    words = unpack(size >> 3, mv, base - _MEM_BASE)
                for v in words:
                    d = v - lo
                    if not 0 <= d < span:
                        continue
                    vs = pages[d >> PAGE_SHIFT]
                    if d >= rlimit[vs]:
                        continue
                    vi = ((d - rbase[vs]) * divmul[vs]) >> 32
                    g = gbase[vs] + vi
                    if marks[g]:      # marked, or a free slot seen before
                        continue
                    if vi >= freeidx[vs] and not self._alloc_bit(vs, vi):
                        marks[g] = -1
                        continue
                    marks[g] = 1
                    marked += 1
                    if scannable[vs]:
                        next_sids.append(vs)
                        next_idxs.append(vi)
            sids, idxs = next_sids, next_idxs
        self.scalar_objects += objects
        self._scanned[0] += scanned
        self._marked[0] += marked
        return np.array(sids, dtype=np.int64), np.array(idxs, dtype=np.int64)

    def _scalar_tables(self) -> tuple:
        """Python-list copies of the lookup arrays, made on the first scalar step of a cycle:
        indexing a list is several times cheaper than indexing numpy for one element."""
        if self._tables is None:
            self._refine_freeidx()
            npages = (self.heap_hi - self.heap_lo) >> PAGE_SHIFT
            t = self.table
            self._tables = (
                self.arenas.page_span[:npages].tolist(), self.rlimit.tolist(),
                self.rbase.tolist(), self.divmul.tolist(), self.freeidx.tolist(),
                self.gbase.tolist(), self.scannable.tolist(), t.base.tolist(),
                t.elemsize.tolist(), self.objsize.tolist(), self.typed.tolist())
            self._mem_view = memoryview(_MEM_RAW)
        return self._tables

    def _marks_view(self) -> memoryview:
        """The mark words as a memoryview: indexing one element is cheaper than in numpy."""
        return memoryview(self.state)

    def _alloc_bit(self, sid: int, idx: int) -> bool:
        off = int(self.table.allocbits[sid])
        return bool((int(self.bits8[off + (idx >> 3)]) >> (idx & 7)) & 1)

    def _typed_words(self, base: int, size: int) -> list[int]:
        i = word_index(base)
        words = MEM64[i:i + (size >> 3)]
        addrs = np.arange(base, base + size, 8, dtype=np.uint64)
        return words[self._pointer_bits(addrs)].tolist()

    def _drain_scalar_general(self, sids: list[int],
                              idxs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The scalar step for a heap whose arenas are not in slot order."""
        marks = self._marks_view()
        gbase = self.gbase
        spans = self.mheap.spans
        next_sids: list[int] = []
        next_idxs: list[int] = []
        for sid, idx in zip(sids, idxs):
            s = spans[sid]
            self.scalar_objects += 1
            base = s.base + idx * s.elemsize
            size = s.limit - s.base if s.sizeclass == 0 else s.elemsize
            for v in self._words_scalar(s, base, size):
                found = self._find_object_scalar(v)
                if found is None:
                    continue
                t, i = found
                g = int(gbase[t.id]) + i
                if marks[g]:
                    continue
                marks[g] = 1
                self._marked[0] += 1
                if not t.noscan:
                    next_sids.append(t.id)
                    next_idxs.append(i)
        return np.array(next_sids, dtype=np.int64), np.array(next_idxs, dtype=np.int64)

    def _words_scalar(self, s: MSpan, base: int, size: int) -> list[int]:
        i = word_index(base)
        words = MEM64[i:i + (size >> 3)]
        self._scanned[0] += size >> 3
        if s.typed:
            addrs = np.arange(base, base + size, 8, dtype=np.uint64)
            words = words[self._pointer_bits(addrs)]
        lo, hi = self.heap_lo, self.heap_hi
        return [v for v in words.tolist() if lo <= v < hi]

    # --- allocate black and termination ------------------------------------------------

    def allocated_black(self, p: int) -> None:
        """An object allocated while marking: it is live this cycle."""
        self.black.append(p)

    def finish(self) -> None:
        """Write every span's gcmarkBits from the mark words (and the black allocations)."""
        if self.total:
            packed = self._packed_marks()
            nbytes = self.padded >> 3
            starts = np.cumsum(nbytes) - nbytes
            dest = np.repeat(self.table.markbits[self.ids] - starts, nbytes) + \
                np.arange(len(packed), dtype=np.int64)
            self.bits8[dest] = packed
        for p in self.black:          # black objects in spans the cycle did not number
            s = self.mheap.span_of(p)
            if s is None or s.state != SPAN_IN_USE or self.in_snapshot[s.id]:
                continue
            idx = s.object_index(p)
            byte = s.gcmarkBits + (idx >> 3)
            self.bits8[byte] = int(self.bits8[byte]) | (1 << (idx & 7))

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
            if s is not None and s.state == SPAN_IN_USE and self.in_snapshot[s.id]:
                self.state[int(self.gbase[s.id]) + s.object_index(p)] = 1

    def marked_per_span(self) -> np.ndarray:
        """Objects marked in each span of ``spans`` (in order), after marking is over:
        popcounts of the packed marks, 64 slots at a time (each span's range is a multiple
        of 64), summed per span."""
        if not self.total:
            return np.zeros(0, np.int64)
        counts = np.bitwise_count(self._packed_marks().view(np.uint64))
        chunks = self.padded >> 6
        return np.add.reduceat(counts, np.cumsum(chunks) - chunks, dtype=np.int64)

    def is_marked(self, s: MSpan, idx: int) -> bool:
        """Whether slot idx of snapshot span s is marked (before finish)."""
        return bool(self.state[int(self.gbase[s.id]) + idx] > 0)

    # --- specials (gc/finalizer.py) ----------------------------------------------------

    def mark_referents(self, sids: np.ndarray, idxs: np.ndarray) -> None:
        """Mark everything reachable from the given objects (snapshot span ids, slots)
        without marking the objects themselves, unless their referents lead back to them:
        Go's markroot for finalizer specials. Noscan objects reference nothing."""
        scan = self.scannable[sids]
        sids, idxs = sids[scan], idxs[scan]
        if len(sids):
            self._drain(self._vector_step(_Frontier.of(sids, idxs).chunks))

    def mark_object(self, s: MSpan, idx: int) -> bool:
        """Mark slot idx of snapshot span s without scanning it (its referents are marked
        already); True if it was white."""
        g = int(self.gbase[s.id]) + idx
        if self.state[g]:
            return False
        self.state[g] = 1
        self._marked[0] += 1
        return True


def _split_oblets(first: np.ndarray, nwords: np.ndarray, typed: np.ndarray):
    """Split objects larger than OBLET_WORDS into pieces, as Go scans big objects in oblets.
    ``first``: each object's first word index."""
    pieces = (nwords + OBLET_WORDS - 1) // OBLET_WORDS
    obj = np.repeat(np.arange(len(first)), pieces)
    k = np.arange(len(obj)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    new_base = first[obj] + k * OBLET_WORDS
    new_words = np.minimum(nwords[obj] - k * OBLET_WORDS, OBLET_WORDS)
    return new_base, new_words, typed[obj]


class _Frontier:
    """A grey set: (span ids, slots) chunks of at most CHUNK_CAP objects. Chunks that shade
    writes live in buffers from the MarkScratch pool (``buffers``), returned once the step
    that reads them is over: a new array per frontier would be fresh memory every step."""

    def __init__(self, scratch: MarkScratch | None = None) -> None:
        self.scratch = scratch
        self.chunks: list = []
        self.buffers: list = []
        self.count = 0
        self._buf: tuple[np.ndarray, np.ndarray] | None = None
        self._n = 0

    @classmethod
    def of(cls, sids: np.ndarray, idxs: np.ndarray) -> _Frontier:
        """A frontier of the given arrays (views of them, in chunks)."""
        f = cls()
        f.chunks = [(sids[i:i + CHUNK_CAP], idxs[i:i + CHUNK_CAP])
                    for i in range(0, len(sids), CHUNK_CAP)]
        f.count = len(sids)
        return f

    def add(self, sids: np.ndarray, idxs: np.ndarray, sel: np.ndarray | None) -> None:
        """Append sids, idxs (those at positions sel, if given); at most CHUNK_CAP."""
        k = len(sids) if sel is None else len(sel)
        if not k:
            return
        if self._buf is None or self._n + k > CHUNK_CAP:
            self._close()
            self._buf = self.scratch.chunk_buffer()
            self.buffers.append(self._buf)
        s, i = self._buf
        a, b = self._n, self._n + k
        if sel is None:
            s[a:b] = sids
            i[a:b] = idxs
        else:
            np.take(sids, sel, out=s[a:b], mode="clip")
            np.take(idxs, sel, out=i[a:b], mode="clip")
        self._n = b
        self.count += k

    def _close(self) -> None:
        if self._buf is not None and self._n:
            self.chunks.append((self._buf[0][:self._n], self._buf[1][:self._n]))
        self._buf, self._n = None, 0

    def done(self) -> _Frontier:
        self._close()
        return self

    def join(self, other: _Frontier) -> _Frontier:
        self.chunks += other.chunks
        self.buffers += other.buffers
        self.count += other.count
        return self

    def split(self) -> tuple[list, list]:
        """The chunks split into two lists of about half the objects each."""
        half, first, count = self.count // 2, [], 0
        for k, (s, i) in enumerate(self.chunks):
            if count + len(s) > half:
                cut = half - count
                if cut:
                    first.append((s[:cut], i[:cut]))
                return first, [(s[cut:], i[cut:])] + self.chunks[k + 1:]
            first.append((s, i))
            count += len(s)
        return first, []

    def lists(self) -> tuple[list[int], list[int]]:
        return ([x for s, _ in self.chunks for x in s.tolist()],
                [x for _, i in self.chunks for x in i.tolist()])


def _blocks(nwords: np.ndarray):
    """(start, end, common size or 0) of consecutive runs of objects with at most BUF_WORDS
    words in all."""
    n = len(nwords)
    if not n:
        return
    n0 = int(nwords[0])
    if n0 and (nwords == n0).all():
        step = max(1, BLOCK_WORDS // n0)
        for i in range(0, n, step):
            yield i, min(n, i + step), n0
        return
    cum = np.cumsum(nwords)
    cuts = np.searchsorted(cum, np.arange(BLOCK_WORDS, int(cum[-1]), BLOCK_WORDS), "right")
    bounds = np.unique(np.concatenate([[0], cuts, [n]])).tolist()
    for lo, hi in zip(bounds, bounds[1:]):
        yield lo, hi, 0


def _select(mask: np.ndarray, arrays: list[np.ndarray], bufs: list[np.ndarray]):
    """Each array's elements where mask is set, into the matching buffer (one that does not
    hold the array): one index array, then np.take with out= (np.compress would allocate
    an index array and, for out=, a copy, per array)."""
    sel = np.flatnonzero(mask)
    k = len(sel)
    return [np.take(a, sel, out=b[:k], mode="clip") for a, b in zip(arrays, bufs)]


def _other(arr: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return b if np.may_share_memory(arr, a) else a
