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
    phys = gos.phys_page_size
    now = time.monotonic() if now is None else now
    released = 0
    with h.lock:
        for s in list(h.free_spans()):
            if s.npreleased == s.npages or now - s.unusedsince <= limit:
                continue
            start = s.base
            end = start + (s.npages << PAGE_SHIFT)
            if phys > 1 << PAGE_SHIFT:
                start = (start + phys - 1) & ~(phys - 1)
                end &= ~(phys - 1)
                if end <= start:
                    continue
            nbytes = end - start
            gos.sys_unused(start, nbytes)
            newly = nbytes - (s.npreleased << PAGE_SHIFT)
            if newly <= 0:
                continue
            s.npreleased = nbytes >> PAGE_SHIFT
            h.stats.heap_released += newly
            released += newly
    return released


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
