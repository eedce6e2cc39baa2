"""Roots: what the collector starts marking from (Go scans stacks and globals; gcalloc's
mutator is Python, so the roots are declared).

- counted roots (``add_root``/``remove_root``): an object stays alive while its count > 0;
- root ranges (``add_root_range``): memory outside the heap (a ctypes array, a C struct)
  scanned word by word, conservatively or with a Type's pointer mask;
- Handles: a slot in a table of addresses (a Python list, read into numpy only at mark time);
  the object is a root while the Python Handle object lives. Creating or dropping a Handle
  is a list pop or append and one list store, each atomic under the interpreter lock, and
  no lock of ours: no numpy on that path. A slot is taken (pop) before its address is
  stored and freed (append) after its address is cleared, so a reader sees each slot as 0
  or as a live Handle's address; the collector's read (``candidates``) is one C-level copy
  of the list. Only growing the table takes ``lock``.
  A Handle is an instance of its RootSet's own subclass of Handle, made by ``new_handle``
  without an ``__init__`` frame (see ``_handle_factory``): one is made per object.

``RootSet.candidates()`` returns every root word as one uint64 array of candidate pointers,
which the marker resolves with findObject: interior pointers keep their object; pointers to
free slots, free spans or outside the heap are ignored.

Counted roots are a list per base address with one entry per ``add_root``: an add is an
append, a remove a pop, each atomic, made inside a safepoint region of the allocator
(``Allocator._enter``: the caller's), so no lock; an emptied list is deleted by
``candidates``, with the world stopped, when no thread can be between its look-up of a list
and its append, or with its object by an explicit free (rooting an object another thread is
freeing is the caller's bug, as in C).

Invariants: ``handle_addrs[i]`` is 0 for a free slot and every free slot is on
``_free_slots`` once (both lists only grow, in place: each RootSet's Handle class, which
its Handles keep alive, holds them);
``len(counted[p])`` is p's count, and a key with an empty list is a count of 0 still to be
deleted; every key is the base of an allocated object (keys are made from found objects;
emptied ones go at each cycle's mark, before its sweep, and with their object at an
explicit free), so ``add_root`` of a key needs no look-up. Ranges change under ``lock``,
which the collector also holds while it reads the roots.
Once the heap closed (``closed``), a Handle's ``view`` raises HeapClosed; releasing one is
still fine (it only touches this table).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from gcalloc.addrspace import MEM64, word_index
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
        # Reentrant: a Handle's __del__ may run (Python's own GC) while this thread holds it.
        self.lock = threading.RLock()
        self.counted: dict[int, list[None]] = {}   # base -> one entry per add_root
        self.ranges: dict[int, RootRange] = {}
        self._tokens = itertools.count(1)
        self.handle_addrs: list[int] = [0] * 1024
        self._free_slots: list[int] = list(range(1023, -1, -1))
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
        return len(self.handle_addrs) - len(self._free_slots)

    def _grow_handles(self) -> int:
        """Take a slot, doubling the table if it is still full once this thread holds the
        lock (another may have grown it meanwhile). The new slots join the free list only
        after the table holds them."""
        with self.lock:
            try:
                return self._free_slots.pop()
            except IndexError:
                pass
            old = len(self.handle_addrs)
            self.handle_addrs.extend([0] * old)
            self._free_slots.extend(range(old * 2 - 1, old, -1))
            return old

    # --- for the collector -------------------------------------------------------------

    def candidates(self, extra: list[int] = ()) -> np.ndarray:  # type: ignore[assignment]
        """Every root word as candidate pointers (caller holds lock, the world stopped)."""
        table = np.array(self.handle_addrs, dtype=np.uint64)
        parts = [table[table != 0]]
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

    Handles are made by ``Heap.new`` and ``Heap.handle`` only: each is an instance of its
    RootSet's own subclass (``RootSet.new_handle``), which holds the set's table, free list
    and weak reference as class attributes, so a Handle stores five slots, not eight.
    """

    __slots__ = ("addr", "ctype", "count", "_slot", "_view", "__weakref__")
    addr: int
    ctype: Any          # the ctypes type of view, or None
    count: int
    _slot: int          # its slot in the table, -1 once released
    _view: Any
    # class attributes of each RootSet's subclass (see _handle_factory)
    _roots: weakref.ref
    _table: list[int]
    _free: list[int]

    def __new__(cls, *args: object, **kwargs: object) -> Handle:
        raise TypeError("Handles are made by Heap.new and Heap.handle")

    @property
    def view(self):
        if self._slot < 0:
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
        return self._slot >= 0

    def release(self) -> None:
        """Stop rooting the object (also done when the Handle is garbage-collected)."""
        slot, self._slot = self._slot, -1
        self._view = None
        if slot >= 0:
            self._table[slot] = 0
            self._free.append(slot)

    def __int__(self) -> int:
        return self.addr

    __index__ = __int__

    def __repr__(self) -> str:
        name = getattr(self.ctype, "__name__", "bytes")
        state = "" if self.alive else " released"
        return f"<gcalloc.Handle {name} at {self.addr:#x}{state}>"


def _handle_factory(roots: RootSet) -> Callable[[int, object, int], Handle]:
    """roots' Handle maker: a subclass of Handle for this set alone, and a function making
    its instances without an ``__init__`` frame (a Handle is made per object: the class
    call and its Python ``__init__`` cost more than the stores themselves). The subclass's
    ``__del__`` and the maker reach the table and free list through closure cells; neither
    holds roots itself (only its weak reference), so a dropped heap's RootSet dies and its
    Handles raise HeapClosed on ``view``."""
    table = roots.handle_addrs
    free = roots._free_slots
    pop = free.pop
    append = free.append
    ref = roots.ref
    new = object.__new__

    class RootSetHandle(Handle):
        __slots__ = ()
        _roots = ref
        _table = table
        _free = free

        def __del__(self) -> None:
            slot = self._slot
            if slot >= 0:      # release(), inlined: one Handle dies per object made
                table[slot] = 0
                append(slot)

    RootSetHandle.__name__ = RootSetHandle.__qualname__ = "Handle"

    def new_handle(addr: int, ctype: object, count: int) -> Handle:
        h = new(RootSetHandle)
        h.addr = addr
        h.ctype = ctype
        h.count = count
        h._view = None
        try:                   # the slot is taken before its address is stored
            slot = pop()
        except IndexError:
            slot = ref()._grow_handles()    # type: ignore[union-attr]  # roots is live
        table[slot] = addr
        h._slot = slot
        return h

    return new_handle


def align_range(addr: int, size: int) -> tuple[int, int]:
    """Round a conservative range inward to whole aligned words."""
    start = (addr + PTR_SIZE - 1) & ~(PTR_SIZE - 1)
    end = (addr + size) & ~(PTR_SIZE - 1)
    return start, max(0, end - start)
