"""RSS beside MemStats: watch the operating system's view of the process follow the heap through
growth, a collection, a scavenge and close.

    python examples/rss_observe.py [--mib N] [--plot out.png]

An RSSMonitor samples psutil (RSS, and USS where the OS reports it) with the heap's MemStats in
a background thread; ``mark(phase)`` labels what follows and takes a sample at once. What to
look for:

- grow:     heap_inuse and RSS rise together as the objects are written;
- collect:  the objects die, heap_inuse falls, but RSS stays: free pages are kept for reuse;
- scavenge: the free pages go back to the OS (madvise / VirtualFree), heap_released rises and
            RSS falls by about as much;
- close:    the heap unmaps everything; what is left is Python's own memory.
"""

from __future__ import annotations

import argparse
import ctypes

import gcalloc
from gcalloc.observe import RSSMonitor, Sample

MIB = 1 << 20


def row(label: str, s: Sample) -> str:
    def mib(v: int | None) -> str:
        return f"{'-':>8}" if v is None else f"{v / MIB:8.1f}"
    return (f"{label:<10} {mib(s.heap_inuse)} {mib(s.heap_idle)} {mib(s.heap_released)} "
            f"{mib(s.rss)} {mib(s.uss)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=96, help="MiB of objects to write")
    parser.add_argument("--plot", help="also draw the samples (needs matplotlib)")
    args = parser.parse_args()
    heap = gcalloc.Heap(gc_percent=-1)          # no automatic cycles: we say when
    monitor = RSSMonitor(heap, interval=0.01).start()
    marks = {"start": monitor.mark("start")}

    keep = []
    for _ in range(args.mib):
        h = heap.handle(heap.alloc(MIB, noscan=True))
        ctypes.memset(h.addr, 0x5A, MIB)           # RSS grows as pages are first written
        keep.append(h)
    del h
    marks["grow"] = monitor.mark("grow")

    keep.clear()                                    # drop the Handles: the objects die
    heap.collect()
    marks["collect"] = monitor.mark("collect")

    released = heap.scavenge(-1.0)                  # every free page back to the OS
    marks["scavenge"] = monitor.mark("scavenge")

    heap.close()
    marks["close"] = monitor.mark("close")
    samples = monitor.stop()

    print(f"{'phase':<10} {'inuse':>8} {'idle':>8} {'released':>8} {'RSS':>8} {'USS':>8}  (MiB)")
    for label, s in marks.items():
        print(row(label, s))
    grew = marks["grow"].rss - marks["start"].rss
    fell = marks["collect"].rss - marks["scavenge"].rss
    print(f"RSS rose {grew / MIB:.1f} MiB for {args.mib} MiB written")
    print(f"RSS fell {fell / MIB:.1f} MiB when the scavenger released {released / MIB:.1f} MiB")
    print(f"{len(samples)} samples over {samples[-1].t:.2f} s")
    if args.plot:
        from gcalloc.cli import plot_samples
        plot_samples(samples, args.plot, [(k, v.t) for k, v in marks.items()])
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
