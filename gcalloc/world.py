"""Stopping the world: one heap's safepoint state, shared by the collector and close().

Go's m.mallocing and stopTheWorld. The allocator's slow paths, free and the calls that read
heap memory (lookup, usable_size, verify, ...) are *safepoints*: a thread sets its mcache's
``mallocing``, then checks ``World.stopped``. A stopper (a collection, or close()) sets
``stopped``, then waits until no other mcache is ``mallocing``. One stopper at a time: a second
one waits until the first starts the world. A new stopper also waits until every thread the
last stop parked has left ``park``: a thread that collects in a loop would otherwise stop the
world again before the threads it woke got the lock, and starve them. The fast path needs no
flag: a run's ``next`` is atomic, and a stopper exhausts the runs (the allocator does: see
malloc.py) while the world is stopped.

Closing is stopping the world for good: ``close()`` leaves it stopped and every thread parked
at a safepoint, or arriving at one, raises HeapClosed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gcalloc.errors import HeapClosed, HeapCorruption

if TYPE_CHECKING:
    from gcalloc.mcache import MCache


class World:
    """The stop-the-world state of one heap (see the module comment). A thread is inside a
    safepoint region while its mcache's ``mallocing`` is set.

    Invariants: while ``stopped``, the thread ``stopper`` owns the world and no other
    thread's mcache is ``mallocing`` once ``stop`` returned; ``closed`` implies ``stopped``,
    for good; ``parked`` counts the threads inside ``park``'s wait (changed under cond)."""

    __slots__ = ("cond", "stopped", "stopper", "closed", "parked")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.stopped = False
        self.stopper = 0
        self.closed = False
        self.parked = 0

    def park(self, c: MCache) -> None:
        """c's thread is at a safepoint with the world stopped (its flag set): pass if it is
        the stopper, else wait with the flag down until the world restarts."""
        me = threading.get_ident()
        if self.stopper == me and not self.closed:
            return
        c.mallocing = False
        with self.cond:
            self.parked += 1
            try:
                while self.stopped and not self.closed:
                    self.cond.wait()
            finally:
                self.parked -= 1
                self.cond.notify_all()     # a stopper may wait for the parked to leave
            if self.closed:
                raise HeapClosed("heap is closed")
            # Raised under cond: a stopper sets stopped under it, then sees this flag.
            c.mallocing = True

    def stop(self, mcaches: Iterable[MCache], mine: MCache | None) -> None:
        """Become the stopper once the world is free, then wait until no mcache but
        ``mine`` is ``mallocing``. Raises HeapClosed once closed."""
        me = threading.get_ident()
        with self.cond:
            if self.stopped and self.stopper == me and not self.closed:
                raise HeapCorruption("stop_the_world: this thread has the world stopped")
            while (self.stopped or self.parked) and not self.closed:
                self.cond.wait()
            if self.closed:
                raise HeapClosed("heap is closed")
            self.stopped = True
            self.stopper = me
        while any(c.mallocing for c in list(mcaches) if c is not mine):
            time.sleep(0)   # let them run to the end of their region

    def start(self) -> None:
        with self.cond:
            if not self.closed:
                self.stopped = False
                self.stopper = 0
            self.cond.notify_all()

    def close(self) -> None:
        """The stopper closes the heap: the world stays stopped; parked threads raise."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
