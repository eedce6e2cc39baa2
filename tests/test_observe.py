"""RSSMonitor (gcalloc/observe.py): RSS and USS beside MemStats, and RSS following the heap.

The heap under test runs with no automatic collections, so the only cycle is the one
``free_os_memory`` starts; the 128 MiB of objects are unrooted, so that cycle frees them all.
"""

from __future__ import annotations

import ctypes
import sys
import threading

import pytest

import gcalloc
import gcalloc.observe
from gcalloc.observe import HEAP_FIELDS, RSSMonitor, Sample

MIB = 1 << 20
TOUCHED = 128 * MIB
HANG = 60.0          # seconds: a hang guard only


def touch_objects(heap: gcalloc.Heap, total: int, size: int = MIB) -> list[int]:
    """Allocate ``total`` bytes of noscan objects and write every byte of them."""
    addrs = []
    for _ in range(total // size):
        p = heap.alloc(size, noscan=True)
        ctypes.memset(p, 0xA5, size)
        addrs.append(p)
    return addrs


def test_rss_follows_the_heap_up_and_down():
    with gcalloc.Heap(-1, scavenger=False, debug="") as heap:
        mon = RSSMonitor(heap, interval=0.02).start()
        before = mon.mark("grow")
        touch_objects(heap, TOUCHED)
        grown = mon.sample()
        assert grown.heap_inuse - before.heap_inuse >= TOUCHED
        assert grown.rss - before.rss >= 0.9 * TOUCHED, (before, grown)

        mon.mark("free_os_memory")
        released = heap.free_os_memory()
        freed = mon.sample()
    samples = mon.stop()
    assert released >= TOUCHED
    assert freed.heap_released - grown.heap_released >= TOUCHED
    assert grown.rss - freed.rss >= 0.9 * released, (grown, freed, released)
    assert samples[-1].heap_inuse is None        # the last sample came after close
    assert {"grow", "free_os_memory"} <= {s.phase for s in samples}


def test_background_thread_samples_in_order_and_stops():
    with gcalloc.Heap(-1, scavenger=False, debug="") as heap:
        mon = RSSMonitor(heap, interval=0.005)
        with mon:
            assert mon.running
            mon.mark("first")
            assert mon.wait_for(len(mon.samples) + 3, timeout=HANG)
            mon.mark("second")
            assert mon.wait_for(len(mon.samples) + 3, timeout=HANG)
        samples = mon.samples
        assert not mon.running
        assert mon.stop() == samples      # stopping twice adds nothing
    times = [s.t for s in samples]
    assert times == sorted(times)
    phases = [s.phase for s in samples]
    assert phases.index("second") > phases.index("first")
    assert all(p == "second" for p in phases[phases.index("second"):])
    assert all(s.rss > 0 for s in samples)
    assert mon.series("rss") == [s.rss for s in samples]


def test_a_mark_while_a_background_sample_is_recorded_keeps_the_series_in_order(monkeypatch):
    """The background thread is held after it stamped a sample (time, phase) and before it
    recorded it, wherever it is not holding the monitor's lock, while the caller marks a new
    phase. The series must stay in time order with every sample after the mark labelled with
    the new phase (a stamp taken outside the lock came out of order, labelled "first")."""
    real = gcalloc.observe.Sample
    entered, release = threading.Event(), threading.Event()
    hold, held = [False], [False]
    mon: RSSMonitor

    def stamped(*args, **kwargs):
        s = real(*args, **kwargs)
        if hold[0] and threading.current_thread().name == "gcalloc-rssmonitor":
            hold[0] = False
            if not mon._cond._is_owned():         # held under the lock it would block mark()
                held[0] = True
                entered.set()
                release.wait(HANG)
            entered.set()
        return s

    monkeypatch.setattr(gcalloc.observe, "Sample", stamped)
    with gcalloc.Heap(-1, scavenger=False, debug="") as heap:
        mon = RSSMonitor(heap, interval=0.001)
        with mon:
            mon.mark("first")
            hold[0] = True
            assert entered.wait(HANG)             # the next background sample was stamped
            mon.mark("second")
            release.set()
            assert mon.wait_for(len(mon.samples) + 2, timeout=HANG)
        samples = mon.samples
    times = [s.t for s in samples]
    assert times == sorted(times)
    phases = [s.phase for s in samples]
    second = phases.index("second")
    assert all(p == "second" for p in phases[second:]), phases


def test_sample_carries_memstats_and_process_memory():
    with gcalloc.Heap(-1, scavenger=False, debug="") as heap:
        heap.alloc(3 * MIB, noscan=True)
        heap.collect()
        mon = RSSMonitor(heap, interval=1.0)
        s = mon.sample("now")
        ms = heap.read_memstats()
    for name in HEAP_FIELDS:
        assert getattr(s, name) == getattr(ms, name)
    assert s.phase == "now" and s.num_gc == 1
    assert isinstance(s, Sample) and set(s.as_dict()) >= set(HEAP_FIELDS) | {"rss", "uss", "t"}
    if sys.platform.startswith("linux"):
        assert s.uss is not None and 0 < s.uss <= s.rss


def test_closed_heap_and_no_heap_give_none_fields():
    heap = gcalloc.Heap(-1, scavenger=False, debug="")
    heap.close()
    for target in (heap, None):
        s = RSSMonitor(target, uss=False).sample()
        assert s.uss is None and s.rss > 0
        assert all(getattr(s, name) is None for name in HEAP_FIELDS)


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        RSSMonitor(None, interval=0)
