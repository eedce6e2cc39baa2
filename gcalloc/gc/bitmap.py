"""The heap bitmap: two bits per heap word saying whether the word may hold a pointer and
whether any pointer follows it in its object (Go 1.16 mbitmap.go's heapBits, per arena).

Layout, per arena (``Arenas.bitmap`` at ``arena.bitmap_off``): byte k describes words 4k..4k+3
of the arena; bit j (0-3) is word 4k+j's *pointer* bit, bit j+4 its *scan* bit. A word with its
scan bit clear ends its object's pointer data ("dead"): the marker stops there.

How objects get their bits:
- a span of a scan class is filled with all ones when it goes in use (``fill_span``): every
  word of every slot is a possible pointer, which is exactly a conservative object
  (``type=None, noscan=False``), so those allocations write no bits at all;
- a typed object's bits are one precomputed pattern, a ``Layout`` (the type's mask repeated for
  arrays, dead after the last pointer word), made once per (Type, slot size, data bytes) and
  written with one slice or fancy-index assignment. Small typed objects are written in bulk:
  the allocation fast path only appends the address to its layout's log (``PendingBits``) and
  ``flush`` writes every logged object of a layout at once, grouped by where the object starts
  inside a bitmap byte. The marker flushes first (``SpanSnapshot``), as do explicit free and
  every reader here; large typed objects are written when allocated;
- when a typed object's slot is freed (sweep or explicit free) its bits go back to all ones
  (``reset_object``, ``reset_slots``), restoring the invariant below.

Objects need not start on a bitmap byte: 16- and 48-byte slots, say, share bytes with their
neighbours. A Layout holds, for each of the four word phases inside a byte, the bytes to write
and the mask of bits that belong to other objects (kept by a read-modify-write). Two objects of
one size class with the same phase never share a byte (they are a multiple of lcm(4, words)
words apart), so one fancy-index assignment per phase writes a whole group exactly.

Span types: after a flush, a small span whose every slot's bits equal its layout's pattern (so
every slot holds an object of that layout: a free or reserved slot has all ones) carries the
Layout in ``span.typed`` (Go 1.22's span-wide type for small objects); the marker then reads
only the layout's pointer words of its objects, without looking at the bitmap. Any free of a
slot in such a span makes it plain ``typed = True`` again (``reset_slots``), so the claim holds
until the next flush checks it anew. ``span.typed``: False (all ones), True (some typed object:
read the bitmap), or a Layout.

Invariant: in a scan span, the bits of every slot not holding a typed object are all ones (a
logged object still to be flushed has all ones too: it is scanned conservatively until then).
Noscan spans' bits are never read. Every write holds ``WRITE_LOCK``: neighbours share bytes.
"""

from __future__ import annotations

import array
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gcalloc.arena import HEAP_ARENA_BITMAP_BYTES, HEAP_ARENA_BYTES, PAGES_PER_ARENA, Arenas
from gcalloc.errors import HeapCorruption
from gcalloc.gc.types import Type
from gcalloc.sizeclasses import PAGE_SHIFT

if TYPE_CHECKING:
    from gcalloc.mspan import MSpan

ALL_ONES = 0xFF
WORDS_PER_ARENA = HEAP_ARENA_BYTES >> 3
# One lock for every bitmap write of every heap: writers are slow paths (flush, free, sweep,
# large typed objects) and neighbouring objects share bitmap bytes.
WRITE_LOCK = threading.RLock()
_SHIFT4 = np.arange(4, dtype=np.uint8)


def _bitmap_index(arenas: Arenas, addr: int) -> int:
    arena = arenas.arena_of(addr)
    if arena is None:
        raise HeapCorruption(f"heap bitmap: {addr:#x} is not in the heap")
    return arena.bitmap_off + ((addr - arena.base) >> 5)


def _arena_pieces(arenas: Arenas, base: int, nbytes: int):
    """(bitmap start index, first word index within the piece, words) for each arena the range
    [base, base + nbytes) touches."""
    word = 0
    total = nbytes >> 3
    while word < total:
        addr = base + (word << 3)
        arena = arenas.arena_of(addr)
        if arena is None:
            raise HeapCorruption(f"heap bitmap: {addr:#x} is not in the heap")
        w0 = (addr - arena.base) >> 3
        n = min(total - word, WORDS_PER_ARENA - w0)
        yield arena.bitmap_off, w0, word, n
        word += n


def fill_span(arenas: Arenas, base: int, nbytes: int, value: int) -> None:
    """Set the bits of every word of a span (page-aligned, whole bytes of bitmap) to
    ``value`` per bitmap byte: ALL_ONES (every word a pointer) or 0."""
    bitmap = arenas.bitmap
    with WRITE_LOCK:
        for off, w0, _, n in _arena_pieces(arenas, base, nbytes):
            bitmap[off + (w0 >> 2): off + ((w0 + n) >> 2)] = value


def span_all_ones(arenas: Arenas, base: int, nbytes: int) -> bool:
    """Whether every bitmap byte of the span [base, base + nbytes) is ALL_ONES (verify)."""
    bitmap = arenas.bitmap
    return all((bitmap[off + (w0 >> 2): off + ((w0 + n) >> 2)] == ALL_ONES).all()
               for off, w0, _, n in _arena_pieces(arenas, base, nbytes))


def span_has_layout(arenas: Arenas, s: MSpan, lay: Layout) -> bool:
    """Whether every slot of small span s has lay's bits (a span type's claim; verify)."""
    nbytes = s.npages << PAGE_SHIFT
    arena = arenas.arena_of(s.base)
    if arena is None:
        return False
    i = arena.bitmap_off + ((s.base - arena.base) >> 5)
    return bool((arenas.bitmap[i:i + (nbytes >> 5)] == lay.span_row(s.nelems, nbytes)).all())


def object_bits(typ: Type, data_bytes: int, elemsize: int) -> tuple[int, int]:
    """(pointer bits, scan bits) over the object's words, as ints (bit i: word i).

    ``data_bytes`` is a multiple of the type's size (an array of typ); words past it are
    dead, as are the words after the last pointer word.
    """
    nwords = elemsize >> 3
    if typ.ptrdata == 0 or data_bytes == 0:
        return 0, 0
    count = data_bytes // typ.size if typ.size else 0
    # Arrays of pointerful types have word-multiple elements (Heap.alloc_typed checks), so
    # the mask repeats with a stride of whole words; doubling keeps this O(n log n).
    stride = typ.size >> 3
    ptr, have = typ.ptrmask, 1
    while have < count:
        take = min(have, count - have)
        ptr |= (ptr & ((1 << (take * stride)) - 1)) << (have * stride)
        have += take
    ptr &= (1 << nwords) - 1
    scan = (1 << ptr.bit_length()) - 1
    return ptr, scan


def _int_bits(x: int, n: int) -> np.ndarray:
    """Bits 0..n-1 of x as a uint8 array."""
    raw = np.frombuffer(x.to_bytes((n + 7) >> 3, "little"), np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n]


class Layout:
    """The heap bits of one slot: ``nwords`` words with pointer bits ``ptr`` and scan bits
    ``scan`` (ints, bit i: word i), precomputed for writing and marking.

    ``offsets``: the pointer words' indexes (what the marker reads of a slot in a span of this
    layout). ``phase(ph)``: (bytes, keep) to write for a slot starting at word ``ph`` of a
    bitmap byte; ``keep`` has the bits of the bytes that belong to other words."""

    __slots__ = ("nwords", "ptr", "scan", "offsets", "name", "_phases", "_rows", "_runs",
                 "__weakref__")

    def __init__(self, ptr: int, scan: int, nwords: int, name: str = "") -> None:
        self.nwords = nwords
        self.ptr = ptr
        self.scan = scan
        self.name = name
        self.offsets = np.flatnonzero(_int_bits(ptr, nwords)).astype(np.int64)
        self._phases: list[tuple[np.ndarray, np.ndarray] | None] = [None] * 4
        self._rows: dict[tuple[int, int], np.ndarray] = {}
        # per phase: (row, the slots it holds); a row is as long in bytes as a run of more
        # slots can be (the last byte is shared), so it is the slots that are compared
        self._runs: list[tuple[np.ndarray, int] | None] = [None] * 4

    @classmethod
    def of(cls, typ: Type, elemsize: int, data_bytes: int) -> Layout:
        ptr, scan = object_bits(typ, data_bytes, elemsize)
        return cls(ptr, scan, elemsize >> 3, typ.name)

    def phase(self, ph: int) -> tuple[np.ndarray, np.ndarray]:
        found = self._phases[ph]
        if found is None:
            n = self.nwords
            nb = (ph + n + 3) >> 2
            p = np.zeros(nb * 4, np.uint8)
            s = np.zeros(nb * 4, np.uint8)
            own = np.zeros(nb * 4, np.uint8)
            p[ph:ph + n] = _int_bits(self.ptr, n)
            s[ph:ph + n] = _int_bits(self.scan, n)
            own[ph:ph + n] = 1
            byte = ((p.reshape(nb, 4) << _SHIFT4).sum(1) | (s.reshape(nb, 4) << (_SHIFT4 + 4))
                    .sum(1)).astype(np.uint8)
            owned = ((own.reshape(nb, 4) * 0x11) << _SHIFT4).sum(1).astype(np.uint8)
            found = self._phases[ph] = (byte, (ALL_ONES ^ owned).astype(np.uint8))
        return found

    def span_row(self, nelems: int, nbytes: int) -> np.ndarray:
        """The bitmap bytes of a span of ``nbytes`` holding ``nelems`` slots of this layout
        (the tail past the last slot all ones, as fill_span left it)."""
        key = (nelems, nbytes)
        row = self._rows.get(key)
        if row is None:
            row = np.full(nbytes >> 5, ALL_ONES, np.uint8)
            starts = np.arange(nelems, dtype=np.int64) * self.nwords
            _write_groups(row, starts >> 2, starts & 3, self)
            self._rows[key] = row
        return row

    def run_row(self, ph: int, m: int) -> np.ndarray:
        """The bitmap bytes of m consecutive slots of this layout, the first starting at
        word ``ph`` of its byte; words outside the run are 0. Cached, grown by doubling."""
        found = self._runs[ph]
        if found is not None and m <= found[1]:
            return found[0]
        n = self.nwords
        cap = max(m, 64, 2 * found[1] if found is not None else 0)
        total = ph + cap * n
        nb = (total + 3) >> 2
        p = np.zeros(nb * 4, np.uint8)
        q = np.zeros(nb * 4, np.uint8)
        p[ph:total] = np.tile(_int_bits(self.ptr, n), cap)
        q[ph:total] = np.tile(_int_bits(self.scan, n), cap)
        row = ((p.reshape(nb, 4) << _SHIFT4).sum(1)
               | (q.reshape(nb, 4) << (_SHIFT4 + 4)).sum(1)).astype(np.uint8)
        self._runs[ph] = (row, cap)
        return row

    def __repr__(self) -> str:
        return f"<Layout {self.name} words={self.nwords} ptr={self.ptr:#b}>"


_ONES: dict[int, Layout] = {}


def ones_layout(nwords: int) -> Layout:
    """The conservative layout of an nwords-word slot (every word a pointer)."""
    found = _ONES.get(nwords)
    if found is None:
        m = (1 << nwords) - 1
        found = _ONES[nwords] = Layout(m, m, nwords, "conservative")
    return found


def _write_groups(bitmap: np.ndarray, first: np.ndarray, ph: np.ndarray, lay: Layout) -> None:
    """Write lay's bits for the objects whose first bitmap byte is ``first`` (int64) and first
    word phase ``ph``, one fancy assignment per phase present."""
    phases = (0,) if lay.nwords & 3 == 0 and not ph.any() else range(4)
    for k in phases:
        sel = first if len(phases) == 1 else first[ph == k]
        if not len(sel):
            continue
        byte, keep = lay.phase(k)
        if len(byte) == 1:
            idx = sel
        else:
            idx = (sel[:, None] + np.arange(len(byte), dtype=np.int64)).reshape(-1)
            byte = np.tile(byte, len(sel))
            keep = np.tile(keep, len(sel))
        if keep.any():
            bitmap[idx] = (bitmap[idx] & keep) | byte
        else:
            bitmap[idx] = byte


RUN_MIN = 8     # consecutive slots from which a logged run is written as one slice
BIG_WORDS = 64  # slots at least this big are written one slice each (fancy indexing of
                # many bytes per object costs more than a slice per object)


def _write_run(bitmap: np.ndarray, i: int, p0: int, m: int, lay: Layout) -> None:
    """Write m consecutive slots of lay, the first at word p0 of bitmap byte i: one slice
    of ``run_row``, with a read-modify-write of only the two edge bytes (shared with the
    neighbouring slots when the run does not start or end on a byte). The cached row may
    hold more slots than the run: the edge bytes take only the run's words from it."""
    end = p0 + m * lay.nwords
    nb = (end + 3) >> 2
    vals = lay.run_row(p0, m)[:nb].copy()
    seg = bitmap[i:i + nb]
    keep_first = (0x11 * ((1 << p0) - 1)) & ALL_ONES
    keep_last = (0x11 * (0xF ^ ((1 << (end & 3)) - 1))) & ALL_ONES if end & 3 else 0
    if nb == 1:
        keep_first |= keep_last
        keep_last = 0
    if keep_first:
        vals[0] = (int(vals[0]) & ~keep_first) | (int(seg[0]) & keep_first)
    if keep_last:
        vals[-1] = (int(vals[-1]) & ~keep_last) | (int(seg[-1]) & keep_last)
    seg[:] = vals


def _locate(arenas: Arenas, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
    """(arena slot, word index in the arena) of each heap address (uint64); HeapCorruption
    for an address outside the heap. A log usually lies in one arena: then two array
    operations, without the arena index."""
    if not len(addrs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), None
    lo = int(addrs.min())
    hi = int(addrs.max())
    arena = arenas.arena_of(lo)
    if arena is not None and hi - arena.base < HEAP_ARENA_BYTES:
        words = ((addrs - np.uint64(arena.base)) >> np.uint64(3)).astype(np.int64)
        return np.full(len(addrs), arena.slot, np.int64), words, None
    slot = arenas.slots_of(addrs).astype(np.int64) - 1
    if slot.min() < 0:
        raise HeapCorruption("heap bitmap: a typed object outside the heap")
    bases = np.array([x.base for x in arenas.all], dtype=np.uint64)
    words = ((addrs - bases[slot]) >> np.uint64(3)).astype(np.int64)
    return slot, words, None


def write_layout(arenas: Arenas, p: int, lay: Layout) -> None:
    """Write lay's bits for the one object at p (large objects, freed slots)."""
    arena = arenas.arena_of(p)
    if arena is None:
        raise HeapCorruption(f"heap bitmap: {p:#x} is not in the heap")
    w = (p - arena.base) >> 3
    if w + lay.nwords > WORDS_PER_ARENA:      # a large object across arenas
        _write_bits(arenas, p, lay.nwords, lay.ptr, lay.scan)
        return
    byte, keep = lay.phase(w & 3)
    i = arena.bitmap_off + (w >> 2)
    with WRITE_LOCK:
        seg = arenas.bitmap[i:i + len(byte)]
        if keep[0] or keep[-1]:      # only the edge bytes can hold other objects' bits
            seg[:] = (seg & keep) | byte
        else:
            seg[:] = byte


def set_object_type(arenas: Arenas, p: int, elemsize: int, typ: Type, data_bytes: int) -> None:
    """Write the precise bits of the object at p now (Go's heapBitsSetType)."""
    write_layout(arenas, p, Layout.of(typ, elemsize, data_bytes))


def reset_object(arenas: Arenas, p: int, elemsize: int) -> None:
    """Give a freed typed slot its conservative bits back (all ones)."""
    write_layout(arenas, p, ones_layout(elemsize >> 3))


def reset_slots(arenas: Arenas, s: MSpan, idxs: list[int]) -> None:
    """Give the freed slots ``idxs`` of typed span s all-ones bits; s is no longer one
    layout's span (a free slot may take an untyped object)."""
    if not idxs:
        return
    if s.typed is not True:
        s.typed = True
    lay = ones_layout(s.elemsize >> 3)
    if len(idxs) == 1:
        write_layout(arenas, s.base + idxs[0] * s.elemsize, lay)
        return
    arena = arenas.arena_of(s.base)
    if arena is None:
        raise HeapCorruption(f"heap bitmap: span {s!r} is not in the heap")
    w = ((s.base - arena.base) >> 3) + np.asarray(idxs, dtype=np.int64) * lay.nwords
    with WRITE_LOCK:
        _write_groups(arenas.bitmap, arena.bitmap_off + (w >> 2), w & 3, lay)


def _write_bits(arenas: Arenas, p: int, nwords: int, ptr: int, scan: int) -> None:
    """The general writer (any arena crossing): per arena piece, by unpacking its bytes."""
    bitmap = arenas.bitmap
    with WRITE_LOCK:
        for off, w0, first, n in _arena_pieces(arenas, p, nwords << 3):
            pbits = (ptr >> first) & ((1 << n) - 1)
            sbits = (scan >> first) & ((1 << n) - 1)
            _write_vector(bitmap, off, w0, n, pbits, sbits)


def _write_vector(bitmap: np.ndarray, off: int, w0: int, n: int, pbits: int,
                  sbits: int) -> None:
    lo = w0 >> 2
    hi = (w0 + n + 3) >> 2
    seg = bitmap[off + lo: off + hi]
    bits = np.unpackbits(seg, bitorder="little").reshape(-1, 2, 4)
    ww = np.arange(n) + (w0 - (lo << 2))
    bits[ww >> 2, 0, ww & 3] = _int_bits(pbits, n)
    bits[ww >> 2, 1, ww & 3] = _int_bits(sbits, n)
    seg[:] = np.packbits(bits.reshape(-1), bitorder="little")


# --- typed allocations whose bits are still to be written ----------------------------------

FastEntry = tuple[int, int, Callable[[int], None], "Layout | None"]


class PendingBits:
    """The logs of one heap's small typed allocations whose bits are not written yet, one
    list of addresses per Layout, and the allocator's typed fast table ``fast``
    (type -> (size, span class, log append, layout)), whose appends go to these logs.

    ``flush`` first gives every fast entry a fresh log, then writes the old logs. An
    allocation that read its entry before the swap and appends after the write is lost from
    the logs: its object keeps all-ones bits, which is conservative and always correct. A
    collection flushes after it exhausted every run (flush_mcaches), so no object handed out
    before a cycle can be logged into the next one."""

    LIMIT = 1 << 16     # logged objects at which the typed slow path flushes (memory bound)

    def __init__(self, arenas: Arenas, spans: list, fast: dict) -> None:
        self.arenas = arenas
        self.spans = spans
        self.fast = fast
        self.logs: dict[Layout, array.array] = {}
        self.closed = False

    def log(self, lay: Layout) -> array.array:
        """lay's current log of addresses (made on first use)."""
        found = self.logs.get(lay)
        if found is None:
            found = self.logs[lay] = array.array("Q")
        return found

    def pending(self) -> int:
        return sum(len(v) for v in self.logs.values())

    def flush(self) -> None:
        """Write the bits of every logged object and give its span its type."""
        with WRITE_LOCK:
            if self.closed:
                return
            logs, self.logs = self.logs, {}
            for key, (size, spc, _append, lay) in list(self.fast.items()):
                if lay is not None:
                    self.fast[key] = (size, spc, self.log(lay).append, lay)
            for lay, addrs in logs.items():
                if addrs:
                    # a copy by tobytes: a late append to this log must not meet an
                    # exported buffer (BufferError in the allocating thread)
                    self._write(lay, np.frombuffer(addrs.tobytes(), np.uint64))

    def _write(self, lay: Layout, addrs: np.ndarray) -> None:
        """Write the bits of the logged objects of one layout and type their spans. A log is
        mostly runs of consecutive slots (an mcache's runs): each run of RUN_MIN or more (of
        any length for slots of BIG_WORDS or more) is one slice, found with three array
        operations over the log and then handled per run; the others are written by phase
        groups."""
        arenas = self.arenas
        n = lay.nwords
        sids: set[int] = set()
        rest: np.ndarray | None = None
        if len(addrs) >= RUN_MIN or n >= BIG_WORDS:
            brk = np.flatnonzero(np.diff(addrs) != np.uint64(n << 3)) + 1
            starts = np.concatenate(([0], brk))
            ends = np.concatenate((brk, [len(addrs)]))
            long = (ends - starts) >= (1 if n >= BIG_WORDS else RUN_MIN)
            if long.any():
                rest = np.ones(len(addrs), np.bool_)
                a0, a1 = starts[long].tolist(), ends[long].tolist()
                with WRITE_LOCK:
                    for a, b, p in zip(a0, a1, addrs[starts[long]].tolist()):
                        arena = arenas.arena_of(p)
                        if arena is None:
                            raise HeapCorruption(f"heap bitmap: {p:#x} is not in the heap")
                        w = (p - arena.base) >> 3
                        end = w + (b - a) * n
                        if end > WORDS_PER_ARENA:
                            continue        # across an arena's end: by groups below
                        _write_run(arenas.bitmap, arena.bitmap_off + (w >> 2), w & 3, b - a,
                                   lay)
                        rest[a:b] = False
                        pg = arena.pages_off + (w >> (PAGE_SHIFT - 3))
                        sids.update(arenas.page_span[pg:arena.pages_off + (
                            (end - 1) >> (PAGE_SHIFT - 3)) + 1].tolist())
        left = addrs if rest is None else addrs[rest]
        if len(left):
            slot, words, _ = _locate(arenas, left)
            _write_groups(arenas.bitmap, slot * HEAP_ARENA_BITMAP_BYTES + (words >> 2),
                          words & 3, lay)
            pages = slot * PAGES_PER_ARENA + (words >> (PAGE_SHIFT - 3))
            sids.update(arenas.page_span[np.unique(pages)].tolist())
        small = []
        for i in sids:
            s = self.spans[i] if i else None
            if s is None:
                continue
            if not s.typed:
                s.typed = True
            if s.sizeclass:
                small.append(s)
        if small:
            self._type_spans(lay, small)

    def _type_spans(self, lay: Layout, spans: list[MSpan]) -> None:
        """Give lay to the spans whose every slot now has lay's bits (see the module
        comment); the others are plain typed spans."""
        s0 = spans[0]
        row = lay.span_row(s0.nelems, s0.npages << PAGE_SHIFT)
        slot, words, _ = _locate(self.arenas, np.array([s.base for s in spans], np.uint64))
        starts = slot * HEAP_ARENA_BITMAP_BYTES + (words >> 2)
        rows = self.arenas.bitmap[starts[:, None] + np.arange(len(row), dtype=np.int64)]
        same = (rows == row).all(axis=1).tolist()
        for s, uniform in zip(spans, same):
            # span.typed is declared a bool in mspan.py; a Layout is its span-type value
            s.typed = lay if uniform and s.npages == s0.npages else True  # type: ignore[assignment]

    def close(self) -> None:
        with WRITE_LOCK:
            self.closed = True
            self.logs = {}
            _PENDING.pop(self.arenas, None)


# Arenas -> its heap's PendingBits, both weakly: the Heap owns its PendingBits (which holds
# the Arenas), so neither outlives the heap through this table.
_PENDING: weakref.WeakKeyDictionary[Arenas, weakref.ref[PendingBits]] = \
    weakref.WeakKeyDictionary()


def register(pending: PendingBits) -> None:
    """Make ``flush(arenas)`` (the marker, the readers here) write pending's logs."""
    _PENDING[pending.arenas] = weakref.ref(pending)


def flush(arenas: Arenas) -> None:
    """Write every logged typed object's bits of the heap owning arenas (if it logs any)."""
    ref = _PENDING.get(arenas)
    pending = ref() if ref is not None else None
    if pending is not None and pending.logs:
        pending.flush()


def read_bits(arenas: Arenas, p: int, nwords: int) -> tuple[int, int]:
    """(pointer bits, scan bits) of nwords words from p, as ints; for tests and verify."""
    flush(arenas)
    bitmap = arenas.bitmap
    ptr = scan = 0
    for i in range(nwords):
        idx = _bitmap_index(arenas, p + i * 8)
        j = ((p >> 3) + i) & 3
        b = int(bitmap[idx])
        ptr |= ((b >> j) & 1) << i
        scan |= ((b >> (j + 4)) & 1) << i
    return ptr, scan
