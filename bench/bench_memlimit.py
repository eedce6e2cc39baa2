"""The soft memory limit at work: a churn of garbage beside a live set, with GOGC off and a
limit (Go's "GOGC=off, GOMEMLIMIT=X"), with GOGC=100 and no limit, and with a limit below the
live heap (the CPU limiter's case).

Each row allocates ``--churn`` MiB of noscan garbage (sizes 4 KiB, 32 KiB, ~98 KiB cycling)
beside ``--live`` MiB of rooted objects and reports: wall time, cycles, the peak of what the
heap holds from the OS (``mapped_ready`` = sys - heap_released, sampled every 100
allocations), the peak growth of the process's RSS over its size before the heap, bytes
scavenged for the limit, cycles the CPU limiter skipped and the GC share of time from the
collector's own accounting. Run ``python bench/bench_memlimit.py [--churn 1024] [--live 8]
[--limit 64]``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import gcalloc  # noqa: E402

MiB = 1 << 20
SIZES = (4096, 32768, 100_000)


def churn(gc_percent: int, limit: int | None, live_mib: int, churn_mib: int) -> dict:
    proc = psutil.Process()
    base = proc.memory_info().rss
    with gcalloc.Heap(gc_percent, debug="") as h:
        if limit is not None:
            h.set_memory_limit(limit)
        live = [h.new(ctypes.c_char * MiB) for _ in range(live_mib)]
        total = n = peak = peak_rss = 0
        t0 = time.perf_counter()
        while total < churn_mib * MiB:
            size = SIZES[n % 3]
            h.alloc(size, noscan=True)
            total += size
            n += 1
            if n % 100 == 0:
                peak = max(peak, h.read_memlimit().mapped_ready)
                peak_rss = max(peak_rss, proc.memory_info().rss - base)
        elapsed = time.perf_counter() - t0
        s = h.read_memlimit()
        del live
        return dict(seconds=elapsed, num_gc=h.read_memstats().num_gc, peak=peak,
                    peak_rss=peak_rss, scavenged=s.scavenged, skipped=s.limiter_skipped,
                    share=s.gc_share)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--churn", type=int, default=1024, help="MiB of garbage")
    ap.add_argument("--live", type=int, default=8, help="MiB live")
    ap.add_argument("--limit", type=int, default=64, help="MiB")
    args = ap.parse_args(argv)
    rows = [
        (f"GOGC=off, limit {args.limit} MiB", -1, args.limit * MiB, args.live),
        ("GOGC=100, no limit", 100, None, args.live),
        (f"GOGC=off, limit {args.limit // 4} MiB < live", -1, args.limit // 4 * MiB,
         args.limit // 2),
    ]
    print(f"churn {args.churn} MiB of garbage; peaks sampled every 100 allocations")
    print(f"{'case':34}{'live':>6}{'s':>7}{'GCs':>6}{'peak MiB':>10}{'RSS+ MiB':>10}"
          f"{'scav MiB':>10}{'skipped':>9}{'GC share':>9}")
    for name, gogc, limit, live in rows:
        r = churn(gogc, limit, live, args.churn)
        print(f"{name:34}{live:>6}{r['seconds']:>7.2f}{r['num_gc']:>6}{r['peak'] / MiB:>10.1f}"
              f"{r['peak_rss'] / MiB:>10.1f}{r['scavenged'] / MiB:>10.0f}{r['skipped']:>9}"
              f"{r['share']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
