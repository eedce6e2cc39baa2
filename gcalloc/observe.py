"""Observation: the process's memory as the operating system sees it, beside the heap's own
accounting, over time.

``RSSMonitor(heap, interval)`` samples, in a background thread every ``interval`` seconds
(and on demand with ``sample()``), psutil's view of this process — ``memory_info().rss`` and,
where the OS offers it, ``memory_full_info().uss`` (the pages only this process maps) — together
with the heap's MemStats (heap_alloc, heap_inuse, heap_idle, heap_released, heap_sys, num_gc).
``stop()`` returns the time series as a list of ``Sample``::

    with gcalloc.Heap() as heap, RSSMonitor(heap, 0.05) as mon:
        mon.mark("grow")          # label the samples that follow, and take one now
        ...
    for s in mon.samples: print(s.t, s.phase, s.rss, s.heap_inuse)

What to expect (see docs/observation.md): RSS rises when the heap's pages are first written,
not when they are mapped; it falls when the scavenger (or ``free_os_memory``) returns free
pages and when the heap closes. Python's own allocations move RSS too, by far less.

After the heap closes its MemStats fields are ``None`` (there is no heap to read); RSS and USS
go on being sampled until ``stop()``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

import psutil

from gcalloc.errors import HeapClosed

HEAP_FIELDS = ("heap_alloc", "heap_inuse", "heap_idle", "heap_released", "heap_sys", "num_gc")


@dataclass(frozen=True)
class Sample:
    """One observation. ``t`` is seconds since the monitor was made; byte counts are bytes;
    ``uss`` is None where the OS does not report it, the heap fields None once it closed."""

    t: float
    phase: str
    rss: int
    uss: int | None
    heap_alloc: int | None
    heap_inuse: int | None
    heap_idle: int | None
    heap_released: int | None
    heap_sys: int | None
    num_gc: int | None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def process_memory(process: psutil.Process, with_uss: bool = True) -> tuple[int, int | None]:
    """(RSS, USS) of ``process`` in bytes; USS is None where psutil cannot report it."""
    if with_uss:
        try:
            full = process.memory_full_info()
        except (psutil.AccessDenied, NotImplementedError):
            full = None
        if full is not None:
            return full.rss, getattr(full, "uss", None)
    return process.memory_info().rss, None


def heap_fields(heap: object) -> dict[str, int | None]:
    """The MemStats fields a Sample carries (all None for a closed heap or no heap)."""
    if heap is None or getattr(heap, "closed", False):
        return dict.fromkeys(HEAP_FIELDS)
    try:
        ms = heap.read_memstats()  # type: ignore[attr-defined]
    except HeapClosed:
        return dict.fromkeys(HEAP_FIELDS)
    return {name: getattr(ms, name) for name in HEAP_FIELDS}


class RSSMonitor:
    """Sample RSS/USS and a heap's MemStats every ``interval`` seconds in a background thread.

    ``RSSMonitor(heap, interval=0.05, *, uss=True)``; ``heap`` may be None (process memory
    only). Use ``start()``/``stop()`` or a ``with`` block; ``stop()`` returns the samples.
    ``sample()`` and ``mark(phase)`` take a sample at once in the calling thread, so a test can
    bracket an operation exactly; the background samples fill in the curve between them.
    Raises ValueError for an interval <= 0.
    """

    def __init__(self, heap: object, interval: float = 0.05, *, uss: bool = True) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.heap = heap
        self.interval = float(interval)
        self.with_uss = uss
        self.phase = ""
        self._process = psutil.Process()
        self._samples: list[Sample] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    # --- sampling ----------------------------------------------------------------------

    def sample(self, phase: str | None = None) -> Sample:
        """Take one sample now, record it and return it."""
        rss, uss = process_memory(self._process, self.with_uss)
        fields = heap_fields(self.heap)
        # Stamp and label the sample as it is recorded, not when its measurement began: the
        # background thread and a mark() may measure at once, and the series must stay in
        # time order with each phase after the marks before it.
        with self._cond:
            s = Sample(time.monotonic() - self._t0, self.phase if phase is None else phase,
                       rss, uss, **fields)
            self._samples.append(s)
            self._cond.notify_all()
        return s

    def mark(self, phase: str) -> Sample:
        """Label the samples that follow with ``phase`` and take one now."""
        self.phase = phase
        return self.sample()

    @property
    def samples(self) -> list[Sample]:
        """The samples so far, oldest first (a copy)."""
        with self._cond:
            return list(self._samples)

    def series(self, field: str) -> list:
        """One column of the samples: ``series("rss")``, ``series("heap_inuse")``, ..."""
        return [getattr(s, field) for s in self.samples]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` samples exist; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._samples) >= count, timeout)

    # --- the background thread ---------------------------------------------------------

    def start(self) -> RSSMonitor:
        """Start the background thread (takes a first sample at once). Idempotent."""
        if self._thread is None:
            self._stop.clear()
            self.sample()
            self._thread = threading.Thread(target=self._run, name="gcalloc-rssmonitor",
                                            daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> list[Sample]:
        """Stop the background thread, take a last sample, return every sample."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
            self.sample()
        return self.samples

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __enter__(self) -> RSSMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<gcalloc.RSSMonitor {state}, {len(self.samples)} samples>"
