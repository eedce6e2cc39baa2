"""Page allocation cost against the number of free spans, which should stay flat.

For each N, a page heap is given N free one-page spans that cannot coalesce (2N one-page spans
allocated, every other one freed), then M alloc+free pairs of random page counts (1..16) are
timed one call at a time (best of 5 rounds). Best fit takes a one-page request from the holes
and larger ones from the free tail; the free puts the run back, so N stays put meanwhile.

    python bench/bench_pages.py            # N = 10^2 .. 10^5
    python bench/bench_pages.py --quick    # N = 10^2 .. 10^4, fewer pairs

Prints ns per alloc and per free and their ratio to the N = 10^2 row: with O(log n) free-set
operations the ratios stay near 1.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import gcalloc  # noqa: E402
from gcalloc.sizeclasses import make_span_class  # noqa: E402

LARGE = make_span_class(0, True)   # one object per span: no mcentral, no size class work


def measure(n_free: int, pairs: int, rounds: int = 5,
            seed: int = 1) -> tuple[float, float, int]:
    """(ns per alloc, ns per free, free spans during the run) for a heap with n_free holes.

    The pairs are split into ``rounds`` rounds; each figure is the best round's mean, which
    keeps other processes' noise out of the comparison between rows.
    """
    with gcalloc.Heap(-1, scavenger=False, debug="") as h:
        mh = h._alloc.mheap
        spans = [mh.alloc(1, LARGE, False) for _ in range(2 * n_free)]
        for s in spans[::2]:
            mh.free_span(s)
        nfree = len(mh.free)
        rng = random.Random(seed)
        per_round = max(1, pairs // rounds)
        clock = time.perf_counter_ns
        best_alloc = best_free = float("inf")
        gc.disable()
        try:
            for _ in range(rounds):
                sizes = [rng.randint(1, 16) for _ in range(per_round)]
                alloc_ns = free_ns = 0
                for n in sizes:
                    t0 = clock()
                    s = mh.alloc(n, LARGE, False)
                    t1 = clock()
                    mh.free_span(s)
                    t2 = clock()
                    alloc_ns += t1 - t0
                    free_ns += t2 - t1
                best_alloc = min(best_alloc, alloc_ns / per_round)
                best_free = min(best_free, free_ns / per_round)
        finally:
            gc.enable()
        if len(mh.free) != nfree:
            raise AssertionError(f"free spans moved from {nfree} to {len(mh.free)}")
        mh.verify()
        return best_alloc, best_free, nfree


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N up to 10^4, 2000 pairs")
    ap.add_argument("--pairs", type=int, default=None, help="alloc+free pairs per N")
    args = ap.parse_args(argv)
    ns = [10**2, 10**3, 10**4] if args.quick else [10**2, 10**3, 10**4, 10**5]
    pairs = args.pairs or (2000 if args.quick else 20000)
    measure(100, 500)                                      # warm up imports and caches
    print(f"page alloc/free: {pairs} pairs of 1..16 pages per row, best of 5 rounds")
    print(f"{'free spans':>10} {'ns/alloc':>10} {'ns/free':>10} {'alloc x':>8} {'free x':>8}")
    first = None
    for n in ns:
        a, f, nfree = measure(n, pairs)
        first = first or (a, f)
        print(f"{nfree:>10} {a:>10.0f} {f:>10.0f} {a / first[0]:>8.2f} {f / first[1]:>8.2f}")


if __name__ == "__main__":
    main()
