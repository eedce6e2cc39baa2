"""The vectorised mark path: a whole frontier at a time, as numpy array operations (Go's
mgcmark.go scanobject, greyobject and shade, and mbitmap.go's findObject, over arrays).

One breadth-first level (a *vector step*) is scanned in *blocks* of at most BLOCK_WORDS
candidate words (plus one oblet):

- ``_gather`` reads every word of the block's objects with one np.take from a view of the
  heap (small objects object by object, so that a frontier in address order reads the heap
  in order and shades in object order; objects of more than 8 words word by word);
- ``_typed_filter`` drops typed objects' words whose heap-bitmap pointer bit is clear;
  objects of spans with a span type (``_scan_layouts``) are gathered at their layout's
  pointer words only, so a precise type reads fewer words than conservative scanning;
- ``_shade_block`` resolves every candidate at once (findObject over arrays: heap offset ->
  page -> span id -> span mirror -> slot and object number), keeps the white objects,
  deduplicates them with one scatter of tickets into their mark words (which marks them
  too; a block whose object numbers strictly increase has no duplicate and skips the read
  back), only then checks that they are allocated (once per object, not once per pointer to
  it; spans whose allocBits are all set skip it), and appends the scannable ones to the
  next frontier (without a per-object look when the snapshot has no noscan span).

All of it runs in each worker's Workspace buffers (np.take and ufuncs with out=; selections
by one np.flatnonzero) and the frontier chunks come from the MarkScratch pool, so a step
allocates almost nothing (gc/markbuf.py says why that matters).

Invariants kept here: a candidate outside every snapshot span, or in a slot holding no
allocated object, ends unmarked (its mark word -1 for a free slot), so only allocated objects
end marked; noscan objects are marked but never enter the next frontier, so never scanned;
typed objects' words are read only where their pointer bit is set; a grey object enters
exactly one next frontier, except that two workers racing on one object may both keep it
(a repeat scan, never a loss). It marks exactly what gc/markscalar.py marks for the same
frontier (tests compare the two on random graphs).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gcalloc.gc.markbuf import (
    BLOCK_WORDS,
    BUF_WORDS,
    CHUNK_CAP,
    OBLET_WORDS,
    ChunkBuffer,
    Frontier,
    MarkScratch,
    Workspace,
)
from gcalloc.gc.spansnapshot import SpanSnapshot
from gcalloc.sizeclasses import PAGE_SHIFT


class VectorPath:
    """Drains wide frontiers of one cycle into its mark words ``state``. Counts, per
    worker, the objects it marked and the words it scanned."""

    def __init__(self, snap: SpanSnapshot, state: np.ndarray, scratch: MarkScratch) -> None:
        self.snap = snap
        self.state = state
        self.scratch = scratch
        self.marked = [0, 0]
        self.scanned = [0, 0]
        self._lbufs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def step(self, chunks: list[ChunkBuffer], worker: int = 0) -> Frontier:
        """Scan the grey objects and shade what their words point at, one block of at most
        BLOCK_WORDS words (plus one oblet) at a time; return the next frontier."""
        sn = self.snap
        ws = self.scratch.workspace(worker)
        out = Frontier(self.scratch)
        layouts = len(sn.layouts) > 1
        for sids, idxs in chunks:
            if layouts:
                sids, idxs = self._scan_layouts(ws, sids, idxs, worker, out)
            n = len(sids)
            if not n:
                continue
            ws.ensure_chunk(n)
            rows = np.take(sn.scan, sids, axis=0, out=ws.scan_rows[:n], mode="clip")
            first = np.multiply(rows[:, 0], idxs, out=ws.first[:n])
            first += rows[:, 1]                                     # word index
            nwords = rows[:, 2]
            # Snapshot-wide facts first: an untyped heap of small objects (the usual one)
            # pays no per-object pass for them.
            typed = (np.take(sn.typed, sids, out=ws.typed[:n], mode="clip")
                     if sn.any_typed else None)
            if sn.max_wsize > OBLET_WORDS and nwords.max(initial=0) > OBLET_WORDS:
                first, nwords, typed = _split_oblets(first, nwords, typed)
            any_typed = typed is not None and bool(typed.any())
            ws.ensure(min(n * sn.max_wsize, BUF_WORDS))
            for lo, hi, n0 in _blocks(nwords):
                vals = self._gather(ws, first[lo:hi], nwords[lo:hi], n0, worker)
                if any_typed:
                    assert typed is not None
                    vals = self._typed_filter(ws, vals, typed[lo:hi], nwords[lo:hi], n0)
                self._shade_block(ws, vals, worker, out)
        return out.done()

    def _scan_layouts(self, ws: Workspace, sids: np.ndarray, idxs: np.ndarray, worker: int,
                      out: Frontier) -> tuple[np.ndarray, np.ndarray]:
        """Scan the objects of spans with a span type (one layout for the whole span): only
        the layout's pointer words are read, with no bitmap lookup. Returns the others."""
        sn = self.snap
        n = len(sids)
        lay_buf, first_buf, base_buf = self._layout_buffers(worker, n)
        lay = np.take(sn.layout, sids, out=lay_buf[:n], mode="clip")
        k0 = int(lay[0])
        if not k0 and not lay.any():
            return sids, idxs
        kinds = [k0] if (lay == k0).all() else np.unique(lay).tolist()
        for k in kinds:
            if not k:
                continue
            if len(kinds) > 1:
                sel = lay == k
                s_k, i_k = sids[sel], idxs[sel]
            else:
                s_k, i_k = sids, idxs
            m = len(s_k)
            # into kept buffers: a chunk's temporaries are big enough for glibc to map and
            # unmap them each time (page faults; see gc/markbuf.py)
            first = np.take(sn.welem, s_k, out=first_buf[:m], mode="clip")
            first *= i_k
            first += np.take(sn.wbase, s_k, out=base_buf[:m], mode="clip")
            offs = sn.layouts[k].offsets   # type: ignore[union-attr]  # k > 0: a Layout
            n0 = len(offs)
            if not n0:
                continue
            step = max(1, BLOCK_WORDS // n0)
            ws.ensure(min(len(first) * n0, BUF_WORDS))
            for lo in range(0, len(first), step):
                vals = self._gather(ws, first[lo:lo + step], None, n0, worker, offs)
                self._shade_block(ws, vals, worker, out)
        if kinds[0]:
            return sids[:0], idxs[:0]
        rest = lay == 0
        return sids[rest], idxs[rest]

    def _layout_buffers(self, worker: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """_scan_layouts' per-worker buffers (span type numbers, first words, bases)."""
        bufs = self._lbufs.get(worker)
        if bufs is None or len(bufs[0]) < n:
            cap = max(n, CHUNK_CAP)
            bufs = self._lbufs[worker] = (np.empty(cap, np.int32), np.empty(cap, np.int64),
                                          np.empty(cap, np.int64))
        return bufs

    def shade(self, P: np.ndarray, worker: int = 0) -> Frontier:
        """Mark the objects the candidate pointers P point at; return the newly grey scan
        objects."""
        ws = self.scratch.workspace(worker)
        out = Frontier(self.scratch)
        ws.ensure(min(len(P), BLOCK_WORDS))
        for i in range(0, len(P), BLOCK_WORDS):
            part = P[i:i + BLOCK_WORDS]
            vals = ws.vals[:len(part)]
            vals[:] = part
            self._shade_block(ws, vals, worker, out)
        return out.done()

    def _gather(self, ws: Workspace, first: np.ndarray, nwords: np.ndarray | None, n0: int,
                worker: int, offs: np.ndarray | None = None) -> np.ndarray:
        """The words of the objects starting at word indexes ``first``, into ws.vals (in no
        particular order; ws.widx keeps each one's word index). n0: the objects' common
        size in words, or 0 if sizes differ. ``offs``: the n0 word offsets to read in each
        object (a span type's pointer words), instead of words 0..n0-1."""
        if n0:
            rows = ws.iota[:n0] if offs is None else offs
            m = len(first)
            nw = m * n0
            if _word_major(m, n0):
                # Many objects of many words: broadcast with the longer axis inner, where
                # numpy's loops are fast (word k of every object together).
                np.add(rows[:, None], first, out=ws.widx[:nw].reshape(n0, m))
            elif m >= n0:
                # Many small objects: object by object all the same (each object's words
                # together, so that a frontier in address order shades in address order,
                # see _shade_block), one strided add per word along the objects.
                w2 = ws.widx[:nw].reshape(m, n0)
                for k in range(n0):
                    np.add(first, rows[k], out=w2[:, k])
            else:
                np.add(first[:, None], rows, out=ws.widx[:nw].reshape(m, n0))
        else:
            assert nwords is not None
            starts = np.cumsum(nwords) - nwords
            run = np.repeat(first - starts, nwords)
            nw = len(run)
            np.add(run, ws.iota[:nw], out=ws.widx[:nw])
        self.scanned[worker] += nw
        return np.take(self.snap.heap_words, ws.widx[:nw], out=ws.vals[:nw], mode="clip")

    def _typed_filter(self, ws: Workspace, vals: np.ndarray, typed: np.ndarray,
                      nwords: np.ndarray, n0: int) -> np.ndarray:
        """Drop the words of typed objects whose heap-bitmap pointer bit is clear (word order
        as _gather left it)."""
        if not typed.any():
            return vals
        if not n0:
            word_typed = np.repeat(typed, nwords)
        elif _word_major(len(typed), n0):
            word_typed = np.tile(typed, n0)
        else:
            word_typed = np.repeat(typed, n0)
        widx = ws.widx[:len(vals)]
        addrs = (np.compress(word_typed, widx).astype(np.uint64) << np.uint64(3)) \
            + np.uint64(self.snap.heap_lo)
        keep = ~word_typed
        keep[word_typed] = self.snap.pointer_bits(addrs)
        return np.compress(keep, vals)

    def _shade_block(self, ws: Workspace, v: np.ndarray, worker: int, out: Frontier) -> None:
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
        sn = self.snap
        np.subtract(v, np.uint64(sn.heap_lo), out=v)   # below heap_lo wraps to huge
        inside = np.less(v, np.uint64(sn.heap_hi - sn.heap_lo), out=ws.mask[:len(v)])
        k = int(np.count_nonzero(inside))
        if not k:
            return
        d = _select(inside, [v.view(np.int64)], [ws.off])[0]
        sid = self._span_ids(ws, d)
        # One take of findObject's row (rlimit, rbase, divmul, gbase) per candidate. Slot
        # and object number are computed for every candidate, those outside every snapshot
        # span too (wrapping, meaningless, never used: they are dropped before any index).
        rows = np.take(sn.find, sid, axis=0, out=ws.find_rows[:k], mode="clip")
        keep = np.less(d, rows[:, 0], out=ws.mask[:k])
        idx = np.subtract(d, rows[:, 1], out=ws.t1[:k])  # offset in the span
        u = idx.view(np.uint64)
        u *= rows.view(np.uint64)[:, 2]
        u >>= np.uint64(32)                              # slot
        g = np.add(rows[:, 3], idx, out=ws.g[:k])        # object number
        if not keep.all():
            g, sid, idx = _select(keep, [g, sid, idx], ws.spare(g, sid, idx))
            k = len(g)
        state = self.state
        white = np.equal(np.take(state, g, out=ws.st[:k], mode="clip"), 0, out=ws.mask[:k])
        if not white.all():
            g, sid, idx = _select(white, [g, sid, idx], ws.spare(g, sid, idx))
            k = len(g)
        tickets = ws.tickets[:k]
        state[g] = tickets
        # Candidates in strictly increasing object order (a frontier of small objects in
        # address order, as a tree built level by level gives) name distinct objects: every
        # ticket is read back unchanged by this worker, so the read-back is skipped (another
        # worker racing on one of them may keep it too: a repeat scan, never a loss).
        if k > 1 and not np.less(g[:-1], g[1:], out=ws.mask[:k - 1]).all():
            mine = np.equal(np.take(state, g, out=ws.st[:k], mode="clip"), tickets,
                            out=ws.mask[:k])
            if not mine.all():
                g, sid, idx = _select(mine, [g, sid, idx], ws.spare(g, sid, idx))
        sid, idx = self._drop_free(ws, g, sid, idx)
        self.marked[worker] += len(sid)
        if sn.all_scannable:
            out.add(sid, idx, None)
            return
        scan = np.take(sn.scannable, sid, out=ws.mask[:len(sid)], mode="clip")
        out.add(sid, idx, None if scan.all() else np.flatnonzero(scan))

    def _span_ids(self, ws: Workspace, d: np.ndarray) -> np.ndarray:
        """Span id (0: none) of each heap offset d, into ws.sid."""
        sn = self.snap
        page_sid = sn.page_sids()
        out = ws.sid[:len(d)]
        if sn.contiguous:
            return np.take(page_sid, np.right_shift(d, PAGE_SHIFT, out=ws.t1[:len(d)]), out=out,
                           mode="clip")
        page = sn.page_index_general(d)
        out[:] = np.where(page >= 0, np.take(page_sid, np.maximum(page, 0)), 0)
        return out

    def _drop_free(self, ws: Workspace, g: np.ndarray, sid: np.ndarray,
                   idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unmark and drop the slots that hold no allocated object (Go's isFree check: at or
        past freeindex and clear in allocBits); their mark word becomes -1."""
        sn = self.snap
        fi = np.take(sn.freeidx, sid, out=ws.widx[:len(sid)], mode="clip")
        maybe_free = np.greater_equal(idx, fi, out=ws.mask[:len(sid)])
        if not maybe_free.any():
            return sid, idx
        fs, fi = np.compress(maybe_free, sid), np.compress(maybe_free, idx)
        byte = np.take(sn.bits8, np.take(sn.table.allocbits, fs) + (fi >> 3))
        allocated = ((byte >> (fi & 7).astype(np.uint8)) & 1).astype(np.bool_)
        if allocated.all():
            return sid, idx
        keep = ~maybe_free
        keep[maybe_free] = allocated
        self.state[np.compress(~keep, g)] = -1
        return np.compress(keep, sid), np.compress(keep, idx)


def _word_major(m: int, n0: int) -> bool:
    """Whether _gather lays out m objects of n0 words word by word (word k of every
    object together) rather than object by object."""
    return m >= n0 > 8


def _split_oblets(first: np.ndarray, nwords: np.ndarray, typed: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split objects larger than OBLET_WORDS into pieces, as Go scans big objects in oblets.
    ``first``: each object's first word index."""
    pieces = (nwords + OBLET_WORDS - 1) // OBLET_WORDS
    obj = np.repeat(np.arange(len(first)), pieces)
    k = np.arange(len(obj)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    new_base = first[obj] + k * OBLET_WORDS
    new_words = np.minimum(nwords[obj] - k * OBLET_WORDS, OBLET_WORDS)
    return new_base, new_words, None if typed is None else typed[obj]


def _blocks(nwords: np.ndarray) -> Iterator[tuple[int, int, int]]:
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


def _select(mask: np.ndarray, arrays: list[np.ndarray],
            bufs: list[np.ndarray]) -> list[np.ndarray]:
    """Each array's elements where mask is set, into the matching buffer (one that does not
    hold the array): one index array, then np.take with out= (np.compress would allocate
    an index array and, for out=, a copy, per array)."""
    sel = np.flatnonzero(mask)
    k = len(sel)
    return [np.take(a, sel, out=b[:k], mode="clip") for a, b in zip(arrays, bufs)]
