"""Special records: per-object extras the collector must know about (Go's mheap.go specials).

A *special* is attached to one object and says something the heap bits cannot: "run this
finalizer when the object dies" (KIND_FINALIZER), "this object was sampled by the heap
profiler into this bucket" (KIND_PROFILE), "these weak pointers see the object until it dies"
(KIND_WEAK, Go 1.24's _KindSpecialWeakHandle) or "run these cleanups once it died"
(KIND_CLEANUP, Go 1.24's _KindSpecialCleanup; one record per address holds every cleanup
added there, where Go links a record per cleanup). Each in-use span owns its records in
``span.specials``: a Python list (None when empty) sorted by ``(offset, kind)``, where
``offset`` is the byte offset of the address the record was set for from ``span.base``.
The finalizer kind sorts first, as in Go, so that whoever walks an object's records meets its
finalizers before its profile record.

Records come from FixAllocs (Go's specialfinalizeralloc / specialprofilealloc /
specialWeakHandleAlloc / specialCleanupAlloc), charged as Go charges them: a finalizer record
is 48 bytes, a profile record 24 (Go 1.16 amd64 struct sizes), a weak-handle record 24 and a
cleanup record 32 (Go 1.24), carved from 16 KiB chunks that Go takes with persistentalloc
and charges to ``other_sys``. Here the chunks are taken from the heap's PersistentAlloc too
(real memory, so that MemStats.sys keeps matching what is mapped); the records themselves are
Python objects.

Who changes a span's list, and when:

- ``add`` / ``remove`` (SetFinalizer, setprofilebucket) sweep the span first (Go's
  ensureSwept), so they never race with the sweep of the span's last cycle;
- ``free_objects`` runs for objects that die: from sweep (the span's sweep lock is held, so
  the span is being swept by this thread) and from explicit free (the span is swept and its
  mcentral lock is held). It unlinks every record of those objects and hands it to
  freespecial: a profile record reports the free to the profiler (mProf_Free), a finalizer
  record is dropped without running, a weak record clears its cell (every weak pointer to
  the address then reads None), a cleanup record hands its cleanups to ``on_cleanups`` to
  be queued;
- ``take_finalizer`` and ``take`` run at mark termination, with the world stopped
  (gc/finalizer.py, gc/weak.py).

Invariants (under ``lock``, Go's speciallock, which also guards the FixAllocs):
``span.specials`` is None or a non-empty list strictly increasing in ``(offset, kind)``;
no two records share an offset and a kind; ``spans`` holds exactly the spans whose list is
non-empty; ``finalizers`` counts the finalizer records attached to spans,
``weak_or_cleanup`` the weak and cleanup records; a cleanup record is never empty; a linked
weak record's cell holds the address it was made for.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from itertools import pairwise
from typing import TYPE_CHECKING, cast

from gcalloc.errors import HeapCorruption
from gcalloc.fixalloc import FixAlloc
from gcalloc.mspan import MSpan

if TYPE_CHECKING:   # annotations only: mprof uses this module
    from gcalloc.gc.mprof import Bucket

KIND_FINALIZER = 1
KIND_PROFILE = 2
KIND_WEAK = 3
KIND_CLEANUP = 4
SPECIAL_FINALIZER_BYTES = 48    # special{next, offset, kind} + fn, nret, fint, ot
SPECIAL_PROFILE_BYTES = 24      # special{next, offset, kind} + b
SPECIAL_WEAK_BYTES = 24         # special + handle
SPECIAL_CLEANUP_BYTES = 32      # special + fn + id

class Special:
    """One special record. ``offset``: from the span's base to the address it was set for
    (inside a tiny block, that may be an interior address)."""

    __slots__ = ("offset", "kind")

    def __init__(self) -> None:
        self.offset = 0
        self.kind = 0

    def key(self) -> tuple[int, int]:
        return self.offset, self.kind

    def __repr__(self) -> str:
        return f"<{type(self).__name__} offset={self.offset}>"


class SpecialFinalizer(Special):
    """KIND_FINALIZER: ``fn(p)`` is to run once the object is unreachable."""

    __slots__ = ("fn",)

    def __init__(self) -> None:
        super().__init__()
        self.kind = KIND_FINALIZER
        self.fn: Callable[[int], object] | None = None


class SpecialProfile(Special):
    """KIND_PROFILE: the object was sampled into heap-profile bucket ``bucket``."""

    __slots__ = ("bucket",)

    def __init__(self) -> None:
        super().__init__()
        self.kind = KIND_PROFILE
        self.bucket: Bucket | None = None


class WeakCell:
    """What every weak pointer to one address shares (Go's weak handle, an *atomic.Uintptr):
    the address while the object lives, 0 once a collection found it unreachable or it was
    freed. Only the collector (world stopped), explicit free and close clear it."""

    __slots__ = ("addr",)

    def __init__(self, addr: int) -> None:
        self.addr = addr


class SpecialWeak(Special):
    """KIND_WEAK: the cell the object's weak pointers at this address read."""

    __slots__ = ("cell",)

    def __init__(self) -> None:
        super().__init__()
        self.kind = KIND_WEAK
        self.cell: WeakCell | None = None


class SpecialCleanup(Special):
    """KIND_CLEANUP: ``cleanups[id] = (fn, arg)``, each to run as fn(arg) once the object
    died; ids are unique per heap (what a Cleanup handle stops)."""

    __slots__ = ("cleanups",)

    def __init__(self) -> None:
        super().__init__()
        self.kind = KIND_CLEANUP
        self.cleanups: dict[int, tuple[Callable[[object], object], object]] = {}


class PersistentChunks:
    """The ``sys`` stat of a special-record FixAlloc: each notional 16 KiB chunk is taken from
    persistentalloc (Go's fixalloc does ``persistentalloc(_FixAllocChunk, 0, stat)``), which
    charges ``other_sys`` when it maps memory. Persistent memory is never given back piece by
    piece, so ``sub`` (FixAlloc.clear at close) changes nothing."""

    __slots__ = ("persistent", "value", "name")

    def __init__(self, persistent, name: str) -> None:
        self.persistent = persistent
        self.value = 0
        self.name = name

    def add(self, n: int) -> None:
        self.persistent.alloc(n, 8, None)
        self.value += n

    def sub(self, n: int) -> None:
        self.value -= n


class Specials:
    """The special records of one heap. ``ensure_swept(span)`` sweeps a span if it still
    needs it; ``on_profile_free(bucket, size, explicit)`` is the profiler's mProf_Free."""

    def __init__(self, persistent, ensure_swept: Callable[[MSpan], None],
                 on_profile_free: Callable[[Bucket, int, bool], None] | None = None) -> None:
        self.lock = threading.Lock()
        self.ensure_swept = ensure_swept
        self.on_profile_free = on_profile_free
        self.finalizer_alloc: FixAlloc[SpecialFinalizer] = FixAlloc(
            SpecialFinalizer, SPECIAL_FINALIZER_BYTES, None,
            PersistentChunks(persistent, "specialfinalizeralloc"),  # type: ignore[arg-type]
            reset=_reset_finalizer)
        self.profile_alloc: FixAlloc[SpecialProfile] = FixAlloc(
            SpecialProfile, SPECIAL_PROFILE_BYTES, None,
            PersistentChunks(persistent, "specialprofilealloc"),  # type: ignore[arg-type]
            reset=_reset_profile)
        # The one cell of weak pointers to size-0 objects (they share the zerobase, which is
        # never freed, so only close() clears it); made on first use.
        self.zero_cell: WeakCell | None = None
        self.weak_alloc: FixAlloc[SpecialWeak] = FixAlloc(
            SpecialWeak, SPECIAL_WEAK_BYTES, None,
            PersistentChunks(persistent, "specialWeakHandleAlloc"),  # type: ignore[arg-type]
            reset=_reset_weak)
        self.cleanup_alloc: FixAlloc[SpecialCleanup] = FixAlloc(
            SpecialCleanup, SPECIAL_CLEANUP_BYTES, None,
            PersistentChunks(persistent, "specialCleanupAlloc"),  # type: ignore[arg-type]
            reset=_reset_cleanup)
        self.spans: set[MSpan] = set()
        self.finalizers = 0
        self.weak_or_cleanup = 0      # KIND_WEAK and KIND_CLEANUP records attached
        # Cleanups of objects that died outside a collection (explicit free): (fn, arg)s to
        # queue on the finalizer thread (gc/weak.py sets it).
        self.on_cleanups: Callable[[list[tuple[Callable[[object], object], object]]],
                                   None] | None = None

    # --- Go's addspecial / removespecial ------------------------------------------------

    def add(self, s: MSpan, offset: int, rec: Special) -> bool:
        """Link ``rec`` at ``offset`` in span s (swept first). False, and nothing changes, if
        a record of the same kind is already there (Go's addspecial)."""
        self.ensure_swept(s)
        with self.lock:
            return self._add_locked(s, offset, rec)

    def _add_locked(self, s: MSpan, offset: int, rec: Special) -> bool:
        lst = s.specials
        if lst is None:
            lst = s.specials = []
        key = (offset, rec.kind)
        i = bisect.bisect_left(lst, key, key=Special.key)
        if i < len(lst) and lst[i].key() == key:
            return False
        rec.offset = offset
        lst.insert(i, rec)
        self.spans.add(s)
        if rec.kind == KIND_FINALIZER:
            self.finalizers += 1
        elif rec.kind >= KIND_WEAK:
            self.weak_or_cleanup += 1
        return True

    def remove(self, s: MSpan, offset: int, kind: int) -> Special | None:
        """Unlink and return the record of ``kind`` at exactly ``offset`` (no interior
        match), or None. The caller frees it (Go's removespecial)."""
        self.ensure_swept(s)
        with self.lock:
            lst = s.specials
            if not lst:
                return None
            key = (offset, kind)
            i = bisect.bisect_left(lst, key, key=Special.key)
            if i == len(lst) or lst[i].key() != key:
                return None
            return self._unlink_locked(s, i)

    def _unlink_locked(self, s: MSpan, i: int) -> Special:
        lst = s.specials
        assert lst is not None   # callers found record i in it
        rec = lst.pop(i)
        if not lst:
            s.specials = None
            self.spans.discard(s)
        if rec.kind == KIND_FINALIZER:
            self.finalizers -= 1
        elif rec.kind >= KIND_WEAK:
            self.weak_or_cleanup -= 1
        return rec

    # --- finalizers (Go's addfinalizer / removefinalizer) -------------------------------

    def add_finalizer(self, s: MSpan, offset: int, fn: Callable[[int], object]) -> bool:
        """Attach finalizer ``fn`` at ``offset``; False if one is already set there."""
        self.ensure_swept(s)
        with self.lock:
            rec = self.finalizer_alloc.alloc()
            rec.fn = fn
            if self._add_locked(s, offset, rec):
                return True
            rec.fn = None
            self.finalizer_alloc.free(rec)
            return False

    def remove_finalizer(self, s: MSpan, offset: int) -> bool:
        """Detach the finalizer at ``offset``, if any; True if there was one."""
        rec = self.remove(s, offset, KIND_FINALIZER)
        if rec is None:
            return False
        with self.lock:
            self._free_record_locked(rec)
        return True

    def finalizer_records(self) -> list[tuple[MSpan, SpecialFinalizer]]:
        """Every (span, finalizer record) attached now, in span then offset order of each
        span (the world is stopped or the caller accepts a snapshot)."""
        with self.lock:
            # every span in self.spans has a non-empty list; a KIND_FINALIZER record is a
            # SpecialFinalizer
            return [(s, cast(SpecialFinalizer, rec))
                    for s in self.spans for rec in cast("list[Special]", s.specials)
                    if rec.kind == KIND_FINALIZER]

    def take_finalizer(self, s: MSpan, rec: SpecialFinalizer) -> Callable[[int], object]:
        """Unlink finalizer record ``rec`` of span s, free it and return its function (mark
        termination found its object unreachable)."""
        with self.lock:
            lst = s.specials
            i = bisect.bisect_left(lst, rec.key(), key=Special.key) if lst else 0
            if not lst or i == len(lst) or lst[i] is not rec:
                raise HeapCorruption(f"finalizer record {rec!r} is not in span {s!r}")
            self._unlink_locked(s, i)
            fn = rec.fn
            assert fn is not None   # set before the record was linked, cleared only by free
            self._free_record_locked(rec)
        return fn

    # --- weak handles and cleanups (Go 1.24's getOrAddWeakHandle, addCleanup) ----------

    def zero_weak_cell(self, zerobase: int) -> WeakCell:
        """The cell every weak pointer to a size-0 object shares."""
        with self.lock:
            if self.zero_cell is None:
                self.zero_cell = WeakCell(zerobase)
            return self.zero_cell

    def weak_cell(self, s: MSpan, offset: int, addr: int) -> WeakCell:
        """The weak cell at ``offset`` of span s, made if there is none (getOrAddWeakHandle):
        every weak pointer made to one address shares it."""
        self.ensure_swept(s)
        with self.lock:
            rec = self._find_locked(s, offset, KIND_WEAK)
            if rec is not None:
                cell = cast(SpecialWeak, rec).cell
                assert cell is not None   # set before linking, cleared only by free
                return cell
            weak = self.weak_alloc.alloc()
            weak.cell = WeakCell(addr)
            self._add_locked(s, offset, weak)
            return weak.cell

    def add_cleanup(self, s: MSpan, offset: int, cid: int,
                    fn: Callable[[object], object], arg: object) -> None:
        """Attach cleanup ``cid`` = fn(arg) at ``offset``, beside any already there."""
        self.ensure_swept(s)
        with self.lock:
            rec = self._find_locked(s, offset, KIND_CLEANUP)
            if rec is None:
                rec = self.cleanup_alloc.alloc()
                self._add_locked(s, offset, rec)
            cast(SpecialCleanup, rec).cleanups[cid] = (fn, arg)

    def stop_cleanup(self, s: MSpan, offset: int, cid: int) -> bool:
        """Detach cleanup ``cid`` if it is still attached at ``offset`` of span s (Go's
        Cleanup.Stop); False if it is not (already queued, run, or its object freed)."""
        with self.lock:
            rec = self._find_locked(s, offset, KIND_CLEANUP)
            if rec is None:
                return False
            cleanups = cast(SpecialCleanup, rec).cleanups
            if cleanups.pop(cid, None) is None:
                return False
            if not cleanups:
                lst = cast("list[Special]", s.specials)
                self._unlink_locked(s, lst.index(rec))
                self._free_record_locked(rec)
            return True

    def weak_and_cleanup_records(self) -> list[tuple[MSpan, Special]]:
        """Every (span, KIND_WEAK or KIND_CLEANUP record) attached now."""
        with self.lock:
            return [(s, rec) for s in self.spans for rec in cast("list[Special]", s.specials)
                    if rec.kind >= KIND_WEAK]

    def take(self, s: MSpan, recs: list[Special]) -> None:
        """Unlink and free ``recs``, weak or cleanup records of span s (a collection found
        their objects unreachable), in one pass over the span's list: a weak cell is
        cleared; a cleanup record's cleanups are the caller's, read before this call."""
        with self.lock:
            lst = s.specials
            gone = {id(r) for r in recs}
            keep = [r for r in lst or () if id(r) not in gone]
            if not lst or len(lst) - len(keep) != len(gone):
                raise HeapCorruption(f"specials {recs!r} are not all in span {s!r}")
            if keep:
                s.specials = keep
            else:
                s.specials = None
                self.spans.discard(s)
            self.weak_or_cleanup -= len(recs)
            for rec in recs:
                self._free_record_locked(rec)

    def _find_locked(self, s: MSpan, offset: int, kind: int) -> Special | None:
        lst = s.specials
        if not lst:
            return None
        key = (offset, kind)
        i = bisect.bisect_left(lst, key, key=Special.key)
        return lst[i] if i < len(lst) and lst[i].key() == key else None

    # --- profile records (Go's setprofilebucket) ----------------------------------------

    def set_profile_bucket(self, s: MSpan, offset: int, bucket: Bucket) -> None:
        """Attach a profile record for the object at ``offset``. The object was just
        allocated, so its span is swept; a second record for it is a broken invariant."""
        self.ensure_swept(s)
        with self.lock:
            rec = self.profile_alloc.alloc()
            rec.bucket = bucket
            if not self._add_locked(s, offset, rec):
                rec.bucket = None
                self.profile_alloc.free(rec)
                raise HeapCorruption(f"setprofilebucket: profile already set at "
                                     f"{s.base + offset:#x}")

    # --- objects that die ---------------------------------------------------------------

    def free_objects(self, s: MSpan, slots: list[int], explicit: bool = False) -> None:
        """Free every record of the objects in ``slots`` of span s, which are being freed
        by sweep or (``explicit``) by Heap.free: Go's freespecial for each. Cheap when s has
        none."""
        if not s.specials:
            return
        freed: list[Special] = []
        with self.lock:
            lst = s.specials
            if not lst:
                return
            elemsize = s.elemsize
            dead = set(slots)
            large = s.sizeclass == 0
            keep: list[Special] = []
            for rec in lst:
                (freed if (0 if large else rec.offset // elemsize) in dead else keep).append(rec)
            if not freed:
                return
            if keep:
                s.specials = keep
            else:
                s.specials = None
                self.spans.discard(s)
            buckets: list[Bucket] = []
            cleanups: list[tuple[Callable[[object], object], object]] = []
            for rec in freed:
                if rec.kind == KIND_FINALIZER:
                    self.finalizers -= 1     # dropped without running
                elif rec.kind == KIND_PROFILE:
                    bucket = cast(SpecialProfile, rec).bucket
                    assert bucket is not None   # a linked profile record has its bucket
                    buckets.append(bucket)
                else:
                    self.weak_or_cleanup -= 1
                    if rec.kind == KIND_CLEANUP:
                        cleanups.extend(cast(SpecialCleanup, rec).cleanups.values())
                self._free_record_locked(rec)
        # The profiler hears of the frees outside ``lock`` (Go's freespecial calls mProf_Free
        # without the span's lock).
        if self.on_profile_free is not None:
            for b in buckets:
                self.on_profile_free(b, s.elemsize, explicit)
        if cleanups and self.on_cleanups is not None:
            self.on_cleanups(cleanups)

    def _free_record_locked(self, rec: Special) -> None:
        # the kind names the record's class
        if rec.kind == KIND_FINALIZER:
            fin = cast(SpecialFinalizer, rec)
            fin.fn = None
            self.finalizer_alloc.free(fin)
        elif rec.kind == KIND_PROFILE:
            prof = cast(SpecialProfile, rec)
            prof.bucket = None
            self.profile_alloc.free(prof)
        elif rec.kind == KIND_WEAK:
            weak = cast(SpecialWeak, rec)
            if weak.cell is not None:
                weak.cell.addr = 0       # every weak pointer to it reads None from now on
            weak.cell = None
            self.weak_alloc.free(weak)
        elif rec.kind == KIND_CLEANUP:
            cleanup = cast(SpecialCleanup, rec)
            cleanup.cleanups = {}
            self.cleanup_alloc.free(cleanup)
        else:
            raise HeapCorruption(f"freespecial: bad special kind {rec.kind}")

    # --- introspection and close --------------------------------------------------------

    def records(self, s: MSpan) -> list[Special]:
        """A copy of span s's records, in list order."""
        with self.lock:
            return list(s.specials or ())

    def live(self, kind: int) -> int:
        """Records of ``kind`` handed out and not freed."""
        allocs: dict[int, FixAlloc] = {
            KIND_FINALIZER: self.finalizer_alloc, KIND_PROFILE: self.profile_alloc,
            KIND_WEAK: self.weak_alloc, KIND_CLEANUP: self.cleanup_alloc}
        return allocs[kind].live

    def verify(self) -> list[str]:
        """Problems with the invariants above (empty when all hold)."""
        problems = []
        with self.lock:
            nfin = nweak = 0
            for s in self.spans:
                lst = s.specials
                if not lst:
                    problems.append(f"span {s.id} listed with no specials")
                    continue
                keys = [r.key() for r in lst]
                if any(a >= b for a, b in pairwise(keys)):
                    problems.append(f"span {s.id} specials not sorted: {keys}")
                nfin += sum(r.kind == KIND_FINALIZER for r in lst)
                nweak += sum(r.kind >= KIND_WEAK for r in lst)
                if any(r.kind == KIND_CLEANUP and not cast(SpecialCleanup, r).cleanups
                       for r in lst):
                    problems.append(f"span {s.id} has an empty cleanup record")
            if nfin != self.finalizers:
                problems.append(f"{nfin} finalizer records, {self.finalizers} counted")
            if nweak != self.weak_or_cleanup:
                problems.append(f"{nweak} weak/cleanup records, {self.weak_or_cleanup} "
                                f"counted")
        return problems

    def close(self) -> None:
        """Forget every record (the heap is closing): weak pointers read None, cleanups are
        dropped without running (as finalizers are)."""
        with self.lock:
            for s in self.spans:
                for rec in s.specials or ():
                    if rec.kind == KIND_WEAK and cast(SpecialWeak, rec).cell is not None:
                        cast(WeakCell, cast(SpecialWeak, rec).cell).addr = 0
                s.specials = None
            self.spans.clear()
            if self.zero_cell is not None:
                self.zero_cell.addr = 0
            self.finalizers = self.weak_or_cleanup = 0
            self.finalizer_alloc.clear()
            self.profile_alloc.clear()
            self.weak_alloc.clear()
            self.cleanup_alloc.clear()


def _reset_finalizer(rec: SpecialFinalizer) -> None:
    rec.offset = 0
    rec.fn = None


def _reset_profile(rec: SpecialProfile) -> None:
    rec.offset = 0
    rec.bucket = None


def _reset_weak(rec: SpecialWeak) -> None:
    rec.offset = 0
    rec.cell = None


def _reset_cleanup(rec: SpecialCleanup) -> None:
    rec.offset = 0
    rec.cleanups = {}
