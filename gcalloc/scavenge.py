"""The scavenger: returns the memory of idle free spans to the OS (Go 1.8 mheap.go's scavenge).

A free span remembers when it became free (``unusedsince``) and how many of its pages are
already released (``npreleased``). ``scavenge(heap, limit)`` calls ``sys_unused`` on every free
span idle longer than ``limit`` seconds and not yet fully released; the pages stay Prepared and
come back with ``sys_used`` when the span is allocated again (mheap).

Where the OS page is larger than the heap page (arm64 with 64 KiB pages), only the whole
physical pages inside a span are released, as Go 1.8 rounds.

The background scavenger thread (``Scavenger``) is off by default: ``Heap(scavenger=True)`` or
``GCALLOC_DEBUG=scavenger=1``. It wakes every ``period`` seconds and releases spans idle for
``limit`` seconds (Go's forcegc period and scavenge limit in Go 1.8: 2 and 5 minutes, scaled
down here by default because Python programs are short-lived: 1 s and 5 s).

``scavenge_bytes`` releases by amount instead of age: the soft memory limit (gc/memlimit.py)
asks for it before the heap grows past the limit and after each cycle.
"""

from __future__ import annotations

import threading
import time

from gcalloc import os as gos
from gcalloc.mheap import MHeap
from gcalloc.sizeclasses import PAGE_SHIFT


def scavenge(h: MHeap, limit: float, now: float | None = None) -> int:
    """Release free spans idle more than ``limit`` seconds (limit < 0: every free span).

    Returns the bytes newly released.
    """
    now = time.monotonic() if now is None else now
    released = 0
    with h.lock:
        for s in list(h.free_spans()):
            if s.npreleased != s.npages and now - s.unusedsince > limit:
                released += _release(h, s)
    return released


def scavenge_bytes(h: MHeap, nbytes: int) -> int:
    """Release free spans, largest first, until at least ``nbytes`` are newly released or
    none is left (the memory limit's scavenging, gc/memlimit.py: Go 1.19 mgcscavenge.go
    releases what the limit needs regardless of age). Returns the bytes newly released."""
    released = 0
    if nbytes <= 0:
        return 0
    with h.lock:
        spans = sorted((s for s in h.free_spans() if s.npreleased != s.npages),
                       key=lambda s: s.npages - s.npreleased, reverse=True)
        for s in spans:
            released += _release(h, s)
            if released >= nbytes:
                break
    return released


def _release(h: MHeap, s) -> int:
    """sys_unused the whole physical pages of free span s (under h.lock); the bytes newly
    released."""
    phys = gos.phys_page_size
    start = s.base
    end = start + (s.npages << PAGE_SHIFT)
    if phys > 1 << PAGE_SHIFT:
        start = (start + phys - 1) & ~(phys - 1)
        end &= ~(phys - 1)
        if end <= start:
            return 0
    nbytes = end - start
    gos.sys_unused(start, nbytes)
    newly = nbytes - (s.npreleased << PAGE_SHIFT)
    if newly <= 0:
        return 0
    s.npreleased = nbytes >> PAGE_SHIFT
    h.stats.heap_released += newly
    return newly


class Scavenger:
    """A background thread that periodically scavenges idle free spans."""

    def __init__(self, h: MHeap, period: float = 1.0, limit: float = 5.0) -> None:
        self._heap = h
        self.period = period
        self.limit = limit
        self.released = 0          # bytes released by this thread, for observation
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gcalloc-scavenger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.released += scavenge(self._heap, self.limit)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
