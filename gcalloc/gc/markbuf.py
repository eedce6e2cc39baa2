"""Mark buffers: the grey set's frontier chunks, each mark worker's scratch arrays, and the
MarkScratch a Collector keeps from cycle to cycle (the role of Go's mgcwork.go workbufs,
which hold grey objects between scans and are recycled through a free list).

A *frontier* is one breadth-first level of grey objects as (span id, slot) pairs, in chunks of
at most CHUNK_CAP. A vector step reads its objects' words in *blocks* of at most BLOCK_WORDS
candidate words plus one oblet (BUF_WORDS), so every buffer here is sized for one block.

Why the buffers are kept: a fresh numpy temporary costs a page fault per 4 KiB, a large part
of the time of a collection of a large heap, so the workspaces, chunk buffers and mark words
are reused by every block, step and cycle.

Invariants: a block's output always fits in one chunk (CHUNK_CAP >= BUF_WORDS); a chunk
buffer is in at most one frontier, and returns to the pool only once the step that reads it
is over; the mark words MarkScratch hands out are zeroed (all white) and stay valid until it
hands out the next ones; the two workers' tickets never collide (each worker's range starts
at worker * BUF_WORDS + 1, and tickets are > 0, so a ticket also marks).
"""

from __future__ import annotations

import numpy as np

OBLET_WORDS = 16384         # Go's maxObletBytes (128 KiB): big objects scan in pieces
BLOCK_WORDS = 1 << 15       # candidate words per block of a vector step (see Workspace)
BUF_WORDS = BLOCK_WORDS + OBLET_WORDS
CHUNK_CAP = 1 << 16         # objects per frontier chunk (at least one block's output)
KEEP_CHUNKS = 16            # frontier chunk buffers kept between cycles (1 MiB each)
KEEP_MARK_WORDS = 1 << 22   # mark-word arrays up to this many words (16 MiB) are kept
assert CHUNK_CAP >= BUF_WORDS  # a block's output always fits in one chunk

ChunkBuffer = tuple[np.ndarray, np.ndarray]   # (span ids, slots)


class Workspace:
    """One mark worker's scratch arrays, reused by every block of every vector step and (the
    Collector keeps them) by every cycle: numpy temporaries of this size are otherwise fresh
    memory each time, and faulting it in costs more than the arithmetic. They grow with the
    blocks and chunks seen, to about 9 MiB. Arrays come in pairs where a selection copies
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
        self.sid = np.empty(n, np.int64)
        self.sid2 = np.empty(n, np.int64)
        self.t1 = np.empty(n, np.int64)        # page, limit, then slot
        self.t2 = np.empty(n, np.int64)
        self.g = np.empty(n, np.int64)         # object numbers
        self.g2 = np.empty(n, np.int64)
        self.st = np.empty(n, np.int32)        # mark words read back
        self.mask = np.empty(n, np.bool_)
        self.find_rows = np.empty((n, 4), np.int64)   # SpanSnapshot.find rows
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
        self.scan_rows = np.empty((n, 3), np.int64)   # SpanSnapshot.scan rows
        self.chunk_size = n

    def spare(self, g: np.ndarray, sid: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
        """The buffers of the (object number, span id, slot) pairs that do not hold these."""
        return [_other(g, self.g, self.g2), _other(sid, self.sid, self.sid2),
                _other(idx, self.t1, self.t2)]


def _other(arr: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return b if np.may_share_memory(arr, a) else a


class MarkScratch:
    """What a Collector keeps from cycle to cycle for its Markers: the mark workers'
    Workspaces and the mark-word array (up to KEEP_MARK_WORDS words; a bigger heap gets a
    fresh one each cycle). So a Marker's mark words are valid until the next cycle starts."""

    def __init__(self) -> None:
        self.workspaces: list[Workspace] = []
        self._words = np.zeros(0, np.int32)
        self._chunks: list[ChunkBuffer] = []   # free frontier buffers

    def workspace(self, worker: int) -> Workspace:
        while len(self.workspaces) <= worker:
            self.workspaces.append(Workspace(len(self.workspaces)))
        return self.workspaces[worker]

    def chunk_buffer(self) -> ChunkBuffer:
        """A (span ids, slots) pair of CHUNK_CAP-long arrays for a frontier chunk (list pop
        and append are atomic: the two workers share the pool without a lock)."""
        try:
            return self._chunks.pop()
        except IndexError:
            return np.empty(CHUNK_CAP, np.int64), np.empty(CHUNK_CAP, np.int64)

    def release(self, buffers: list[ChunkBuffer]) -> None:
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


class Frontier:
    """A grey set: (span ids, slots) chunks of at most CHUNK_CAP objects. Chunks that shade
    writes live in buffers from the MarkScratch pool (``buffers``), returned once the step
    that reads them is over: a new array per frontier would be fresh memory every step.
    A frontier made ``of`` existing arrays has no scratch and takes no ``add``."""

    def __init__(self, scratch: MarkScratch | None = None) -> None:
        self.scratch = scratch
        self.chunks: list[ChunkBuffer] = []
        self.buffers: list[ChunkBuffer] = []
        self.count = 0
        self._buf: ChunkBuffer | None = None
        self._n = 0

    @classmethod
    def of(cls, sids: np.ndarray, idxs: np.ndarray) -> Frontier:
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
            assert self.scratch is not None, "a frontier made of arrays takes no add"
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

    def done(self) -> Frontier:
        self._close()
        return self

    def join(self, other: Frontier) -> Frontier:
        self.chunks += other.chunks
        self.buffers += other.buffers
        self.count += other.count
        return self

    def split(self) -> tuple[list[ChunkBuffer], list[ChunkBuffer]]:
        """The chunks split into two lists of about half the objects each."""
        half, count = self.count // 2, 0
        first: list[ChunkBuffer] = []
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
