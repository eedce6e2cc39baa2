"""What stopping C threads and scanning their stacks adds to a collection, per thread.

A heap with a small live set is collected (heap.collect(), the world stopped) while k
registered C threads (tests/capi/cthreads_harness.c, compiled here with gcc) are either

- ``running``: spinning in their own C code between gcalloc calls: each gets the suspend
  signal, stops in the handler, is scanned from the handler's frame, and is resumed; or
- ``blocked``: blocked in a system call (nanosleep) in its own C code: the signal interrupts
  it (the handler stops the thread at the syscall instruction), the call restarts after; or
- ``in call``: parked inside a call into Python (a ctypes callback waiting on an Event): no
  signal, the request bit alone, the stack scanned from the call's entry.

For each k the table gives the median collect() time, its excess over k = 0 divided by k
(for ``running`` mostly the spinning threads taking CPU from the collector on a small
machine), the median time suspend_all() took and the time the stacks took to read into
mark candidates (their own clocks), and the words scanned per thread. A last table gives
the words a Python thread's C stack adds when it calls C through ctypes from deeper Python:
the interpreter's C frames lie between the C function and the thread's stack base, and are
scanned conservatively too (plain Python-to-Python calls add no C frame since CPython 3.11;
a call through a builtin such as map() re-enters the interpreter and does).

Run: ``python bench/bench_cthreads.py [--threads 1,2,4,8] [--repeat 30]`` (Linux, gcc).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

import gcalloc  # noqa: E402
from gcalloc.gc import cthreads as ct  # noqa: E402

CB = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)
ADD = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
REC = ctypes.c_uint64 * 16


def build() -> ctypes.CDLL:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("bench_cthreads: needs gcc")
    out = os.path.join(tempfile.mkdtemp(), "harness.so")
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-D_GNU_SOURCE",
                    "-I" + os.path.join(ROOT, "gcalloc", "include"),
                    os.path.join(ROOT, "tests", "capi", "cthreads_harness.c"), "-o", out,
                    "-lpthread"], check=True)
    lib = ctypes.CDLL(out)
    p = ctypes.c_void_p
    lib.h_attach.argtypes, lib.h_attach.restype = [p, ADD, ctypes.c_int], ctypes.c_int
    lib.h_detach.argtypes = [p]
    lib.h_spin.argtypes, lib.h_spin.restype = [p], ctypes.c_int64
    lib.h_sleep.argtypes, lib.h_sleep.restype = [p], ctypes.c_int64
    lib.h_in_call.argtypes = [p, CB]
    return lib


class Threads:
    """k registered C threads in one mode, started and stopped around a measurement."""

    def __init__(self, lib, heap: gcalloc.Heap, k: int, mode: str, depth: int = 0) -> None:
        self.lib, self.heap, self.k, self.mode, self.depth = lib, heap, k, mode, depth
        self.stop = ctypes.c_int32(0)
        self.release = threading.Event()
        self.records = [REC() for _ in range(k)]
        self.add = ADD(heap._gc.cthreads.add)
        self.wait = CB(lambda n: self.release.wait() and 0)
        self.ready = threading.Barrier(k + 1)
        self.threads = [threading.Thread(target=self.body, args=(i,)) for i in range(k)]

    def body(self, i: int, depth: int | None = None) -> None:
        if depth is None:
            depth = self.depth
        if depth > 0:      # interpreter C frames between the thread's base and its C code
            return next(map(lambda _: self.body(i, depth - 1), [0]))
        r = ctypes.addressof(self.records[i])
        self.lib.h_attach(r, self.add, ct.suspend_signal())
        if self.mode in ("running", "blocked"):
            self.ready.wait()
            fn = self.lib.h_spin if self.mode == "running" else self.lib.h_sleep
            fn(ctypes.addressof(self.stop))
        else:
            threading.Thread(target=self._arrive).start()
            self.lib.h_in_call(r, self.wait)
        self.lib.h_detach(r)
        return None

    def _arrive(self) -> None:
        # A thread in call is parked once its record says IN_CALL.
        self.ready.wait()

    def __enter__(self) -> Threads:
        for t in self.threads:
            t.start()
        self.ready.wait()
        if self.mode == "in call":
            addrs = [ctypes.addressof(r) for r in self.records]
            while any(ctypes.c_int32.from_address(a).value != ct.IN_CALL for a in addrs):
                time.sleep(0.001)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.value = 1
        self.release.set()
        for t in self.threads:
            t.join()


def measure(lib, k: int, mode: str, repeat: int) -> tuple[float, float, float, float]:
    with gcalloc.Heap(-1, scavenger=False, debug="") as heap:
        keep = [heap.new(ctypes.c_uint64 * 4) for _ in range(1000)]
        with Threads(lib, heap, k, mode):
            times, susp, scan, words = [], [], [], []
            heap.collect()
            for _ in range(repeat):
                t0 = time.perf_counter_ns()
                heap.collect()
                times.append(time.perf_counter_ns() - t0)
                susp.append(heap._gc.cthreads.last_suspend_ns)
                scan.append(heap._gc.cthreads.last_scan_ns)
                words.append(sum(heap._gc.cthreads.last_words))
        del keep
    return (statistics.median(times), statistics.median(susp), statistics.median(scan),
            statistics.median(words))


def stack_words(lib, depth: int) -> int:
    """Words scanned for one Python thread parked in a call at Python recursion depth."""
    with gcalloc.Heap(-1, scavenger=False, debug="") as heap:
        with Threads(lib, heap, 1, "in call", depth=depth):
            heap.collect()
            return sum(heap._gc.cthreads.last_words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2,4,8")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    lib = build()
    ks = [int(x) for x in args.threads.split(",")]
    print(f"suspend signal {ct.signal_name(ct.suspend_signal())}, {os.cpu_count()} CPUs, "
          f"median of {args.repeat} collect() calls, live set 1000 handles")
    base, _, _, _ = measure(lib, 0, "running", args.repeat)
    print(f"{'mode':<8} {'k':>3} {'collect us':>11} {'+us/thread':>11} "
          f"{'suspend us':>11} {'scan us':>8} {'words/thread':>13}")
    print(f"{'-':<8} {0:>3} {base / 1e3:>11.1f}")
    for mode in ("running", "blocked", "in call"):
        for k in ks:
            t, s, sc, w = measure(lib, k, mode, args.repeat)
            print(f"{mode:<8} {k:>3} {t / 1e3:>11.1f} {(t - base) / k / 1e3:>11.1f} "
                  f"{s / 1e3:>11.1f} {sc / 1e3:>8.1f} {w / k:>13.0f}")
    print()
    print("a Python thread's C stack in a call, by interpreter re-entries (map) above it:")
    print(f"{'depth':>6} {'words':>8} {'KiB':>7}")
    for depth in (0, 10, 50, 200):
        w = stack_words(lib, depth)
        print(f"{depth:>6} {w:>8} {w * 8 / 1024:>7.1f}")


if __name__ == "__main__":
    main()
