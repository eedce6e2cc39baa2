"""gctrace: one line per cycle on stderr in Go's shape (GODEBUG=gctrace=1), when
GCALLOC_DEBUG=gctrace=1:

    gc 3 @1.234s 2%: 0.012+4.2+0.31 ms clock, 0.012+0/4.2/0+0.31 ms cpu,
        12->12->6 MB, 13 MB goal, 2 P      (one line on stderr)

Fields: cycle number, seconds since the heap was made, percent of time spent in GC since
then; wall time of sweep termination + mark + mark termination (gcalloc stops the world for
all three); CPU time of the same phases (mark split as assist/background/idle, which for a
stop-the-world collector is all "background"); heap_live at start -> at end of mark ->
marked; the goal; P is the number of mark workers (1, or 2 on machines with two cores or
more). ``(forced)`` ends lines of ``collect()`` cycles. With a soft memory limit set
(``set_memory_limit``, GCALLOC_MEMLIMIT) the line gains ``, 64 MB limit`` after ``P`` (Go's
gctrace has no such field; its limit is read from runtime/metrics), and the goal shown is the
one the pacer used, the smaller of the GOGC and the memory-limit goals.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

MB = 1 << 20


@dataclass
class CycleTimes:
    """What one cycle measured (seconds; bytes)."""

    number: int
    start: float           # seconds since the heap was made
    sweep_term: float
    mark: float
    mark_term: float
    cpu_sweep_term: float
    cpu_mark: float
    cpu_mark_term: float
    heap_start: int
    heap_end: int
    heap_marked: int
    goal: int
    forced: bool
    gc_fraction: float
    procs: int = 1
    limit: int = (1 << 63) - 1      # the memory limit; this value: none


def format_line(c: CycleTimes) -> str:
    ms = 1000.0
    line = (f"gc {c.number} @{c.start:.3f}s {c.gc_fraction * 100:.0f}%: "
            f"{c.sweep_term * ms:.3g}+{c.mark * ms:.3g}+{c.mark_term * ms:.3g} ms clock, "
            f"{c.cpu_sweep_term * ms:.3g}+0/{c.cpu_mark * ms:.3g}/0+{c.cpu_mark_term * ms:.3g}"
            f" ms cpu, {c.heap_start // MB}->{c.heap_end // MB}->{c.heap_marked // MB} MB, "
            f"{c.goal // MB} MB goal, {c.procs} P")
    if c.limit < (1 << 63) - 1:
        line += f", {c.limit // MB} MB limit"
    return line + (" (forced)" if c.forced else "")


def emit(c: CycleTimes, out: TextIO | None = None) -> None:
    print(format_line(c), file=out or sys.stderr, flush=True)
