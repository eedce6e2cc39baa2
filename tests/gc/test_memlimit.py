"""The soft memory limit and the GC CPU limiter, against what Go documents for
debug.SetMemoryLimit / GOMEMLIMIT (Go 1.19 runtime/debug, mgcpacer.go, mgclimit.go,
mgcscavenge.go; the goal's headroom is Go 1.21's)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import gcalloc
from gcalloc.debug import MAX_INT64, parse_limit
from gcalloc.errors import ConfigError, InvalidArgument
from gcalloc.gc import trace
from gcalloc.gc.memlimit import LIMITER_CAPACITY, CPULimiter, limit_heap_goal

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def test_parse_limit_suffixes() -> None:
    """GOMEMLIMIT takes an integer with B, KiB, MiB, GiB or TiB (runtime/debug's docs), and
    "off"."""
    assert parse_limit("512MiB") == 512 * MiB
    assert parse_limit("123") == 123
    assert parse_limit("7B") == 7
    assert parse_limit("3KiB") == 3 << 10
    assert parse_limit("2GiB") == 2 << 30
    assert parse_limit("1TiB") == 1 << 40
    assert parse_limit("off") == MAX_INT64
    for bad in ("", "12MB", "1.5GiB", "-1", "MiB", "12 MiB", "10PiB", str(1 << 64)):
        with pytest.raises(ConfigError):
            parse_limit(bad)


def test_set_memory_limit_returns_old_and_negative_reads() -> None:
    """SetMemoryLimit returns the previous limit; a negative input only reads it; the
    default is math.MaxInt64 (Go 1.19 runtime/debug)."""
    with gcalloc.Heap(100) as h:
        assert h.set_memory_limit(-1) == MAX_INT64
        assert h.set_memory_limit(64 * MiB) == MAX_INT64
        assert h.set_memory_limit(-5) == 64 * MiB
        assert h.read_memlimit().limit == 64 * MiB
        assert h.set_memory_limit(MAX_INT64) == 64 * MiB
        assert h.read_memlimit().limit_goal == MAX_INT64
        for bad in ("64MiB", 1.5, True, None):
            with pytest.raises(InvalidArgument):
                h.set_memory_limit(bad)    # type: ignore[arg-type]
        assert h.set_memory_limit(-1) == MAX_INT64


def test_environment_sets_the_limit() -> None:
    """GCALLOC_MEMLIMIT as GOMEMLIMIT: the initial limit; malformed is an error before any
    memory is taken."""
    code = ("import gcalloc; h = gcalloc.Heap(-1); print(h.set_memory_limit(-1)); "
            "print(h.read_memlimit().heap_goal < 8 << 20)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GCALLOC_MEMLIMIT="8MiB")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(8 * MiB), "True"]
    env["GCALLOC_MEMLIMIT"] = "8 megs"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "ConfigError" in r.stderr


def test_limit_heap_goal_is_gos_formula() -> None:
    """memoryLimitHeapGoal: limit - (non-heap + overage), less max(3%, 1 MiB), never below
    the marked heap (Go 1.21 mgcpacer.go)."""
    # 100 MiB limit, 10 MiB of metadata (mapped 50, 20 free, 20 allocated): 90 MiB, less 3%
    goal = limit_heap_goal(100 * MiB, 50 * MiB, 20 * MiB, 20 * MiB, 5 * MiB)
    assert goal == 90 * MiB - 90 * MiB // 100 * 3
    # over the limit by 10 MiB with 10 MiB of metadata: the overage comes off too
    goal = limit_heap_goal(100 * MiB, 110 * MiB, 0, 100 * MiB, 5 * MiB)
    assert goal == 80 * MiB - 80 * MiB // 100 * 3
    # a small goal keeps the 1 MiB minimum headroom
    assert limit_heap_goal(10 * MiB, 0, 0, 0, 0) == 9 * MiB
    # nothing left for the heap: the marked heap is the goal
    assert limit_heap_goal(10 * MiB, 30 * MiB, 0, 5 * MiB, 4 * MiB) == 4 * MiB
    assert limit_heap_goal(MAX_INT64, 1, 1, 1, 1) == MAX_INT64


def test_limit_collects_with_gogc_off_and_stays_under_it() -> None:
    """GOGC=off with GOMEMLIMIT=64MiB (the GC guide's "maximization of resource economy"):
    a churn of 1 GiB of garbage beside 8 MiB live collects as the limit requires, and what
    the heap holds from the OS (sys - heap_released, Go's mappedReady) stays under the limit
    + 10%. RSS: the process's growth over its size before the heap was made stays under the
    limit + 10% (what gcalloc maps and never touches, such as most of an arena's bitmap,
    counts in the limit but not in RSS, so RSS is lower than mapped_ready, not higher)."""
    limit = 64 * MiB
    proc = psutil.Process()
    base = proc.memory_info().rss
    with gcalloc.Heap(-1, debug="") as h:
        h.set_memory_limit(limit)
        live = [h.new(ctypes.c_char * MiB) for _ in range(8)]
        for i, obj in enumerate(live):
            obj.view[0] = i + 1
        sizes = (4096, 32768, 100_000)
        total = n = peak = peak_rss = 0
        while total < 1 << 30:
            size = sizes[n % 3]
            h.alloc(size, noscan=True)
            total += size
            n += 1
            if n % 100 == 0:
                peak = max(peak, h.read_memlimit().mapped_ready)
                peak_rss = max(peak_rss, proc.memory_info().rss - base)
        stats = h.read_memstats()
        assert stats.num_gc >= 10, "the limit must trigger cycles with GOGC off"
        assert stats.num_forced_gc == 0
        assert peak <= limit * 1.1, f"mapped_ready peaked at {peak / MiB:.1f} MiB"
        assert peak_rss <= limit * 1.1, f"RSS grew by {peak_rss / MiB:.1f} MiB"
        assert [bytes(o.view[:1]) for o in live] == [bytes([i + 1]) for i in range(8)]
        assert stats.next_gc <= limit
        h.verify()


def test_unmeetable_limit_caps_gc_at_half() -> None:
    """A limit below the live heap cannot be met; Go's GC CPU limiter (Go 1.19 mgclimit.go)
    keeps the collector from running continuously: GC time fills a bucket, mutator time
    drains it, and while it is full the limit starts no cycle. So, from the collector's own
    accounting, GC time exceeds mutator time by at most the bucket plus one cycle, whatever
    the machine's speed: GC takes about half, not all."""
    with gcalloc.Heap(-1, debug="") as h:
        live = [h.alloc(4 * MiB, noscan=True) for _ in range(8)]
        for p in live:
            h.add_root(p)
        h.set_memory_limit(16 * MiB)
        total = 0
        while total < 256 * MiB:
            h.alloc(100_000, noscan=True)
            total += 100_000
        s = h.read_memlimit()
        ms = h.read_memstats()
        longest = max(ms.pause_ns) / 1e9
        assert ms.num_gc >= 10, "the limit still collects"
        assert s.limiter_skipped > 0
        assert s.gc_time - s.mutator_time <= LIMITER_CAPACITY + longest + 1e-3, s
        assert all(h.lookup(p) for p in live)


def test_limiter_bucket() -> None:
    """The bucket fills with GC time and drains with mutator time (mgclimit.go)."""
    lim = CPULimiter(capacity=1.0)
    lim._last = 10.0
    lim.cycle(10.0, 10.5)        # 0.5 s GC
    assert lim.fill == 0.5 and not lim.enabled_cycles
    lim.cycle(10.75, 11.5)       # 0.25 s mutator, 0.75 s GC: full
    assert lim.fill == 1.0 and lim.enabled_cycles == 1
    lim.cycle(13.5, 13.625)      # 2 s mutator empties it, then 0.125 s GC
    assert lim.fill == 0.125
    assert lim.gc_share() == pytest.approx(1.375 / 3.625)


def test_limit_scavenges_free_pages() -> None:
    """Lowering the limit below what the heap holds returns free pages to the OS at once
    (the scavenger's memory-limit goal, Go 1.19 mgcscavenge.go)."""
    with gcalloc.Heap(-1, debug="") as h:
        for _ in range(800):
            h.alloc(100_000, noscan=True)
        h.collect()
        before = h.read_memlimit().mapped_ready
        released = h.read_memstats().heap_released
        assert before > 64 * MiB
        h.set_memory_limit(40 * MiB)
        after = h.read_memlimit()
        assert after.mapped_ready <= 40 * MiB
        assert after.scavenged >= before - 40 * MiB
        assert h.read_memstats().heap_released - released == after.scavenged


def test_gogc_goal_wins_when_smaller() -> None:
    """The heap goal is the smaller of the GOGC goal and the limit's (Go 1.19 mgcpacer.go)."""
    with gcalloc.Heap(100, debug="") as h:
        h.set_memory_limit(1 << 40)
        s = h.read_memlimit()
        assert s.heap_goal == h.read_memstats().next_gc == 4 * MiB < s.limit_goal
        h.set_memory_limit(3 * MiB)
        s = h.read_memlimit()
        assert s.heap_goal == s.limit_goal < 3 * MiB


def test_gctrace_shows_the_limit() -> None:
    """The limit in the gctrace line (after the P count) only when one is set."""
    c = trace.CycleTimes(1, 0.5, 0.001, 0.002, 0.001, 0.001, 0.002, 0.001, 10 * MiB,
                         10 * MiB, 5 * MiB, 60 * MiB, False, 0.1, 2, 64 * MiB)
    assert trace.format_line(c).endswith("60 MB goal, 2 P, 64 MB limit")
    c.limit = MAX_INT64
    assert trace.format_line(c).endswith("60 MB goal, 2 P")


def test_readme_second_tour_runs() -> None:
    """The README's tour of the features beyond Go 1.16 runs as written."""
    import re
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = blocks[1]
    assert "set_memory_limit" in code
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "False" not in r.stdout and "True" in r.stdout


def test_gctrace_line_of_a_limited_heap() -> None:
    """A heap with a limit and gctrace=1 prints the limit in each cycle's line."""
    code = ("import gcalloc; h = gcalloc.Heap(-1, debug='gctrace=1'); "
            "h.set_memory_limit(48 << 20); h.collect(); h.close()")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GCALLOC_MEMLIMIT", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("gc ")]
    assert lines and lines[-1].endswith(" P, 48 MB limit (forced)"), r.stderr
