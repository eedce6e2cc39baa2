"""Sweeping, pacing, MemStats and gctrace.

Sweep: the sweepgen protocol (after ``collect()`` every in-use span has sweepgen ==
h.sweepgen, and h.sweepgen rises by 2 per cycle), lazy sweeping after automatic cycles,
reclaim before the heap grows, empty small spans and dead large spans back to the page heap.
Pacing: GOGC from the argument or GCALLOC_GOGC, ``set_gc_percent``, the goal
``next_gc = marked * (1 + GOGC/100)`` with a 4 MiB minimum scaled by GOGC/100, and
allocation triggering a cycle when heap_live reaches it, and heap_live balanced under explicit
free (every refund matches a charge, so a mix of alloc and free still collects at the goal).
"""

from __future__ import annotations

import ctypes
import gc
import random
import re
import threading
import time

import pytest

import gcalloc
from gcalloc.debug import ConfigError
from gcalloc.errors import GcallocError, HeapCorruption, InvalidArgument
from gcalloc.gc.pacer import HEAP_MINIMUM, Pacer
from gcalloc.mspan import SPAN_IN_USE
from gcalloc.sizeclasses import PAGE_SIZE, class_to_size

MiB = 1 << 20
U64 = ctypes.c_uint64

TRACE = re.compile(
    r"gc (?P<n>\d+) @(?P<at>\d+\.\d{3})s (?P<pct>\d+)%: "
    r"[\d.]+\+[\d.]+\+[\d.]+ ms clock, [\d.]+\+0/[\d.]+/0\+[\d.]+ ms cpu, "
    r"(?P<start>\d+)->(?P<end>\d+)->(?P<marked>\d+) MB, (?P<goal>\d+) MB goal, (?P<procs>\d+) P"
    r"(?P<forced> \(forced\))?")


@pytest.fixture
def paced():
    """A heap with GOGC=100."""
    h = gcalloc.Heap(100, scavenger=False, debug="")
    try:
        yield h
    finally:
        h.close()


def in_use(heap: gcalloc.Heap) -> list:
    return [s for s in heap._alloc.mheap.live_spans() if s.state == SPAN_IN_USE]


def live(heap: gcalloc.Heap, p: int) -> bool:
    return heap.lookup(p) is not None


def automatic_cycle(heap: gcalloc.Heap) -> None:
    """Run one automatic (unforced) cycle through the public API: GOGC=0 makes the next slow
    path collect; a large allocation always takes a slow path."""
    before = heap.read_memstats().num_gc
    old = heap.set_gc_percent(0)
    heap.alloc(40_000)
    heap.set_gc_percent(old)
    after = heap.read_memstats()
    assert after.num_gc == before + 1
    assert after.num_forced_gc == heap._gc.num_forced_gc


# --- sweepgen -------------------------------------------------------------------------------

def test_sweepgen_rises_by_two_and_collect_sweeps_everything(heap):
    keep = [heap.alloc(size) for size in (16, 64, 500, 3000, 40_000, 200_000) for _ in range(20)]
    for p in keep[::3]:
        heap.add_root(p)
    for cycle in range(1, 4):
        heap.collect()
        sg = heap._alloc.mheap.sweepgen
        assert sg == 2 * cycle
        spans = in_use(heap)
        assert spans
        assert all(s.sweepgen == sg for s in spans), [s for s in spans if s.sweepgen != sg]
        assert heap._gc.sweeper.done()
        heap.verify()


def test_automatic_cycle_sweeps_lazily(heap):
    heap._gc.batch_sweep = False             # Go's behaviour: every span swept on demand
    ps = [heap.alloc(64) for _ in range(3000)]
    for p in ps[::10]:
        heap.add_root(p)
    automatic_cycle(heap)
    sg = heap._alloc.mheap.sweepgen
    assert sg == 2
    unswept = [s for s in in_use(heap) if s.sweepgen == sg - 2]
    assert unswept                          # left for later, as Go leaves them
    heap.verify()                           # sg - 2 is an allowed state
    assert all(live(heap, p) for p in ps[::10])
    # Allocating sweeps spans on demand (mcentral) ...
    for _ in range(2000):
        heap.alloc(64)
    swept_now = [s for s in unswept if s.state != SPAN_IN_USE or s.sweepgen == sg]
    assert swept_now
    heap.verify()
    # ... and the next collect finishes the rest before it marks.
    heap.collect()
    assert all(s.sweepgen == heap._alloc.mheap.sweepgen for s in in_use(heap))
    assert heap.read_memstats().heap_objects == 300


def test_verify_checks_sweepgen(heap):
    p = heap.alloc(64)
    heap.add_root(p)
    heap.collect()
    s = heap._alloc.mheap.span_of(p)
    sg = heap._alloc.mheap.sweepgen
    assert s.cached_by is None
    for bad in (sg - 1, sg + 1, sg + 2, sg - 4):
        s.sweepgen = bad
        with pytest.raises(HeapCorruption, match="sweepgen"):
            heap.verify()
    s.sweepgen = sg
    heap.verify()


# --- freeing spans ----------------------------------------------------------------------------

def test_empty_small_spans_return_to_the_page_heap(heap):
    keep = heap.alloc(64)
    heap.add_root(keep)
    garbage = [heap.alloc(64) for _ in range(128 * 20)]   # 20+ spans of class 64
    spans = {heap._alloc.mheap.span_of(p) for p in garbage} - {heap._alloc.mheap.span_of(keep)}
    assert len(spans) >= 19
    inuse_before = heap.read_memstats().heap_inuse
    heap.collect()
    ms = heap.read_memstats()
    assert all(s.state != SPAN_IN_USE or s.spanclass != heap._alloc.mheap.span_of(keep).spanclass
               for s in spans)
    assert ms.heap_inuse <= inuse_before - 19 * 8192
    assert ms.heap_inuse == sum(s.npages for s in in_use(heap)) * 8192
    assert ms.heap_objects == 1
    heap.verify()


def test_dead_large_spans_are_freed(heap):
    bigs = [heap.alloc(MiB) for _ in range(10)]
    for p in bigs[:3]:
        heap.add_root(p + 1000)
    inuse_before = heap.read_memstats().heap_inuse
    heap.collect()
    ms = heap.read_memstats()
    assert [live(heap, p) for p in bigs] == [True] * 3 + [False] * 7
    assert inuse_before - ms.heap_inuse == 7 * MiB
    assert ms.heap_alloc == 3 * MiB and ms.heap_objects == 3
    for p in bigs[3:]:
        s = heap._alloc.mheap.span_of(p)
        assert s is None or s.state != SPAN_IN_USE or s.base != p


def test_automatic_cycle_batch_sweeps_plain_spans(heap):
    """With batch_sweep (the default) an automatic cycle sweeps spans needing no per-object
    work at termination; a span it empties waits one cycle in its mcentral, then goes back
    to the page heap if nothing allocated from it."""
    heap.mem_profile_rate = 0   # a sampled object has a special: its span is swept lazily
    kept = [heap.alloc(64) for _ in range(200)]
    for p in kept:
        heap.add_root(p)
    dropped = [heap.alloc(256) for _ in range(64)]   # two whole 8 KiB spans of garbage
    spans = {heap._alloc.mheap.span_of(p) for p in dropped}
    automatic_cycle(heap)
    sg = heap._alloc.mheap.sweepgen
    assert all(s.sweepgen == sg for s in in_use(heap))        # nothing left unswept
    assert all(s.state == SPAN_IN_USE and s.allocCount == 0 for s in spans)
    assert not any(live(heap, p) for p in dropped)
    assert all(live(heap, p) for p in kept)
    heap.verify()
    spc = next(iter(spans)).spanclass
    automatic_cycle(heap)                                       # still unused: released
    assert not [s for s in in_use(heap) if s.spanclass == spc]
    assert heap.read_memstats().heap_objects == len(kept) + 1  # + the triggering object
    heap.verify()


def test_page_heap_reclaims_before_it_grows(heap):
    heap._gc.batch_sweep = False        # exercise lazy sweeping and reclaim
    garbage = [heap.alloc(1024) for _ in range(6 * 1024)]   # 6 MiB
    lo, hi = min(garbage), max(garbage)
    automatic_cycle(heap)
    assert heap._gc.sweeper.reclaimed_pages == 0
    big = heap.alloc(2 * MiB)
    assert heap._gc.sweeper.reclaimed_pages >= 256
    assert lo <= big < hi                   # carved from the swept garbage's pages
    heap.verify()


def test_free_after_automatic_cycle_sweeps_the_span_first(heap):
    """Explicit free of an object whose span the last (automatic) cycle left unswept: the
    object was marked, so the span must be swept (ensureSwept) before the slot is freed,
    or the sweep would resurrect it from gcmarkBits."""
    heap._gc.batch_sweep = False            # leave the span to lazy sweeping
    ps = [heap.alloc(64) for _ in range(10)]
    for p in ps:
        heap.add_root(p)
    automatic_cycle(heap)
    s = heap._alloc.mheap.span_of(ps[0])
    assert s.sweepgen == heap._alloc.mheap.sweepgen - 2        # unswept
    heap.remove_root(ps[0])
    heap.free(ps[0])
    assert not live(heap, ps[0])
    heap.verify()
    heap.collect()
    ms = heap.read_memstats()
    assert ms.heap_objects == 9
    assert not live(heap, ps[0])
    heap.verify()


def test_free_large_after_automatic_cycle(heap):
    big = heap.alloc(100_000)
    heap.add_root(big)
    automatic_cycle(heap)
    heap.remove_root(big)
    heap.free(big)
    heap.collect()
    assert not live(heap, big)
    assert heap.read_memstats().heap_objects == 0
    heap.verify()


# --- pacing ---------------------------------------------------------------------------------

def test_gc_percent_default_argument_and_env(monkeypatch):
    monkeypatch.delenv("GCALLOC_GOGC", raising=False)
    with gcalloc.Heap(debug="") as h:
        assert h.gc_percent == 100
        assert h.read_memstats().next_gc == 4 * MiB
    monkeypatch.setenv("GCALLOC_GOGC", "50")
    with gcalloc.Heap(debug="") as h:
        assert h.gc_percent == 50
        assert h.read_memstats().next_gc == 2 * MiB
    with gcalloc.Heap(300, debug="") as h:          # the argument wins over the env
        assert h.gc_percent == 300
    monkeypatch.setenv("GCALLOC_GOGC", "off")
    with gcalloc.Heap(debug="") as h:
        assert h.gc_percent == -1
        ms = h.read_memstats()
        assert ms.next_gc == 0 and not ms.enable_gc
    monkeypatch.setenv("GCALLOC_GOGC", "lots")
    with pytest.raises(ConfigError) as info:
        gcalloc.Heap(debug="")
    assert isinstance(info.value, GcallocError) and isinstance(info.value, ValueError)


def test_set_gc_percent(paced):
    assert paced.set_gc_percent(50) == 100
    assert paced.read_memstats().next_gc == 2 * MiB
    assert paced.set_gc_percent(-1) == 50
    assert not paced.read_memstats().enable_gc
    assert paced.set_gc_percent(-20) == -1
    assert paced.set_gc_percent(200) == -1
    assert paced.gc_percent == 200
    assert paced.read_memstats().next_gc == 8 * MiB
    for bad in ("100", 1.5, True, None):
        with pytest.raises(InvalidArgument):
            paced.set_gc_percent(bad)
    assert paced.gc_percent == 200
    with pytest.raises(InvalidArgument):
        gcalloc.Heap("100", debug="")


def rooted_large(heap: gcalloc.Heap, count: int, size: int) -> list[int]:
    """count objects of size bytes, each rooted before the next allocation (a cycle the
    next allocation triggers must not free it: raw addresses are not roots)."""
    addrs = []
    for _ in range(count):
        p = heap.alloc(size)       # safe until the next allocation: only this thread runs
        heap.add_root(p)
        addrs.append(p)
    return addrs


def test_next_gc_is_marked_times_one_plus_gogc(paced):
    live_objs = rooted_large(paced, 64, 128 * 1024)      # 8 MiB, page multiples
    paced.collect()
    ms = paced.read_memstats()
    assert ms.heap_alloc == 8 * MiB
    assert ms.next_gc == 16 * MiB
    paced.set_gc_percent(50)
    assert paced.read_memstats().next_gc == 12 * MiB
    paced.set_gc_percent(300)
    assert paced.read_memstats().next_gc == 32 * MiB
    for p in live_objs[:56]:
        paced.remove_root(p)
    paced.collect()                        # 1 MiB marked: 4 MiB, below 300% minimum 12 MiB
    assert paced.read_memstats().next_gc == 12 * MiB
    paced.set_gc_percent(100)
    assert paced.read_memstats().next_gc == 4 * MiB


def test_allocation_triggers_a_cycle_at_the_goal(paced):
    allocated = 0
    while paced.read_memstats().num_gc == 0:
        paced.alloc(1024)
        allocated += 1024
        assert allocated <= 5 * MiB, "no automatic cycle after 5 MiB with a 4 MiB goal"
    assert 4 * MiB - 64 * 1024 <= allocated <= 4 * MiB + 64 * 1024
    ms = paced.read_memstats()
    assert ms.num_forced_gc == 0


def test_triggering_allocation_survives_its_cycle(paced):
    while paced.read_memstats().next_gc - paced._gc.pacer.heap_live > 64 * 1024:
        paced.alloc(1024)
    before = paced.read_memstats().num_gc
    p = paced.alloc(200_000)               # crosses the goal: collects with p as a root
    assert paced.read_memstats().num_gc == before + 1
    assert live(paced, p)
    ctypes.memset(p, 0x5A, 200_000)
    assert ctypes.string_at(p + 199_990, 10) == b"\x5a" * 10


def test_heap_stays_near_its_goal(paced):
    for _ in range(48 * 1024):              # 48 MiB of garbage
        paced.alloc(1024)
    ms = paced.read_memstats()
    assert ms.num_gc >= 8
    assert ms.heap_inuse < 12 * MiB
    paced.verify()


def test_gc_off_never_collects_automatically(heap):
    for _ in range(10 * 1024):
        heap.alloc(1024)
    heap.alloc(MiB)
    ms = heap.read_memstats()
    assert ms.num_gc == 0 and ms.heap_alloc >= 11 * MiB
    heap.set_gc_percent(100)                # turned on: the next slow path collects
    heap.alloc(MiB)
    assert heap.read_memstats().num_gc == 1


# --- MemStats -------------------------------------------------------------------------------

def test_memstats_after_collect(paced):
    t0 = time.time_ns()
    keep = []
    sizes = (8 * 3, 48, 1000, 9000, 33_000, 70_000)
    for size in sizes:
        for i in range(10):
            p = paced.alloc(size)
            if i % 2:
                keep.append((p, paced.usable_size(p)))
                paced.add_root(p)
    paced.collect()
    t1 = time.time_ns()
    ms = paced.read_memstats()
    assert ms.num_gc == 1 and ms.num_forced_gc == 1
    assert ms.heap_objects == len(keep) == 30
    assert ms.heap_alloc == ms.alloc == sum(size for _, size in keep)
    assert ms.mallocs - ms.frees == ms.heap_objects
    assert t0 <= ms.last_gc <= t1
    last = (ms.num_gc + 255) % 256
    assert ms.pause_ns[last] > 0
    assert ms.pause_end[last] == ms.last_gc
    assert ms.pause_total_ns == sum(ms.pause_ns)
    assert 0.0 < ms.gc_cpu_fraction <= 1.0
    assert ms.enable_gc and not ms.debug_gc
    paced.collect()
    paced.collect()
    ms2 = paced.read_memstats()
    assert ms2.num_gc == 3 and ms2.num_forced_gc == 3
    assert ms2.pause_total_ns == sum(ms2.pause_ns) > ms.pause_total_ns
    assert ms2.pause_end[2] == ms2.last_gc >= ms.last_gc
    assert ms2.heap_objects == 30


def test_memstats_count_automatic_cycles(paced):
    for _ in range(12 * 1024):
        paced.alloc(1024)
    ms = paced.read_memstats()
    assert ms.num_gc >= 2 and ms.num_forced_gc == 0
    paced.collect()
    ms2 = paced.read_memstats()
    assert ms2.num_gc == ms.num_gc + 1 and ms2.num_forced_gc == 1
    assert ms2.heap_objects == 0


def test_debug_verify_flag_is_reported(monkeypatch):
    with gcalloc.Heap(-1, debug="verify=1") as h:
        h.alloc(64)
        h.collect()
        assert h.read_memstats().debug_gc


# --- gctrace ----------------------------------------------------------------------------------

def test_gctrace_line_per_cycle(capsys):
    with gcalloc.Heap(100, debug="gctrace=1") as h:
        rooted_large(h, 64, 128 * 1024)                         # 8 MiB
        before = h.read_memstats().num_gc                        # automatic cycles so far
        capsys.readouterr()
        h.collect()
        h.collect()
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    matches = [TRACE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [int(m["n"]) for m in matches] == [before + 1, before + 2]
    last = matches[-1]
    assert last["forced"]
    assert int(last["marked"]) == 8 and int(last["goal"]) == 16
    assert int(last["procs"]) >= 1
    assert int(last["pct"]) <= 100


def test_gctrace_from_environment_marks_automatic_cycles(monkeypatch, capsys):
    monkeypatch.setenv("GCALLOC_DEBUG", "gctrace=1")
    with gcalloc.Heap(100) as h:
        for _ in range(5 * 1024):
            h.alloc(1024)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines and TRACE.fullmatch(lines[0])
    assert lines[0].startswith("gc 1 @")
    assert not TRACE.fullmatch(lines[0])["forced"]
    assert int(TRACE.fullmatch(lines[0])["goal"]) == 4


def test_no_gctrace_without_the_flag(monkeypatch, capfd):
    monkeypatch.delenv("GCALLOC_DEBUG", raising=False)
    with gcalloc.Heap(100) as h:
        h.alloc(64)
        h.collect()
    assert capfd.readouterr().err == ""


def test_bad_debug_value_is_a_config_error():
    with pytest.raises(ConfigError):
        gcalloc.Heap(debug="gctrace=yes")
    with pytest.raises(ConfigError):
        gcalloc.Heap(debug="gctrace")


def test_charge_says_when_the_goal_is_reached():
    """The slow paths poll the collector only when charge() says heap_live reached next_gc."""
    p = Pacer(100)
    assert p.next_gc == HEAP_MINIMUM
    assert not p.charge(HEAP_MINIMUM - 8)
    assert p.charge(8)                          # exactly the goal: due
    assert not p.charge(-16)                    # a free (or refund) below it again
    p.cycle_done(6 << 20)                       # 6 MiB marked: goal 12 MiB
    assert not p.charge(5 << 20) and p.charge(1 << 20)
    off = Pacer(-1)
    assert not off.charge(1 << 40)              # GOGC off: never due


# --- heap_live under explicit free -----------------------------------------------------------

class Cell(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_uint64)]


def uncharged_bytes(heap: gcalloc.Heap) -> int:
    """Bytes of the slots cached spans have not handed out: refill charged them to heap_live,
    MemStats does not count them as allocated."""
    return sum(n * class_to_size[spc >> 1]
               for c in list(heap._alloc.mcaches) for spc, n in c.uncounted_slots())


def assert_balanced(heap: gcalloc.Heap) -> None:
    """With no cycle run yet, heap_live is exactly the allocated bytes plus the charged slots
    not handed out: each charge has been refunded once, by a free or by release_all."""
    live = heap._gc.pacer.heap_live
    assert live >= 0
    assert live == heap.read_memstats().heap_alloc + uncharged_bytes(heap)


def _mixed_ops(heap: gcalloc.Heap, rng: random.Random, n: int, kept: list[int],
               check=None, rooted: bool = False) -> None:
    """n seeded operations: small scan/noscan/typed, large, tiny (not freeable), and frees
    of what ``kept`` holds (mostly the newest object: the slot of a span still cached).
    ``rooted``: kept objects are roots (for heaps that collect)."""
    for i in range(n):
        r = rng.random()
        if r < 0.45 and kept:
            p = kept.pop(-1 if rng.random() < 0.8 else rng.randrange(len(kept)))
            if rooted:
                heap.remove_root(p)
            heap.free(p)
            continue
        if r < 0.55:
            heap.alloc(rng.randrange(1, 16), noscan=True)        # tiny: never freed
            continue
        if r < 0.65:
            p = heap.alloc(ctypes.sizeof(Cell) * rng.randrange(1, 40), type=Cell)
        elif r < 0.68:
            p = heap.alloc(rng.randrange(32_769, 300_000), noscan=rng.random() < 0.5)
        else:
            p = heap.alloc(rng.choice((16, 24, 1024, 3000, 20_000, 32_768)),
                           noscan=rng.random() < 0.5)
        if rooted:
            heap.add_root(p)
        kept.append(p)
        if check is not None and i % 97 == 0:
            check(heap)


@pytest.mark.parametrize("size", [1024, 20_000, 100_000])
def test_alloc_free_pairs_leave_heap_live_balanced(heap, size):
    """20,000 x alloc+free reuses one slot of the span the thread holds: each pair must cost
    heap_live nothing (it went to -20 MiB for 1 KiB objects, -409 MiB for 20,000 B)."""
    for _ in range(20_000):
        heap.free(heap.alloc(size))
    assert_balanced(heap)
    assert heap._gc.pacer.heap_live <= 2 * 8 * PAGE_SIZE     # one cached span at most


def test_mixed_alloc_and_free_keep_heap_live_balanced(heap):
    kept: list[int] = []
    _mixed_ops(heap, random.Random(12), 30_000, kept, check=assert_balanced)
    for p in kept:
        heap.free(p)
    assert_balanced(heap)
    heap.verify()


def test_frees_into_another_threads_span_and_thread_exit_keep_heap_live_balanced(heap):
    """Slots freed into a span another thread caches (pending until it gives the span back),
    and the spans a thread leaves behind when it exits."""
    ps: list[int] = []
    ready, leave = threading.Event(), threading.Event()

    def owner() -> None:
        kept: list[int] = []
        _mixed_ops(heap, random.Random(5), 5_000, kept)
        ps.extend(kept)
        ready.set()
        leave.wait(300)                       # a hang guard: the main thread sets it

    t = threading.Thread(target=owner)
    t.start()
    try:
        assert ready.wait(300)                 # a hang guard
        for p in ps[::2]:                      # many of them pending on the owner's spans
            heap.free(p)
        assert_balanced(heap)
    finally:
        leave.set()
        t.join()
    gc.collect()                               # the owner's mcache goes back
    assert_balanced(heap)
    for p in ps[1::2]:
        heap.free(p)
    assert_balanced(heap)
    heap.verify()


@pytest.mark.parametrize("size", [1024, 20_000])
def test_alloc_free_pairs_do_not_delay_the_first_cycle(paced, size):
    """After 20,000 alloc+free pairs the first automatic cycle still comes at the 4 MiB
    goal (it came after 24 MiB for 1 KiB objects and never for 20,000 B)."""
    for _ in range(20_000):
        paced.free(paced.alloc(size))
    ms = paced.read_memstats()
    assert ms.num_gc == 0 and ms.next_gc == HEAP_MINIMUM
    allocated = 0
    while paced.read_memstats().num_gc == 0:
        paced.alloc(size)
        allocated += class_size(size)
        assert allocated <= 2 * HEAP_MINIMUM, "no automatic cycle at twice the goal"
    span = 64 * 1024                           # a refill charges at most a span's free slots
    assert HEAP_MINIMUM - span <= allocated <= HEAP_MINIMUM + span


def class_size(size: int) -> int:
    return next(n for n in class_to_size[1:] if n >= size)


def test_cycles_come_at_the_goal_whatever_the_mix_of_alloc_and_free(paced):
    """Automatic cycles with lazy sweeping in between: heap_live never goes below zero and
    never runs past the goal by more than one charge (a span's free slots or a large object)
    without a cycle; the cycles that came are the ones the goal asks for."""
    rng = random.Random(7)
    kept: list[int] = []
    pacer = paced._gc.pacer
    worst_over = -(1 << 62)

    def check(heap: gcalloc.Heap) -> None:
        nonlocal worst_over
        assert pacer.heap_live >= 0, pacer.heap_live
        worst_over = max(worst_over, pacer.heap_live - pacer.next_gc)

    for _ in range(40):
        _mixed_ops(paced, rng, 1_000, kept, check=check, rooted=True)
        for p in kept[: len(kept) // 2]:       # drop half: garbage for the next cycle
            paced.remove_root(p)
        del kept[: len(kept) // 2]
        check(paced)
    ms = paced.read_memstats()
    # Every charge that reaches the goal polls the collector at once.
    assert worst_over < 0, worst_over
    assert ms.num_gc >= 3 and ms.num_forced_gc == 0
    paced.collect()
    paced.verify()
