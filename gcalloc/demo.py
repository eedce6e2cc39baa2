"""``gcalloc demo``: the whole life of a heap on a real workload, watched from inside (MemStats)
and from outside (the process's RSS and USS, through psutil).

Phases, each followed by a short table of MemStats beside RSS/USS (before and after):

1. gcbench     Go's GCBench (Boehm's binary-trees benchmark), scaled for Python: a stretch
               tree, a long-lived tree and array, then many temporary trees built top-down and
               bottom-up and dropped. Automatic collections run under the pacer (GOGC).
2. churn       objects of mixed sizes (tiny to large), a sliding window of them kept alive.
3. finalizers  objects with finalizers, dropped; the collector queues them and the finalizer
               thread runs every one.
4. profile     a sampled heap profile of two allocation sites, written as gzipped pprof.
5. release     every root dropped; free_os_memory() collects and returns the free pages.
6. close       the heap returns every mapping to the OS.

Roots: the workload's raw addresses live in Python ints, which the collector cannot see. Each
phase keeps what must survive in a *shadow stack* — a ctypes array registered with
``add_root_range`` — as a C runtime keeps pointers on its stack, or in a Handle.

gctrace is on (one line per cycle on stderr; the demo's first line says so, and
``GCALLOC_DEBUG=gctrace=0`` turns it off). ``run_demo`` returns the phases and the
RSSMonitor's samples; ``gcalloc.cli`` prints, plots and dumps them.
"""

from __future__ import annotations

import ctypes
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from gcalloc.debug import parse_debug
from gcalloc.gc.pprof import scale_heap_sample
from gcalloc.heap import Heap
from gcalloc.observe import RSSMonitor, Sample

MIB = 1 << 20
NODE_SIZE = 32            # GCBench's Node: left, right, i, j (8 bytes each)
_U64 = ctypes.c_uint64


# --- progress --------------------------------------------------------------------------------

class Progress:
    """A progress line (``\\r``-rewritten) on a terminal; silent when the stream is not one.

    ``update(label, done, total)`` is cheap to call often: the line is redrawn at most every
    0.1 s. ``clear()`` erases it (before other output); ``finish()`` erases it for good.
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._shown = False
        self._last = 0.0

    def update(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 24)
        self.stream.write(f"\r\x1b[K  {label} [{bar:<24}] {frac:4.0%}")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    finish = clear


class ProgressAwareStream:
    """Wraps the stream a Progress draws on so that other writers (gctrace) erase the
    progress line first instead of writing into the middle of it."""

    def __init__(self, stream: TextIO, progress: Progress) -> None:
        self._stream = stream
        self._progress = progress
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._progress.clear()
            return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


# --- roots for raw addresses -----------------------------------------------------------------

class ShadowStack:
    """A fixed array of words scanned as a root range: slots hold addresses the collector must
    treat as live (0 frees a slot). ``close()`` unregisters it."""

    def __init__(self, heap: Heap, nslots: int) -> None:
        self.heap = heap
        self.words = (_U64 * nslots)()
        self.token: int | None = heap.add_root_range(ctypes.addressof(self.words),
                                                     ctypes.sizeof(self.words))

    def clear(self) -> None:
        ctypes.memset(self.words, 0, ctypes.sizeof(self.words))

    def close(self) -> None:
        if self.token is not None:
            self.clear()
            self.heap.remove_root_range(self.token)
            self.token = None


# --- the workloads -----------------------------------------------------------------------

def tree_size(depth: int) -> int:
    """Nodes in a complete binary tree of ``depth`` (a single node has depth 0)."""
    return (1 << (depth + 1)) - 1


@dataclass(frozen=True)
class BenchSizes:
    stretch_depth: int
    long_lived_depth: int
    array_len: int
    min_depth: int
    max_depth: int


class GCBench:
    """Go's test/bench/garbage GCBench on raw 32-byte nodes (conservatively scanned).

    A node is four words: left, right, i, j. The shadow stack holds slot 0: the temporary
    tree's root, slots 2d and 2d+1: the subtrees MakeTree(d) has built so far."""

    def __init__(self, heap: Heap, sizes: BenchSizes, progress: Progress) -> None:
        self.heap = heap
        self.sizes = sizes
        self.progress = progress
        self.stack = ShadowStack(heap, 2 * sizes.stretch_depth + 4)
        self.nodes = 0

    def new_node(self, left: int = 0, right: int = 0) -> int:
        p = self.heap.alloc(NODE_SIZE)
        if left:
            _U64.from_address(p).value = left
            _U64.from_address(p + 8).value = right
        self.nodes += 1
        return p

    def populate(self, depth: int, node: int) -> None:
        """Build top-down under ``node`` (which must be reachable): each child is linked in
        before the next allocation, so a collection at any point sees it."""
        if depth <= 0:
            return
        depth -= 1
        left = self.new_node()
        _U64.from_address(node).value = left
        right = self.new_node()
        _U64.from_address(node + 8).value = right
        self.populate(depth, left)
        self.populate(depth, right)

    def make_tree(self, depth: int) -> int:
        """Build bottom-up: the subtrees wait in the shadow stack until their parent exists."""
        if depth <= 0:
            return self.new_node()
        words = self.stack.words
        words[2 * depth] = left = self.make_tree(depth - 1)
        words[2 * depth + 1] = right = self.make_tree(depth - 1)
        p = self.new_node(left, right)
        words[2 * depth] = words[2 * depth + 1] = 0
        return p

    def count(self, root: int) -> int:
        """Nodes reachable from ``root`` (checks a tree survived every collection)."""
        n, todo = 0, [root]
        while todo:
            p = todo.pop()
            n += 1
            for child in (_U64.from_address(p).value, _U64.from_address(p + 8).value):
                if child:
                    todo.append(child)
        return n

    def run(self) -> list[str]:
        z = self.sizes
        heap, words = self.heap, self.stack.words
        words[0] = self.make_tree(z.stretch_depth)         # stretch the heap, then drop it
        words[0] = 0
        long_lived = heap.handle(self.new_node())
        self.populate(z.long_lived_depth, long_lived.addr)
        array = heap.new(ctypes.c_double, z.array_len)
        view = array.view
        for i in range(1, z.array_len // 2):
            view[i] = 1.0 / i
        depths = list(range(z.min_depth, z.max_depth + 1, 2))
        for k, depth in enumerate(depths):
            self._time_construction(depth, k, len(depths))
        self.progress.finish()
        alive = self.count(long_lived.addr)
        ok = alive == tree_size(z.long_lived_depth) and view[1000] == 1.0 / 1000
        long_lived.release()
        array.release()
        self.stack.close()
        if not ok:
            raise AssertionError(f"GCBench: long-lived tree has {alive} nodes, expected "
                                 f"{tree_size(z.long_lived_depth)}")
        return [f"{self.nodes:,} nodes allocated; trees of depth {z.min_depth}..{z.max_depth} "
                f"built top-down and bottom-up; long-lived tree intact ({alive:,} nodes)"]

    def _time_construction(self, depth: int, k: int, ndepths: int) -> None:
        iters = max(1, 2 * tree_size(self.sizes.stretch_depth) // tree_size(depth))
        words = self.stack.words
        for i in range(iters):
            words[0] = root = self.new_node()
            self.populate(depth, root)
            words[0] = 0
            words[0] = self.make_tree(depth)
            words[0] = 0
            self.progress.update(f"gcbench depth {depth:2d}", k * iters + i + 1, ndepths * iters)


def pick_size(rng: random.Random) -> int:
    """Mixed sizes: mostly small, some medium, a few large (> 32 KiB) objects."""
    r = rng.random()
    if r < 0.30:
        return rng.randint(1, 15)              # tiny
    if r < 0.80:
        return rng.randint(16, 1024)           # small
    if r < 0.97:
        return rng.randint(1025, 32 * 1024)    # small, larger classes
    return rng.randint(32 * 1024 + 1, 256 * 1024)   # large


def churn(heap: Heap, count: int, window: int, progress: Progress) -> list[str]:
    """Allocate ``count`` objects of mixed sizes and write them; the last ``window`` stay
    alive (a ring in a shadow stack). A fifth are scan objects that point to an older one."""
    rng = random.Random(8)
    ring = ShadowStack(heap, window)
    words = ring.words
    allocated = 0
    for i in range(count):
        size = pick_size(rng)
        if i % 5 == 0 and size >= 16:
            p = heap.alloc(size)                        # may hold pointers
            _U64.from_address(p).value = words[(i - 1) % window]
        else:
            p = heap.alloc(size, noscan=True)
            ctypes.memset(p, i & 0xFF, size)
        words[i % window] = p
        allocated += size
        progress.update("churn", i + 1, count)
    progress.finish()
    ring.close()
    return [f"{count:,} objects, {allocated / MIB:,.1f} MiB allocated, "
            f"{window:,} kept alive at a time"]


def finalizers(heap: Heap, count: int, progress: Progress) -> list[str]:
    """``count`` objects with finalizers, dropped; one cycle queues them all, the finalizer
    thread runs them, the next cycle frees the objects."""
    ran: list[int] = []
    keep = ShadowStack(heap, count)
    for i in range(count):
        p = heap.alloc(48)
        keep.words[i] = p
        heap.set_finalizer(p, ran.append)
        progress.update("finalizers", i + 1, count)
    progress.finish()
    heap.collect()                       # all rooted: nothing to finalize yet
    early = len(ran)
    keep.close()
    heap.collect()                       # unreachable: queued for the finalizer thread
    heap.run_finalizers(timeout=60.0)
    heap.collect()                       # finalized objects are freed now
    if early or len(ran) != count:
        raise AssertionError(f"finalizers: {early} ran early, {len(ran)} of {count} ran")
    return [f"{count:,} objects with finalizers dropped; {len(ran):,} finalizers ran"]


def _profiled_buffers(heap: Heap, keep: ShadowStack, start: int, n: int) -> None:
    for i in range(start, start + n):
        keep.words[i] = heap.alloc(4096, noscan=True)


def _profiled_records(heap: Heap, keep: ShadowStack, start: int, n: int) -> None:
    for i in range(start, start + n):
        keep.words[i] = heap.alloc(64)


def profile(heap: Heap, count: int, path: str, kept: bool = True) -> list[str]:
    """Sample allocations at two call sites and write the heap profile to ``path``; ``kept``
    False says the caller deletes it after the run (the note then does not offer the path)."""
    old_rate = heap.mem_profile_rate
    heap.mem_profile_rate = rate = 16 * 1024
    keep = ShadowStack(heap, 2 * count)
    try:
        _profiled_buffers(heap, keep, 0, count)
        _profiled_records(heap, keep, count, count)
        heap.collect()                   # a profile reports the heap as of the last cycle
        records = heap.memprofile()
        heap.write_heap_profile(path)
    finally:
        heap.mem_profile_rate = old_rate
        keep.close()
    size = os.path.getsize(path)
    if kept:
        where = (f"heap profile written to {path} ({size:,} bytes, gzipped pprof: "
                 f"go tool pprof -top {path})")
    else:
        where = (f"heap profile of {size:,} bytes written to a temporary folder, deleted "
                 f"after the run (--profile OUT.PB.GZ keeps it)")
    return [f"{len(records)} sampled sites; {where}", *top_sites(records, rate)]


def top_sites(records: list, rate: int, n: int = 3) -> list[str]:
    """The ``n`` sites with the most bytes in use, estimated from the samples as pprof does."""
    rows = []
    for r in records:
        objects, nbytes = scale_heap_sample(r.inuse_objects, r.inuse_bytes, rate)
        where = f"{r.stack[0].function}:{r.stack[0].line}" if r.stack else "?"
        rows.append((nbytes, objects, where))
    rows.sort(reverse=True)
    return [f"  in use ~{nbytes / MIB:6.2f} MiB in ~{objects:,} objects at {where}"
            for nbytes, objects, where in rows[:n] if nbytes]


# --- the demo --------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    name: str
    description: str
    before: Sample
    after: Sample
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "seconds": self.seconds,
                "notes": self.notes, "before": self.before.as_dict(),
                "after": self.after.as_dict()}


@dataclass
class DemoResult:
    phases: list[PhaseResult]
    samples: list[Sample]
    profile_path: str | None      # None: the profile went to a temporary folder, now deleted


@dataclass(frozen=True)
class DemoSizes:
    bench: BenchSizes
    churn: int
    window: int
    finalizers: int
    profile: int


GCTRACE_NOTE = ("gctrace is on: each 'gc N @...' line on stderr is one collection, in the "
                "format of Go's GODEBUG=gctrace=1 (docs/gc.md); GCALLOC_DEBUG=gctrace=0 "
                "turns them off")

FULL = DemoSizes(BenchSizes(16, 16, 500_000, 4, 16), churn=100_000, window=2_000,
                 finalizers=20_000, profile=4_000)
QUICK = DemoSizes(BenchSizes(12, 12, 50_000, 4, 12), churn=10_000, window=500,
                  finalizers=2_000, profile=1_000)


def run_demo(quick: bool = False, out: TextIO | None = None, progress: Progress | None = None,
             interval: float = 0.05, profile_path: str | None = None) -> DemoResult:
    """Run every phase on a fresh heap with gctrace on, printing a table per phase to ``out``
    (default stdout); the heap profile goes to ``profile_path`` (default: a temporary folder,
    deleted before returning). Returns the phases and the RSSMonitor's samples. Raises
    AssertionError if a workload finds its data damaged, OSError if the profile cannot be
    written."""
    if profile_path is not None:
        return _run_demo(quick, out, progress, interval, profile_path, kept=True)
    with tempfile.TemporaryDirectory(prefix="gcalloc-demo-") as tmp:
        result = _run_demo(quick, out, progress, interval, os.path.join(tmp, "heap.pb.gz"),
                           kept=False)
    result.profile_path = None
    return result


def _run_demo(quick: bool, out: TextIO | None, progress: Progress | None, interval: float,
              profile_path: str, kept: bool) -> DemoResult:
    out = sys.stdout if out is None else out
    progress = Progress(enabled=False) if progress is None else progress
    z = QUICK if quick else FULL
    debug = "gctrace=1," + os.environ.get("GCALLOC_DEBUG", "")
    if parse_debug(debug).gctrace:
        print(GCTRACE_NOTE, file=out, flush=True)
    heap = Heap(debug=debug)
    monitor = RSSMonitor(heap, interval).start()
    steps: list[tuple[str, str, Callable[[], list[str]]]] = [
        ("gcbench", "GCBench: build and drop binary trees",
         lambda: GCBench(heap, z.bench, progress).run()),
        ("churn", "churn of mixed sizes, tiny to 256 KiB",
         lambda: churn(heap, z.churn, z.window, progress)),
        ("finalizers", "objects with finalizers",
         lambda: finalizers(heap, z.finalizers, progress)),
        ("profile", "a sampled heap profile",
         lambda: profile(heap, z.profile, profile_path, kept)),
        ("release", "drop everything, free_os_memory()", lambda: _release(heap)),
        ("close", "close the heap: every mapping back to the OS", lambda: _close(heap)),
    ]
    phases = []
    try:
        for i, (name, description, step) in enumerate(steps, 1):
            print(f"\n[{i}/{len(steps)}] {name}: {description}", file=out, flush=True)
            phase = _run_phase(monitor, name, description, step)
            print(format_phase(phase), file=out, flush=True)
            phases.append(phase)
    finally:
        progress.finish()
        samples = monitor.stop()
        heap.close()
    return DemoResult(phases, samples, profile_path)


def _run_phase(monitor: RSSMonitor, name: str, description: str,
               step: Callable[[], list[str]]) -> PhaseResult:
    before = monitor.mark(name)
    t0 = time.perf_counter()
    notes = step()
    seconds = time.perf_counter() - t0
    return PhaseResult(name, description, before, monitor.sample(), seconds, notes)


def _release(heap: Heap) -> list[str]:
    released = heap.free_os_memory()
    heap.verify()
    return [f"free_os_memory() returned {released / MIB:,.1f} MiB to the OS; verify() ok"]


def _close(heap: Heap) -> list[str]:
    heap.close()
    return ["closed: every mapping is back with the OS; RSS now is the interpreter's own "
            "memory (Python objects, and what malloc kept of numpy's temporaries)"]


# --- tables ----------------------------------------------------------------------------------

COLUMNS = ("heap_alloc", "heap_inuse", "heap_idle", "heap_released", "num_gc", "rss", "uss")


def _cell(name: str, value: int | None) -> str:
    if value is None:
        return "-"
    if name == "num_gc":
        return str(value)
    return f"{value / MIB:.1f} MiB"


def format_table(rows: list[tuple[str, Sample]]) -> str:
    """A small fixed-width table: one row per (label, sample), the COLUMNS as columns."""
    header = ["", *COLUMNS]
    body = [[label, *(_cell(c, getattr(s, c)) for c in COLUMNS)] for label, s in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for r in [header, *body]:
        first = r[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(r[1:], widths[1:], strict=True))
        lines.append("  " + "  ".join([first, *rest]))
    return "\n".join(lines)


def format_phase(p: PhaseResult) -> str:
    notes = "".join(f"  {n}\n" for n in p.notes)
    return (f"{notes}  ({p.seconds:.2f} s)\n"
            + format_table([("before", p.before), ("after", p.after)]))
