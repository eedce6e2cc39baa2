"""Roots: what the collector starts marking from (Go scans stacks and globals; gcalloc's
mutator is Python, so the roots are declared).

- counted roots (``add_root``/``remove_root``): an object stays alive while its count > 0;
- root ranges (``add_root_range``): memory outside the heap (a ctypes array, a C struct)
  scanned word by word, conservatively or with a Type's pointer mask;
- Handles: a slot in a table of addresses (a Python list, read into numpy only at mark time);
  the object is a root while the Python Handle object lives. Each slot has a *pin*, an int
  object of its own (its index into ``handle_addrs``) held by ``_pins``: a Handle holds its
  slot's pin, so the pin's reference count says whether a Handle still holds it, and a
  Handle needs no ``__del__`` (the interpreter's own decref on its death is the whole
  cost of dropping it). Making one is a pop of a free pin and one list store, each atomic
  under the interpreter lock, with no lock of ours and no numpy; releasing one drops its
  pin. A pin is free (on ``_free_slots``), held (a Handle's, or taken and about to be), or
  dead (held by ``_pins`` alone: its Handle is gone); dead pins go back to the free list,
  under ``lock``, when the free list runs dry (``_grow_handles``, which doubles the table
  when few are dead) and at every collection. A dead pin stays dead (only the free list
  hands pins out), so a count read at any moment is safe to reclaim by.
  The collector (``candidates``, world stopped, under ``lock``) reads, in this order, the
  table, the pins' counts and the free list, and roots the address of every slot whose pin
  is held and not free: a Handle whose address was stored before the table was read holds
  its pin until the counts are read and is not on the free list after, so it is seen; a
  stale address (a slot taken since, not stored yet) only roots an object one cycle longer.
  The counts are read straight from memory (``MEM64`` at each pin's ``id``: CPython's
  ``ob_refcnt`` is an object's first word) where a probe at import shows the interpreter
  keeps them there, else through sys.getrefcount.
  A Handle is made by ``new_handle`` (``_handle_factory``) without an ``__init__`` frame:
  one is made per object.

``RootSet.candidates()`` returns every root word as one uint64 array of candidate pointers,
which the marker resolves with findObject: interior pointers keep their object; pointers to
free slots, free spans or outside the heap are ignored.

Counted roots are a list per base address with one entry per ``add_root``: an add is an
append, a remove a pop, each atomic, made inside a safepoint region of the allocator
(``Allocator._enter``: the caller's), so no lock; an emptied list is deleted by
``candidates``, with the world stopped, when no thread can be between its look-up of a list
and its append, or with its object by an explicit free (rooting an object another thread is
freeing is the caller's bug, as in C).

Invariants: ``_pins[k]`` is the int FIRST_PIN + k and ``handle_addrs`` has FIRST_PIN + len(
_pins) entries (the first FIRST_PIN unused); a pin on ``_free_slots`` is there once and held
by no Handle; a Handle's ``_pin`` is its slot's pin and ``handle_addrs[pin]`` its address
(the lists only grow, in place: ``new_handle`` holds the table and the free list);
``len(counted[p])`` is p's count, and a key with an empty list is a count of 0 still to be
deleted; every key is the base of an allocated object (keys are made from found objects;
emptied ones go at each cycle's mark, before its sweep, and with their object at an
explicit free), so ``add_root`` of a key needs no look-up. Ranges change under ``lock``,
which the collector also holds while it reads the roots.
Once the heap closed (``closed``), a Handle's ``view`` raises HeapClosed; releasing one is
still fine (it only drops its pin).
"""

from __future__ import annotations

import itertools
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from gcalloc.addrspace import ADDRESS_SPACE_BASE, ADDRESS_SPACE_END, MEM64, word_index
from gcalloc.errors import GcallocError, HeapClosed, NotARoot
from gcalloc.gc.types import PTR_SIZE, Type


class RootRange:
    __slots__ = ("addr", "size", "type")

    def __init__(self, addr: int, size: int, type: Type | None) -> None:
        self.addr = addr      # 8-byte aligned
        self.size = size      # bytes, a multiple of 8
        self.type = type      # None: conservative (every word)

    def words(self) -> np.ndarray:
        if self.size == 0:
            return np.zeros(0, np.uint64)
        i = word_index(self.addr)
        words = MEM64[i:i + (self.size >> 3)]
        if self.type is None:
            return words.copy()
        t = self.type
        stride = t.size >> 3
        idx = [e * stride + w for e in range(self.size // t.size) for w in t.pointer_words()]
        return words[np.array(idx, dtype=np.int64)] if idx else np.zeros(0, np.uint64)


class RootSet:
    """The roots of one heap."""

    def __init__(self) -> None:
        # Reentrant: a finalizer may run (Python's own GC) while this thread holds it.
        self.lock = threading.RLock()
        self.counted: dict[int, list[None]] = {}   # base -> one entry per add_root
        self.ranges: dict[int, RootRange] = {}
        self._tokens = itertools.count(1)
        # handle_addrs[pin]: the address a Handle holding pin roots (see the module comment);
        # the first FIRST_PIN entries are never used
        self.handle_addrs: list[int] = [0] * (FIRST_PIN + 1024)
        self._pins: list[int] = list(range(FIRST_PIN, FIRST_PIN + 1024))
        self._free_slots: list[int] = self._pins[::-1]
        self._pin_words = _count_words(self._pins)
        self.ref = weakref.ref(self)    # shared by every Handle of this set
        self.closed = False
        # new_handle(addr, ctype, count): a Handle rooting addr (see _handle_factory)
        self.new_handle = _handle_factory(self)

    # --- counted roots -----------------------------------------------------------------

    def add(self, p: int) -> None:
        """Count one more root at base p (the caller is inside a safepoint region)."""
        entries = self.counted.get(p)
        if entries is None:
            entries = self.counted.setdefault(p, [])
        entries.append(None)

    def remove(self, p: int) -> None:
        """Count one root at base p less (inside a safepoint region). Raises NotARoot."""
        try:
            self.counted[p].pop()
        except (KeyError, IndexError):
            raise NotARoot(f"{p:#x} is not a root") from None

    def count(self, p: int) -> int:
        entries = self.counted.get(p)
        return len(entries) if entries else 0

    # --- ranges ------------------------------------------------------------------------

    def add_range(self, addr: int, size: int, type: Type | None) -> int:
        with self.lock:
            token = next(self._tokens)
            self.ranges[token] = RootRange(addr, size, type)
            return token

    def remove_range(self, token: int) -> None:
        with self.lock:
            if self.ranges.pop(token, None) is None:
                raise NotARoot(f"no root range with token {token!r}")

    # --- handles -----------------------------------------------------------------------

    @property
    def handles_live(self) -> int:
        with self.lock:
            held = self._pin_refs() > 0
            held[np.fromiter(self._free_slots, dtype=np.intp) - FIRST_PIN] = False
            return int(np.count_nonzero(held))

    def _pin_refs(self) -> np.ndarray:
        """Each pin's references from outside ``_pins`` (0: dead, its Handle gone): the
        count words read straight from memory where the interpreter keeps them there
        (``RAW_COUNTS``), else sys.getrefcount's (caller holds lock: ``_pins`` is still)."""
        if RAW_COUNTS:
            return MEM64[self._pin_words].astype(np.intp) - 1
        return _refcounts(self._pins) - DEAD_REFS

    def _grow_handles(self) -> int:
        """Take a pin when the free list was empty: under the lock, give the pins of dead
        Handles back to the free list and, if that found few (under a quarter of the table),
        double the table too, so a scan is paid for by as many Handles as it finds room for.
        The new pins join the free list only after the table and ``_pins`` hold them."""
        with self.lock:
            try:
                return self._free_slots.pop()
            except IndexError:
                pass
            found = self._reclaim(self._pin_refs())
            if found * 4 < len(self._pins):
                old = len(self._pins)
                pins = list(range(FIRST_PIN + old, FIRST_PIN + 2 * old))
                self.handle_addrs.extend([0] * old)
                self._pins.extend(pins)
                self._pin_words = np.concatenate([self._pin_words, _count_words(pins)])
                self._free_slots.extend(reversed(pins))
            return self._free_slots.pop()

    def _reclaim(self, refs: np.ndarray) -> int:
        """Put every dead pin (``_pin_refs()``, under the lock) back on the free list;
        returns how many. A dead pin stays dead: only the free list hands pins out."""
        dead = np.flatnonzero(refs == 0)
        if len(dead):
            self._free_slots.extend(map(self._pins.__getitem__, dead.tolist()))
        return len(dead)

    def table_problems(self) -> list[str]:
        """The Handle table's bookkeeping (for verify)."""
        with self.lock:
            refs = _refcounts(self._free_slots) - DEAD_REFS
            free = list(self._free_slots)
        out = []
        if len(set(free)) != len(free) or any(not FIRST_PIN <= pin < len(self.handle_addrs)
                                              for pin in free):
            out.append("a pin is on the handle free list twice, or is no pin")
        # a free pin is held by _pins and the free list alone
        if np.any(refs > 1):
            out.append("a live Handle's pin is on the handle free list")
        return out

    # --- for the collector -------------------------------------------------------------

    def candidates(self, extra: list[int] = ()) -> np.ndarray:  # type: ignore[assignment]
        """Every root word as candidate pointers (caller holds lock, the world stopped)."""
        # In this order (see the module comment): the table, the pins' counts, the free list.
        table = np.array(self.handle_addrs, dtype=np.uint64)[FIRST_PIN:]
        refs = self._pin_refs()
        live = refs > 0
        live[np.fromiter(self._free_slots, dtype=np.intp) - FIRST_PIN] = False
        parts = [table[live & (table != 0)]]
        self._reclaim(refs)
        if self.counted:
            for p in [p for p, entries in self.counted.items() if not entries]:
                del self.counted[p]     # the world is stopped: nobody is adding to it
            parts.append(np.fromiter(self.counted.keys(), dtype=np.uint64,
                                     count=len(self.counted)))
        for r in self.ranges.values():
            parts.append(r.words())
        if extra:
            parts.append(np.array(extra, dtype=np.uint64))
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    def close(self) -> None:
        """The heap closed: forget every root; Handles still alive raise on ``view``."""
        with self.lock:
            self.closed = True
            self.counted.clear()
            self.ranges.clear()
            self.handle_addrs[:] = [0] * len(self.handle_addrs)


class Handle:
    """A rooted reference to a heap object: the object lives while this Handle does.

    ``addr`` is the object's address; ``view`` is ``ctype.from_address(addr)`` for Handles
    made by ``Heap.new`` (``None`` for ``Heap.handle`` without a type), made once and kept.
    ``release()`` drops the root early; a released Handle raises GcallocError on ``view``, and
    one whose heap was closed raises HeapClosed.

    Handles are made by ``Heap.new`` and ``Heap.handle`` only (``RootSet.new_handle``):
    the class takes no arguments and has no ``__init__``, whose frame would cost more than
    the stores themselves (a Handle is made per object).
    """

    __slots__ = ("addr", "ctype", "count", "_pin", "_view", "_roots", "__weakref__")
    addr: int
    ctype: Any          # the ctypes type of view, or None
    count: int
    _pin: int | None    # its pin (the module comment), None once released
    _view: Any
    _roots: weakref.ref     # its RootSet's (dead once the heap was dropped)

    @property
    def view(self):
        if self._pin is None:
            raise GcallocError("handle was released")
        roots = self._roots()
        if roots is None or roots.closed:   # None: the heap was dropped, its memory unmapped
            raise HeapClosed("heap is closed")
        if self._view is None and self.ctype is not None:
            t = self.ctype if self.count == 1 else self.ctype * self.count
            self._view = t.from_address(self.addr)
        return self._view

    @property
    def alive(self) -> bool:
        return self._pin is not None

    def release(self) -> None:
        """Stop rooting the object (also done when the Handle is garbage-collected)."""
        self._pin = None      # the pin's count drops: the next cycle skips the slot
        self._view = None

    def __int__(self) -> int:
        return self.addr

    __index__ = __int__

    def __repr__(self) -> str:
        name = getattr(self.ctype, "__name__", "bytes")
        state = "" if self.alive else " released"
        return f"<gcalloc.Handle {name} at {self.addr:#x}{state}>"


def _handle_factory(roots: RootSet) -> Callable[[int, object, int], Handle]:
    """roots' Handle maker. It holds the table and the free list, not roots (only its weak
    reference), so a dropped heap's RootSet dies and its Handles raise HeapClosed on
    ``view``."""
    table = roots.handle_addrs
    pop = roots._free_slots.pop
    ref = roots.ref

    def new_handle(addr: int, ctype: object, count: int) -> Handle:
        h = Handle()
        h.addr = addr
        h.ctype = ctype
        h.count = count
        h._view = None
        h._roots = ref
        try:
            pin = pop()
        except IndexError:
            pin = ref()._grow_handles()    # type: ignore[union-attr]  # roots is live
        h._pin = pin
        table[pin] = addr
        return h

    return new_handle


def _refcounts(objs: list) -> np.ndarray:
    """sys.getrefcount of each of objs, in one C-level pass (no Python code runs)."""
    return np.fromiter(map(sys.getrefcount, objs), dtype=np.intp, count=len(objs))


def _count_words(objs: list) -> np.ndarray:
    """The MEM64 index of each object's reference count word (its first: CPython's
    ob_refcnt; the objects never move)."""
    return np.fromiter((word_index(id(o)) for o in objs), dtype=np.intp, count=len(objs))


def _raw_counts_readable() -> bool:
    """Whether an object's first word is its reference count here (CPython's default
    build, not the free-threaded one): checked on a probe, whose count is then changed."""
    probe = [object()]
    if not ADDRESS_SPACE_BASE <= id(probe[0]) < ADDRESS_SPACE_END - 8:
        return False
    words = _count_words(probe)
    before = int(MEM64[words][0])
    probe.append(probe[0])
    return before == 1 and int(MEM64[words][0]) == 2


# The pins: ints past the interpreter's shared small ints (CPython keeps one object for
# each of -5..256), so each is an object of its own, held only by ``_pins``, the free list
# and the Handle holding it.
FIRST_PIN = 257
DEAD_REFS = int(_refcounts([object()])[0])   # getrefcount of an object one list holds
RAW_COUNTS = _raw_counts_readable()


def align_range(addr: int, size: int) -> tuple[int, int]:
    """Round a conservative range inward to whole aligned words."""
    start = (addr + PTR_SIZE - 1) & ~(PTR_SIZE - 1)
    end = (addr + size) & ~(PTR_SIZE - 1)
    return start, max(0, end - start)
