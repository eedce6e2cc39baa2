"""The C thread protocol: gcalloc_stop.h and gcalloc/gc/cthreads.py, from a C harness.

tests/capi/cthreads_harness.c (compiled with gcc, including only gcalloc_stop.h) registers
threads the way gcalloc.h does (a ctypes callback for the first call, which adds the record,
then gcalloc_stop_register) and runs the states a thread can be in when another collects:
its own C code, the fast path's bracket, a blocked system call, back in Python, a blocked
suspend signal; plus the registry (reaping, close, bad records, a record added during a stop)
and the signal's configuration. The data-structure tests (C locals as roots: list, tree,
reversal, with their negative controls) go through the real header in test_capi_roots.py.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import gcalloc
from gcalloc.errors import ConfigError, HeapClosed, InvalidArgument, ThreadSuspendTimeout
from gcalloc.gc import cthreads as ct

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="C thread suspension is Linux-only")

HERE = Path(__file__).parent
INCLUDE = Path(gcalloc.__file__).parent / "include"
HANG = 120.0     # hang guard for joins and condition waits (seconds)

ADD = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
REC = ctypes.c_uint64 * 16      # 128 bytes, 8-aligned, outside every heap


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no C compiler (gcc) on this machine")
    out = tmp_path_factory.mktemp("cthreads") / "harness.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-D_GNU_SOURCE",
                    f"-I{INCLUDE}", str(HERE / "cthreads_harness.c"), "-o", str(out),
                    "-lpthread"], check=True)
    L = ctypes.CDLL(str(out))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    L.h_attach.argtypes, L.h_attach.restype = [p, ADD, i32], i32
    L.h_detach.argtypes, L.h_detach.restype = [p], None
    L.h_fast_loop.argtypes, L.h_fast_loop.restype = [p, p, p], i64
    L.h_spin.argtypes, L.h_spin.restype = [p], i64
    L.h_sleep.argtypes, L.h_sleep.restype = [p], i64
    L.h_block_signal.argtypes, L.h_block_signal.restype = [i32], i32
    L.h_unblock_signal.argtypes, L.h_unblock_signal.restype = [i32], i32
    L.h_fast_hold.argtypes, L.h_fast_hold.restype = [p, p, p], i64
    return L


class Harness:
    """Records and the add() callback for one heap (kept alive as long as the heap)."""

    def __init__(self, lib, heap: gcalloc.Heap) -> None:
        self.lib, self.heap = lib, heap
        self.records: list = []
        self.errors: list[BaseException] = []

        def add(addr: int) -> None:
            try:
                heap._gc.cthreads.add(addr)
            except BaseException as e:   # reported by the test, not lost in ctypes
                self.errors.append(e)

        self.add = ADD(add)

    def attach(self) -> int:
        """Register the calling thread with a fresh record; its address."""
        r = REC()
        self.records.append(r)
        assert self.lib.h_attach(ctypes.addressof(r), self.add, ct.suspend_signal()) == 0
        assert not self.errors, self.errors
        return ctypes.addressof(r)


# --- the protocol ----------------------------------------------------------------------

def _state(addr: int) -> int:
    return ctypes.c_int32.from_address(addr).value


def _reserved(addr: int, i: int) -> int:
    return ctypes.c_uint64.from_address(addr + 40 + 8 * i).value


def _spinning_threads(lib, h: Harness, n: int, fn, stop: ctypes.c_int32, slots) -> list:
    """n threads registered and looping in C (fn(record, stop, slot) or fn(stop))."""
    ready = threading.Barrier(n + 1, timeout=HANG)
    records: list[int] = [0] * n

    def body(i: int) -> None:
        r = h.attach()
        records[i] = r
        ready.wait()
        try:
            if slots is None:
                fn(ctypes.addressof(stop))
            else:
                fn(r, ctypes.addressof(stop), ctypes.addressof(slots) + 8 * i)
        finally:
            lib.h_detach(r)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    return threads, records


def test_threads_blocked_in_a_system_call_are_stopped(lib, heap):
    """A thread blocked in nanosleep (in libc, between gcalloc calls) is stopped at its
    interrupted system call, and the call goes on after."""
    h = Harness(lib, heap)
    stop = ctypes.c_int32(0)
    states: list[int] = []
    threads, records = _spinning_threads(lib, h, 1, lib.h_sleep, stop, None)
    heap._gc.after_mark.append(lambda marker: states.append(_state(records[0])))
    try:
        for _ in range(3):
            heap.collect()
    finally:
        stop.value = 1
        threads[0].join(HANG)
    assert not threads[0].is_alive()
    assert states == [ct.SUSPENDED | ct.REQUESTED] * 3
    heap.verify()


def test_threads_between_calls_are_stopped_while_marking(lib, heap):
    """Threads running their own C code (the fast path's bracket, in a loop) are stopped
    for the whole mark: the word each one keeps storing does not move while the collector
    looks, and each record says SUSPENDED (in the handler or in fast_end)."""
    h = Harness(lib, heap)
    stop = ctypes.c_int32(0)
    slots = (ctypes.c_uint64 * 3)()
    seen: list[tuple[list[int], list[int], list[int]]] = []
    threads, records = _spinning_threads(lib, h, 3, lib.h_fast_loop, stop, slots)

    def during_mark(marker) -> None:
        before = list(slots)
        states = [_state(r) for r in records]
        for _ in range(20000):      # the threads would store millions of values meanwhile
            pass
        seen.append((before, list(slots), states))

    heap._gc.after_mark.append(during_mark)
    try:
        for _ in range(5):
            heap.collect()
    finally:
        stop.value = 1
        for t in threads:
            t.join(HANG)
    assert not any(t.is_alive() for t in threads)
    assert len(seen) == 5
    for before, after, states in seen:
        assert before == after
        assert states == [ct.SUSPENDED | ct.REQUESTED] * 3
    # A thread not yet run again when the next cycle asks is still stopped from the last.
    assert all(1 <= _reserved(r, ct.R_STOPS) <= 5 for r in records)
    assert all(_state(r) == ct.EXITED for r in records)
    heap.verify()


def test_registered_threads_back_in_python_are_stopped_without_deadlock(lib, heap):
    """Threads registered from C and then running Python (allocating, taking and dropping
    roots: gcalloc's own locks) while this thread collects: every cycle completes (the
    handler declines while a thread holds the interpreter lock; the quiesce locks keep a
    stopped thread from holding the root table's or the page heap's)."""
    h = Harness(lib, heap)
    stop = threading.Event()
    ready = threading.Barrier(3, timeout=HANG)
    done: list[int] = []

    def body() -> None:
        r = h.attach()
        ready.wait()
        n = 0
        while not stop.is_set():
            hd = heap.new(ctypes.c_uint64 * 8)     # rooted from the allocation on
            heap.add_root(hd.addr)
            heap.remove_root(hd.addr)
            hd.release()
            n += sum(range(50)) > 0
        done.append(n)
        lib.h_detach(r)

    threads = [threading.Thread(target=body) for _ in range(2)]
    for t in threads:
        t.start()
    ready.wait()
    try:
        for _ in range(10):
            heap.collect()
    finally:
        stop.set()
        for t in threads:
            t.join(HANG)
    assert not any(t.is_alive() for t in threads) and len(done) == 2
    assert heap.read_memstats().num_gc >= 10
    heap.verify()


def test_a_signal_inside_the_fast_path_waits_for_fast_end(lib, heap):
    """The handler finds mallocing set: the record goes SUSPEND_REQ (pending) and the
    collection waits; once the thread leaves the bracket, fast_end stops it, and it stays
    stopped through the mark."""
    h = Harness(lib, heap)
    release, stop = ctypes.c_int32(0), ctypes.c_int32(0)
    ready = threading.Event()
    rec: list[int] = []
    during: list[int] = []

    def body() -> None:
        r = h.attach()
        rec.append(r)
        ready.set()
        lib.h_fast_hold(r, ctypes.addressof(release), ctypes.addressof(stop))
        lib.h_detach(r)

    t = threading.Thread(target=body)
    t.start()
    assert ready.wait(HANG)
    guard = time.monotonic() + HANG
    while ctypes.c_int32.from_address(rec[0] + 4).value == 0:   # mallocing: in the bracket
        assert time.monotonic() < guard
        time.sleep(0.001)
    heap._gc.after_mark.append(lambda marker: during.append(_state(rec[0])))
    collector = threading.Thread(target=heap.collect)
    collector.start()
    while _state(rec[0]) != ct.SUSPEND_REQ | ct.REQUESTED:
        assert time.monotonic() < guard and collector.is_alive(), _state(rec[0])
        time.sleep(0.001)
    assert during == []                   # the collection is waiting for the thread
    release.value = 1
    collector.join(HANG)
    stop.value = 1
    t.join(HANG)
    assert not collector.is_alive() and not t.is_alive()
    assert during == [ct.SUSPENDED | ct.REQUESTED]
    assert _reserved(rec[0], ct.R_STOPS) == 1
    heap.verify()


def test_exited_records_are_reaped_at_the_next_stop(lib, heap):
    h = Harness(lib, heap)
    reaped: list[int] = []
    heap._gc.cthreads.on_reap = reaped.append
    r = h.attach()
    heap.collect()
    assert heap._gc.cthreads.records() == [r] and reaped == []
    lib.h_detach(r)
    assert _state(r) == ct.EXITED
    heap.collect()
    assert reaped == [r]
    assert heap._gc.cthreads.records() == []


def test_a_thread_that_blocks_the_signal_times_out_cleanly(lib, heap):
    """A thread that never answers makes the collection raise (no hang), every other
    thread resumed; once it is gone the heap collects again."""
    h = Harness(lib, heap)
    heap._gc.cthreads.timeout = 0.5
    stop = ctypes.c_int32(0)
    sig = ct.suspend_signal()
    ready = threading.Event()
    out: list[int] = []

    def body() -> None:
        r = h.attach()
        lib.h_block_signal(sig)
        ready.set()
        out.append(lib.h_spin(ctypes.addressof(stop)))
        lib.h_unblock_signal(sig)        # the queued signal is stale now: ignored
        lib.h_detach(r)

    t = threading.Thread(target=body)
    t.start()
    assert ready.wait(HANG)
    with pytest.raises(ThreadSuspendTimeout, match="did not stop"):
        heap.collect()
    stop.value = 1
    t.join(HANG)
    assert not t.is_alive() and out
    heap.collect()
    heap.verify()


def test_close_stops_running_c_threads_then_refuses_new_ones(lib):
    heap = gcalloc.Heap(-1, scavenger=False, debug="")
    h = Harness(lib, heap)
    stop = ctypes.c_int32(0)
    closed_with: list[list[int]] = []
    threads, records = _spinning_threads(lib, h, 2, lib.h_spin, stop, None)
    heap._gc.cthreads.on_close = lambda: closed_with.append([_state(r) for r in records])
    try:
        heap.close()
    finally:
        stop.value = 1
        for t in threads:
            t.join(HANG)
    assert closed_with == [[ct.SUSPENDED | ct.REQUESTED] * 2]
    assert [_state(r) for r in records] == [ct.EXITED] * 2
    with pytest.raises(HeapClosed):
        heap._gc.cthreads.add(ctypes.addressof(REC()))


def test_add_refuses_bad_records(heap):
    c = heap._gc.cthreads
    with pytest.raises(InvalidArgument):
        c.add("0x1000")
    with pytest.raises(InvalidArgument):
        c.add(ctypes.addressof(REC()) + 4)
    r = REC()
    c.add(ctypes.addressof(r))
    assert _state(ctypes.addressof(r)) == ct.IN_CALL
    with pytest.raises(InvalidArgument, match="already"):
        c.add(ctypes.addressof(r))
    assert c.records() == [ctypes.addressof(r)]


def test_a_record_added_during_a_stop_is_stopped_then_resumed(lib, heap):
    h = Harness(lib, heap)
    h.attach()               # a registered thread, so that the cycle stops threads at all
    late = REC()
    during: list[int] = []

    def add_now(marker) -> None:
        heap._gc.cthreads.add(ctypes.addressof(late))
        during.append(_state(ctypes.addressof(late)))

    heap._gc.after_mark.append(add_now)
    heap.collect()
    assert during == [ct.IN_CALL | ct.REQUESTED]
    assert _state(ctypes.addressof(late)) == ct.IN_CALL    # the bit went with the others


@pytest.mark.parametrize("text, want", [
    ("SIGRTMIN+3", None), ("41", 41), ("SIGUSR2", None), ("usr2", None), ("SIGPWR", None)])
def test_suspend_signal_syntax(text, want):
    import signal
    expect = {"SIGRTMIN+3": signal.SIGRTMIN + 3, "SIGUSR2": signal.SIGUSR2,
              "usr2": signal.SIGUSR2, "SIGPWR": signal.SIGPWR}.get(text, want)
    assert ct.parse_signal(text) == expect


@pytest.mark.parametrize("text", ["SIGKILL", "SIGSTOP", "bogus", "0", "1000", "SIGUSR1+2"])
def test_suspend_signal_refuses(text):
    with pytest.raises(ConfigError):
        ct.parse_signal(text)
