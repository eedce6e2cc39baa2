"""C threads as roots: the registry of C thread stop records, their suspension around a
collection, and their stacks as mark candidates (Boehm GC's pthread_stop_world.c and
pthread_support.c; MPS's mps_thread_reg; Go's signal-based preemption for safe points).

A C thread that uses a heap has a stop record (``gcalloc_stop``, 128 bytes, defined in
gcalloc/include/gcalloc_stop.h, which documents the state machine). ``CThreads`` owns the
records one Collector knows:

- ``add(addr)``: called on the owning thread from inside its first call into Python (capi's
  record allocation): the record gets the process-wide safety table and becomes IN_CALL; the
  thread's ``gcalloc_stop_register`` fills tid and stack bounds when the call returns to C.
- ``suspend_all()``: the world (Python side) is stopped. Every record but the collector's own
  gets the request bit, set atomically by the kernel (futex FUTEX_WAKE_OP with FUTEX_OP_OR:
  Python has no compare-and-swap of its own, and the thread's CASes expect the bit clear, so
  no transition slips through). A thread IN_CALL is stopped by that alone: it is in Python,
  and its ``gcalloc_stop_leave`` waits until the bit is cleared. A RUNNING thread gets the
  suspend signal (pthread_sigqueue, the record's address in si_value); its handler stops it
  where it holds no lock the collector needs, or declines and is asked again (Go's async
  safe points). The wait for answers is a futex wait on the record's ``ack``, the
  interpreter lock released; it is bounded by ``timeout`` (ThreadSuspendTimeout).
- ``candidates()``: the words of every stopped thread's stack [stack_lo, stack_hi) (the
  handler's frame holds the kernel's saved registers; a call's entry spills its callee-saved
  registers above stack_lo), plus the collector thread's own C frames above its call.
- ``publish(addr, p)``: a call's result, from the moment it is allocated until the thread
  has it in C (``gcalloc_stop_leave``), is in no frame anyone scans; the slow path stores it
  in the record's R_RESULT word (holding the collector's lock from the allocation on, so no
  cycle falls in between) and ``candidates()`` includes it.
- ``resume_all()``: clear the bit and wake (FUTEX_OP_ANDN plus the wake, one system call).

Locks (see docs/capi_threads.md, "hazards"): a stopped thread must hold no lock the collector
takes while threads are stopped. The handler refuses to stop a thread holding the interpreter
lock or interrupted inside libc, the loader, libffi, _ctypes or the interpreter (save at a
system-call instruction), and ``suspend_all`` holds the collector's ``quiesce`` locks while
it stops threads, so a thread that waits for the interpreter lock in the middle of gcalloc's
own Python code cannot be stopped holding one of them.

Invariants: ``_records`` holds every added, not yet reaped record, under ``lock``; between
``suspend_all`` and ``resume_all`` the records in ``_stopped`` carry the request bit and no
other record does; the table (process-wide, never freed) outlives every record.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

from gcalloc.addrspace import MEM64, word_index
from gcalloc.errors import (
    ConfigError,
    GcallocError,
    HeapClosed,
    InvalidArgument,
    ThreadSuspendTimeout,
)
from gcalloc.free import check_addr

# The record's layout (gcalloc_stop.h).
RECORD_SIZE = 128
_STATE, _MALLOCING, _PENDING, _ACK = 0, 4, 8, 12
_STACK_LO, _STACK_HI, _TID, _RESERVED = 16, 24, 32, 40
R_TABLE, R_DECLINED, R_PC, R_DEPTH, R_STOPS, R_RESULT, R_STACK_MIN = range(7)

UNREGISTERED, RUNNING, IN_CALL, SUSPEND_REQ, SUSPENDED, STOPPED_IN_CALL, EXITED = range(7)
STATE_MASK = 0xFF
REQUESTED = 0x100

STATE_NAMES = {UNREGISTERED: "UNREGISTERED", RUNNING: "RUNNING", IN_CALL: "IN_CALL",
               SUSPEND_REQ: "SUSPEND_REQ", SUSPENDED: "SUSPENDED",
               STOPPED_IN_CALL: "STOPPED_IN_CALL", EXITED: "EXITED"}

DEFAULT_TIMEOUT = 10.0
ENV_SIGNAL = "GCALLOC_SIG_SUSPEND"


# --- the suspend signal --------------------------------------------------------------------

def _default_signal() -> int:
    # A real-time signal: queued (never merged), carries si_value, used by neither CPython
    # nor Boehm GC (SIGPWR / SIGXCPU on Linux), so both collectors can share a process.
    return int(getattr(signal, "SIGRTMIN", 34)) + 7


def parse_signal(text: str) -> int:
    """A signal number from GCALLOC_SIG_SUSPEND's syntax: a number, a name (SIGPWR, USR2)
    or SIGRTMIN+n / SIGRTMAX-n. Raises ConfigError."""
    t = text.strip().upper()
    try:
        if t.lstrip("-").isdigit():
            n = int(t)
        else:
            if not t.startswith("SIG"):
                t = "SIG" + t
            base, sign, off = t, 1, 0
            for op in "+-":
                if op in t:
                    base, rest = t.split(op, 1)
                    sign, off = (1 if op == "+" else -1), int(rest)
            if base not in ("SIGRTMIN", "SIGRTMAX") and off:
                raise ValueError(text)
            n = int(getattr(signal, base)) + sign * off
    except (ValueError, AttributeError):
        raise ConfigError(f"{ENV_SIGNAL}={text!r}: not a signal number or name") from None
    names = ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGINT")
    forbidden = {int(getattr(signal, name)) for name in names if hasattr(signal, name)}
    top = int(getattr(signal, "SIGRTMAX", 64))
    if not 1 <= n <= top or n in forbidden:
        raise ConfigError(f"{ENV_SIGNAL}={text!r}: signal {n} cannot suspend threads")
    return n


_signal_cache: list[int] = []


def suspend_signal() -> int:
    """The process's suspend signal: GCALLOC_SIG_SUSPEND, else SIGRTMIN+7. Read once (the
    handler is installed once per process). Raises ConfigError."""
    if not _signal_cache:
        text = os.environ.get(ENV_SIGNAL)
        _signal_cache.append(_default_signal() if not text else parse_signal(text))
    return _signal_cache[0]


# --- libc, the futex, the safety table (Linux) --------------------------------------------

_FUTEX_WAIT_PRIVATE = 0 | 128
_FUTEX_WAKE_OP_PRIVATE = 5 | 128
_FUTEX_OP_OR, _FUTEX_OP_ANDN = 2, 3
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine if hasattr(os, "uname")
                                                else "", -1)


def _futex_op(op: int, oparg: int) -> int:
    # FUTEX_OP(op, oparg, FUTEX_OP_CMP_EQ, 0): the wake of uaddr2 is not used.
    return ((op & 0xF) << 28) | ((oparg & 0xFFF) << 12)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Table(ctypes.Structure):
    """gcalloc_stop_table (gcalloc_stop.h)."""
    _fields_ = [("magic", ctypes.c_uint32), ("installed", ctypes.c_int32),
                ("gil_check", ctypes.c_void_p), ("save_thread", ctypes.c_void_p),
                ("restore_thread", ctypes.c_void_p), ("nranges", ctypes.c_uint64),
                ("ranges", (ctypes.c_uint64 * 2) * 30)]


# Shared objects whose code may hold a lock the collector (Python code) needs: the C library
# (malloc, stdio, pthread), the loader, libffi and ctypes (callback entry), the interpreter.
_UNSAFE_TEXT = ("libc.so", "libc-", "libpthread", "ld-linux", "ld-musl", "libffi",
                "_ctypes", "libpython")


def _unsafe_ranges() -> list[tuple[int, int]]:
    exe = os.path.realpath(sys.executable)
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or "x" not in fields[1]:
                continue
            path = fields[5]
            name = os.path.basename(path)
            if path == exe or any(name.startswith(p) for p in _UNSAFE_TEXT):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                out.append((lo, hi))
    return out


class _Libc:
    """The few libc calls the collector makes, resolved once (resolving a symbol while
    threads are stopped could wait on the loader's lock)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.sigqueue = libc.pthread_sigqueue
        self.sigqueue.argtypes = [ctypes.c_ulong, ctypes.c_int, ctypes.c_void_p]
        self.sigqueue.restype = ctypes.c_int
        self.syscall = libc.syscall
        self.syscall.restype = ctypes.c_long
        self.pthread_self = libc.pthread_self
        self.pthread_self.restype = ctypes.c_ulong
        # The address of a local of dl_iterate_phdr's frame (the info struct it passes its
        # callback): a stack address below every frame of the calling thread.
        self._phdr = libc.dl_iterate_phdr
        phdr_cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                                   ctypes.c_void_p)
        self._phdr.argtypes = [phdr_cb, ctypes.c_void_p]
        self._sp_box = [0]

        def here(info: int | None, size: int, data: int | None) -> int:
            self._sp_box[0] = info or 0
            return 1     # stop after the first object

        self._phdr_cb = phdr_cb(here)
        self.timeout = _Timespec(0, 1_000_000)     # a wait step: 1 ms
        self.timeout_ref = ctypes.byref(self.timeout)
        api = ctypes.pythonapi
        table = _Table()
        table.magic = 0x54534347
        table.gil_check = ctypes.cast(api.PyGILState_Check, ctypes.c_void_p).value
        table.save_thread = ctypes.cast(api.PyEval_SaveThread, ctypes.c_void_p).value
        table.restore_thread = ctypes.cast(api.PyEval_RestoreThread, ctypes.c_void_p).value
        ranges = _unsafe_ranges()[:30]
        table.nranges = len(ranges)
        for i, (lo, hi) in enumerate(ranges):
            table.ranges[i][0], table.ranges[i][1] = lo, hi
        self.table = table
        self.table_addr = ctypes.addressof(table)

    def stack_address(self) -> int:
        """An address in the calling thread's stack below all of its current frames."""
        self._sp_box[0] = 0
        self._phdr(self._phdr_cb, None)
        return self._sp_box[0]

    def futex_rmw(self, addr: int, op: int, oparg: int) -> None:
        """*addr = *addr OP oparg, atomically (the kernel's locked instruction), and wake
        every waiter on addr."""
        self.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr),
                     ctypes.c_int(_FUTEX_WAKE_OP_PRIVATE), ctypes.c_int(0x7FFFFFFF),
                     ctypes.c_void_p(0x7FFFFFFF), ctypes.c_void_p(addr),
                     ctypes.c_int(_futex_op(op, oparg)))

    def futex_wait(self, addr: int, expected: int) -> None:
        """Wait (at most one step) while the 32-bit word at addr is ``expected``; the
        interpreter lock is released meanwhile (a CDLL call)."""
        self.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr),
                     ctypes.c_int(_FUTEX_WAIT_PRIVATE), ctypes.c_int(expected),
                     self.timeout_ref, ctypes.c_void_p(0), ctypes.c_int(0))


_libc_cache: list[_Libc] = []


def _libc() -> _Libc:
    if not _libc_cache:
        if not sys.platform.startswith("linux") or _SYS_FUTEX < 0:
            raise GcallocError("C thread stacks as roots need Linux on x86-64 or aarch64")
        _libc_cache.append(_Libc())
    return _libc_cache[0]


# --- one record ------------------------------------------------------------------------------

def _i32(addr: int) -> int:
    return ctypes.c_int32.from_address(addr).value


def _u64(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def _set_i32(addr: int, v: int) -> None:
    ctypes.c_int32.from_address(addr).value = v


def _set_u64(addr: int, v: int) -> None:
    ctypes.c_uint64.from_address(addr).value = v


def describe(addr: int) -> str:
    """A record as text (for errors and debugging)."""
    st = _i32(addr + _STATE)
    name = STATE_NAMES.get(st & STATE_MASK, str(st & STATE_MASK))
    req = "|REQUESTED" if st & REQUESTED else ""
    return (f"record {addr:#x} (thread {_u64(addr + _TID):#x}, {name}{req}, "
            f"declined {_u64(addr + _RESERVED + 8 * R_DECLINED)}, "
            f"last pc {_u64(addr + _RESERVED + 8 * R_PC):#x})")


class _Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...
    def release(self) -> None: ...


class CThreads:
    """The C thread records of one Collector (see the module comment).

    ``quiesce``: locks the collector takes while threads are stopped and that a thread may
    hold outside gcalloc's safepoint regions; held while the threads are being stopped.
    ``on_reap(addr)`` (set by capi) runs with the world stopped for each record whose thread
    exited, before the record is forgotten. ``on_close()`` (set by capi) runs in close()
    with every C thread stopped, before they are resumed."""

    def __init__(self, quiesce: Iterable[_Lock] = ()) -> None:
        self.lock = threading.Lock()
        self.quiesce = list(quiesce)
        self.on_reap: Callable[[int], None] | None = None
        self.on_close: Callable[[], None] | None = None
        self.timeout = DEFAULT_TIMEOUT
        self.closed = False
        self._records: list[int] = []
        self._stopped: list[int] | None = None   # while suspended: the records with the bit
        self._me = 0                             # the stopper's pthread_t
        self._own_lo: dict[int, int] = {}        # the stopper's RUNNING records: where
                                                 # its current frames start
        # Figures of the last stop (bench/bench_cthreads.py, docs/capi_threads.md).
        self.last_signalled = 0
        self.last_in_call = 0
        self.last_resent = 0
        self.last_suspend_ns = 0
        self.last_words: list[int] = []
        self.last_scan_ns = 0

    # --- registry ----------------------------------------------------------------------

    def add(self, record_addr: int) -> None:
        """Register the stop record at record_addr (128 bytes, 8-aligned, mapped outside any
        heap, alive until ``on_reap``). Called on the owning thread while it is inside a call
        (see the module comment). Raises InvalidArgument, HeapClosed, GcallocError (not
        Linux)."""
        addr = check_addr(record_addr)
        if addr <= 0 or addr % 8:
            raise InvalidArgument(f"a stop record must be 8-byte aligned, not {addr:#x}")
        libc = _libc()
        with self.lock:
            if self.closed:
                raise HeapClosed("heap is closed")
            if addr in self._records:
                raise InvalidArgument(f"stop record {addr:#x} is registered already")
            _set_u64(addr + _RESERVED + 8 * R_TABLE, libc.table_addr)
            if _i32(addr + _STATE) & STATE_MASK == UNREGISTERED:
                # Not yet visible to any collector, and its thread is inside its call, in
                # Python: plain stores. gcalloc_stop_register leaves the call.
                _set_u64(addr + _TID, libc.pthread_self())
                st = IN_CALL
                if self._stopped is not None:
                    # A stop is in progress: the thread waits in register like the others.
                    st |= REQUESTED
                    self._stopped.append(addr)
                _set_i32(addr + _STATE, st)
            # A record registered in C first (its thread may be running) keeps its state,
            # which only its thread changes: it is stopped from the next cycle on.
            self._records.append(addr)

    @staticmethod
    def publish(record_addr: int, p: int) -> None:
        """Make p (the object a call into Python is about to return to C) a root until the
        thread's ``gcalloc_stop_leave``. Call it holding the collector's lock since before p
        was allocated: a cycle between the two would not see p."""
        _set_u64(record_addr + _RESERVED + 8 * R_RESULT, p)

    def records(self) -> list[int]:
        """The live (not yet reaped) record addresses."""
        with self.lock:
            return list(self._records)

    # --- stopping ---------------------------------------------------------------------

    def suspend_all(self) -> None:
        """Stop every registered C thread but the caller's (the world is stopped). Raises
        ThreadSuspendTimeout if a thread neither stops nor enters a call within
        ``timeout`` seconds (every thread is resumed first)."""
        if self._stopped is not None:
            raise GcallocError("suspend_all: the C threads are stopped already")
        self._reap()
        if not self._records:
            return
        libc = _libc()
        t0 = time.perf_counter_ns()
        deadline = time.monotonic() + self.timeout
        held: list[_Lock] = []
        try:
            held = self._take_quiesce(deadline)
            self._me = libc.pthread_self()
            with self.lock:
                self._stopped = stopped = [a for a in self._records
                                           if _u64(a + _TID) != self._me]
                own = [a for a in self._records if _u64(a + _TID) == self._me]
            for a in own:
                # The collector's own thread, registered but not inside a gcalloc call:
                # collecting from a callback of its own C code, whose frames hold roots.
                if _i32(a + _STATE) & STATE_MASK == RUNNING:
                    self._own_lo[a] = libc.stack_address()
            waiting = []
            for a in stopped:
                libc.futex_rmw(a + _STATE, _FUTEX_OP_OR, REQUESTED)
                if _i32(a + _STATE) & STATE_MASK in (RUNNING, SUSPEND_REQ):
                    waiting.append(a)
            self.last_in_call = len(stopped) - len(waiting)
            self.last_signalled = len(waiting)
            self.last_resent = 0
            for a in waiting:
                self._wait_stopped(libc, a, deadline)
        except BaseException:
            self.resume_all()
            raise
        finally:
            for lk in reversed(held):
                lk.release()
        self.last_suspend_ns = time.perf_counter_ns() - t0

    def _take_quiesce(self, deadline: float) -> list[_Lock]:
        """Hold every quiesce lock: all at once or none (released and tried again), so that
        no order in which other code nests them can deadlock with this."""
        while True:
            held: list[_Lock] = []
            for lk in self.quiesce:
                if not lk.acquire(blocking=False):
                    break
                held.append(lk)
            else:
                return held
            for lk in reversed(held):
                lk.release()
            if time.monotonic() > deadline:
                raise ThreadSuspendTimeout(f"suspend_all: a collector lock stayed held for "
                                           f"{self.timeout} s")
            time.sleep(0.0001)    # let the holder (which needs the interpreter) go on

    def _wait_stopped(self, libc: _Libc, a: int, deadline: float) -> None:
        """Signal record a's thread until it is stopped (in the handler, in fast_end or in a
        call it entered meanwhile) or gone."""
        sig = suspend_signal()
        sent = sent_ack = 0
        while True:
            ack = _i32(a + _ACK)
            st = _i32(a + _STATE)
            low = st & STATE_MASK
            if low in (SUSPENDED, IN_CALL, EXITED, UNREGISTERED):
                return
            if low == RUNNING and (sent == 0 or ack != sent_ack):
                # First signal, or the handler declined (an unsafe point): ask again, after
                # one wait step so the thread can leave the unsafe point.
                if sent:
                    libc.futex_wait(a + _ACK, ack)
                sent_ack = ack
                err = libc.sigqueue(_u64(a + _TID), sig, a)
                if err:     # ESRCH: the thread ended without gcalloc_stop_exited
                    _set_i32(a + _STATE, EXITED | REQUESTED)
                    return
                sent += 1
                self.last_resent += sent > 1
            if time.monotonic() > deadline:
                raise ThreadSuspendTimeout(
                    f"a C thread did not stop within {self.timeout} s: {describe(a)}; "
                    f"{sent} signals ({signal_name(sig)}) sent. Is the signal blocked, or "
                    f"is the thread spinning inside libc or the interpreter?")
            libc.futex_wait(a + _ACK, ack)

    def resume_all(self) -> None:
        """Restart every thread suspend_all stopped (a no-op when none is)."""
        with self.lock:      # add() appends to the list under it: none slips past
            stopped, self._stopped = self._stopped, None
            self._own_lo.clear()
        if not stopped:
            return
        libc = _libc()
        for a in stopped:
            libc.futex_rmw(a + _STATE, _FUTEX_OP_ANDN, REQUESTED)

    def _reap(self) -> None:
        with self.lock:
            dead = [a for a in self._records if _i32(a + _STATE) & STATE_MASK == EXITED]
            for a in dead:
                self._records.remove(a)
        for a in dead:
            if self.on_reap is not None:
                self.on_reap(a)

    # --- for the marker --------------------------------------------------------------

    def candidates(self) -> np.ndarray:
        """The words of every stopped thread's stack [stack_lo, stack_hi) as uint64
        candidate pointers (the collector's extra_roots), and of the collector's own stack
        above its call when it collects from inside one."""
        t0 = time.perf_counter_ns()
        parts = []
        words = []
        with self.lock:
            records = list(self._records)
        results = [_u64(a + _RESERVED + 8 * R_RESULT) for a in records]
        results = [p for p in results if p]
        if results:
            parts.append(np.array(results, dtype=np.uint64))
        if self._stopped is None:
            stopped = []
        else:
            stopped = list(self._stopped) + [a for a in records if _u64(a + _TID) == self._me]
        for a in stopped:
            low = _i32(a + _STATE) & STATE_MASK
            if low == RUNNING and a in self._own_lo:
                lo = self._own_lo[a]
            elif low in (SUSPENDED, IN_CALL):
                lo = _u64(a + _STACK_LO)
            else:
                continue
            hi = _u64(a + _STACK_HI)
            if not lo or not hi or not _u64(a + _RESERVED + 8 * R_STACK_MIN) <= lo < hi:
                # Not registered yet (its first call: no C frame known), or stopped on a
                # stack of its own making (a coroutine's), which only its owner could name.
                continue
            lo &= ~7
            parts.append(MEM64[word_index(lo):word_index(hi)])
            words.append((hi - lo) >> 3)
        self.last_words = words
        out = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        self.last_scan_ns = time.perf_counter_ns() - t0
        return out

    # --- close -------------------------------------------------------------------------

    def close(self) -> None:
        """The heap closes (its world stopped for good): stop the C threads, let ``on_close``
        empty what they could touch, forget every record and resume them; later ``add``
        calls raise HeapClosed. Idempotent."""
        if self.closed:
            return
        try:
            if self._stopped is None:
                self.suspend_all()
        finally:
            try:
                # Even when a thread would not stop (ThreadSuspendTimeout): the api must
                # close, or C would go on allocating from a closed heap.
                if self.on_close is not None:
                    self.on_close()
            finally:
                with self.lock:
                    self.closed = True
                    self._records.clear()
                self.resume_all()


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        rtmin = int(getattr(signal, "SIGRTMIN", 34))
        return f"SIGRTMIN+{sig - rtmin}" if sig >= rtmin else str(sig)
