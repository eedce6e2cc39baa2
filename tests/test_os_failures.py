"""Every operation that takes memory from the OS is transactional: when any one of its OS calls
fails, it raises a named error (SysMemoryError or OutOfMemory), the heap still passes verify()
and goes on allocating and collecting, and close() gives every mapping back.

For each operation below a dry run counts its OS calls (``gcalloc.os.record_calls``); then, for
each k, a fresh heap set up the same way runs the operation with its k-th OS call failing
(``gcalloc.os.inject_nth_failure``). A ledger between gcalloc.os and the backend records every
reservation and mapping, so a leak of any size is seen exactly. The enumeration runs on the
running OS's backend and on the Windows backend over the kernel32 stand-in, where sys_used
really commits.

``PYTHONPATH=. python tests/test_os_failures.py`` prints, per operation and backend, how many
injections left a valid heap.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import gcalloc
import gcalloc.os as gos
from gcalloc.errors import HeapClosed, InjectedFailure, OutOfMemory, SysMemoryError
from gcalloc.os import _kernel32_standin as standin
from gcalloc.os.windows import WindowsMemory
from gcalloc.persistent import PERSISTENT_CHUNK_SIZE

MiB = 1 << 20
NAMED = (SysMemoryError, OutOfMemory)


class Ledger:
    """A backend wrapper remembering every range it reserved or mapped and not yet freed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.whole_release = inner.name == "windows"   # VirtualFree releases by base
        self.live: dict[int, int] = {}                 # base -> end

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def _add(self, p: int | None, n: int) -> None:
        if p is not None:
            self.live[p] = p + n

    def sys_reserve(self, hint: int | None, n: int) -> int | None:
        p = self.inner.sys_reserve(hint, n)
        self._add(p, n)
        return p

    def sys_reserve_aligned(self, hint: int | None, n: int, align: int) -> tuple[int | None, int]:
        p, size = self.inner.sys_reserve_aligned(hint, n, align)
        self._add(p, size)
        return p, size

    def sys_alloc(self, n: int, stat: Any) -> int | None:
        p = self.inner.sys_alloc(n, stat)
        self._add(p, n)
        return p

    def sys_free(self, v: int, n: int, stat: Any) -> None:
        self.inner.sys_free(v, n, stat)
        if self.whole_release:
            del self.live[v]
            return
        end = v + n
        for base, top in list(self.live.items()):
            if top <= v or base >= end:
                continue
            del self.live[base]
            if base < v:
                self.live[base] = v
            if top > end:
                self.live[end] = top

    def live_bytes(self) -> int:
        return sum(top - base for base, top in self.live.items())


def _make_inner(name: str) -> tuple[Any, Callable[[], list]]:
    """The backend and a function closing it that returns the reservations it still held."""
    if name == "native":
        return gos.backend, list
    k = standin.Kernel32StandIn()

    def close() -> list:
        left = k.reservations()
        k.close()
        return left

    return WindowsMemory(k, k.get_last_error), close


# --- the operations ---------------------------------------------------------------------------

def _garbage(heap: gcalloc.Heap) -> None:
    for n in (16, 48, 100, 700, 3000, 20000):
        for _ in range(50):
            heap.alloc(n)
    for _ in range(4):
        heap.alloc(200000)


def _little_garbage(heap: gcalloc.Heap) -> None:
    for n in (16, 48, 100, 700, 3000, 20000, 200000):
        for _ in range(3):
            heap.alloc(n)


def _released_span(heap: gcalloc.Heap) -> None:
    heap.alloc(16)
    heap.free(heap.alloc(300000))
    heap.scavenge(-1.0)


def _partly_released_span(heap: gcalloc.Heap) -> None:
    # The freed large span coalesces with the untouched (released) rest of the arena.
    heap.alloc(16)
    heap.free(heap.alloc(300000))


def _many_spans(heap: gcalloc.Heap) -> None:
    # One object per span: sweeping them needs more than one gcBits chunk of mark bits.
    for _ in range(4000):
        heap.alloc(8000)


def _many_typed_spans(heap: gcalloc.Heap) -> None:
    # Typed spans are swept one at a time (sweep.py's per-span path), each taking new bits.
    for _ in range(3000):
        heap.alloc(8000, ctypes.c_void_p * 1000)


def _unswept_typed_spans(heap: gcalloc.Heap) -> None:
    """Garbage in typed spans left unswept by an automatic (unforced) cycle: the next
    allocations of that class sweep them through mcentral."""
    _many_typed_spans(heap)
    heap.set_gc_percent(1)
    heap._gc.collect(forced=False)
    heap.set_gc_percent(-1)


def _alloc_typed_spans(heap: gcalloc.Heap, st: Any) -> None:
    _many_typed_spans(heap)


def _free_spans_apart(heap: gcalloc.Heap) -> None:
    """Several free spans, none fully released, kept apart by live ones."""
    heap.alloc(16)
    big = [heap.alloc(100000) for _ in range(8)]
    for p in big[::2]:
        heap.free(p)


def _alloc_until_os_call(heap: gcalloc.Heap, st: Any) -> None:
    """Allocate from a class whose mcache span fills up, until a refill needs the OS."""
    with gos.record_calls() as calls:
        for _ in range(100000):
            heap.alloc(48)
            if calls:
                return
    raise AssertionError("no OS call")


def _persistent_sys(heap: gcalloc.Heap) -> int:
    """Bytes persistentalloc has mapped for the heap's small records: grows by a chunk."""
    return heap._alloc.stats.other_sys.value + heap._alloc.stats.buckhash_sys.value


def _fill_persistent_chunk(heap: gcalloc.Heap) -> None:
    """Use up persistentalloc's current chunk, so that the next record needs a new one."""
    p = heap._alloc.persistent
    while p._off + 2048 <= PERSISTENT_CHUNK_SIZE:
        p.alloc(1024)


def _finalizer_targets(heap: gcalloc.Heap) -> list[int]:
    ps = [heap.alloc(64) for _ in range(100)]
    _fill_persistent_chunk(heap)
    return ps


def _set_finalizers(heap: gcalloc.Heap, ps: list[int]) -> None:
    """Set finalizers until their records take a new persistentalloc chunk."""
    before = _persistent_sys(heap)
    for p in ps:
        heap.set_finalizer(p, _no_op)
        if _persistent_sys(heap) != before:
            return
    raise AssertionError("no new persistentalloc chunk")


def _no_op(p: int) -> None:
    pass


def _sampled_history(heap: gcalloc.Heap) -> None:
    heap.alloc(16)
    _fill_persistent_chunk(heap)
    heap.mem_profile_rate = 1     # every allocation sampled


def _sampled_allocs(heap: gcalloc.Heap, st: Any) -> None:
    """Sampled allocations until their profile records take a new persistentalloc chunk."""
    before = _persistent_sys(heap)
    for i in range(100):
        heap.alloc(16 + i % 512)
        if _persistent_sys(heap) != before:
            return
    raise AssertionError("no new persistentalloc chunk")


@dataclass
class Op:
    name: str
    run: Callable[[gcalloc.Heap, Any], Any]
    setup: Callable[[gcalloc.Heap], Any] = lambda h: None
    debug: str = ""
    # OS functions whose failure the operation absorbs instead of raising (documented choice)
    absorbs: frozenset[str] = field(default_factory=frozenset)


# A failed reservation at an arena hint is not an error: the next hint, then anywhere, is tried.
HINT = frozenset({"sys_reserve"})
OPS = [
    Op("first alloc (heap growth from nothing)", lambda h, st: h.alloc(64), absorbs=HINT),
    Op("alloc small, first of its class", lambda h, st: h.alloc(48), lambda h: h.alloc(16)),
    Op("alloc large", lambda h, st: h.alloc(100000), lambda h: h.alloc(16)),
    Op("alloc refilling a full span", _alloc_until_os_call, lambda h: h.alloc(48)),
    Op("growth past an arena", lambda h, st: h.alloc(40 * MiB), lambda h: h.alloc(40 * MiB),
       absorbs=HINT),
    Op("growth by many arenas", lambda h, st: h.alloc(200 * MiB), lambda h: h.alloc(16),
       absorbs=HINT),
    Op("alloc reusing a scavenged span", lambda h, st: h.alloc(300000), _released_span),
    Op("alloc from a partly released span", lambda h, st: h.alloc(50000),
       _partly_released_span),
    Op("collect", lambda h, st: h.collect(), _garbage),
    Op("collect over many spans", lambda h, st: h.collect(), _many_spans),
    Op("collect over many typed spans", lambda h, st: h.collect(), _many_typed_spans),
    Op("alloc sweeping unswept spans", _alloc_typed_spans, _unswept_typed_spans),
    Op("free_os_memory", lambda h, st: h.free_os_memory(), _garbage),
    Op("scavenge", lambda h, st: h.scavenge(-1.0), _partly_released_span),
    Op("scavenge several spans", lambda h, st: h.scavenge(-1.0), _free_spans_apart),
    Op("set_finalizer", _set_finalizers, _finalizer_targets),
    Op("heap profile samples", _sampled_allocs, _sampled_history),
    Op("root range", lambda h, st: h.add_root_range(ctypes.addressof(st), 64),
       lambda h: (ctypes.c_uint64 * 8)()),
    Op("efence alloc", lambda h, st: h.alloc(48), lambda h: h.alloc(16), debug="efence=1"),
    Op("efence free", lambda h, st: h.free(st), lambda h: h.alloc(48), debug="efence=1",
       absorbs=frozenset({"sys_fault"})),
    Op("efence collect", lambda h, st: h.collect(), _little_garbage, debug="efence=1",
       absorbs=frozenset({"sys_fault"})),
    Op("close", lambda h, st: h.close(), _garbage),
]
CONSTRUCTION = "Heap() construction"


def _heap(op: Op) -> gcalloc.Heap:
    h = gcalloc.Heap(-1, scavenger=False, debug=op.debug)
    h.mem_profile_rate = 0     # no random samples: the dry run and the injections must agree
    return h


def _after(heap: gcalloc.Heap) -> None:
    """The heap is valid and usable after a failed operation."""
    heap.verify()
    for fa in (heap._specials.finalizer_alloc, heap._specials.profile_alloc):
        # what the record allocator counts is what it took from persistentalloc
        assert fa.sys_bytes == fa._sys_stat.value, f"{fa!r} charged {fa._sys_stat!r}"
    heap.alloc(64)
    heap.alloc(100000)
    heap.collect()
    heap.verify()


@dataclass
class Outcome:
    k: int
    call: str
    problem: str | None   # None: the heap survived the failure as it must


def enumerate_op(op: Op | None, backend: str) -> list[Outcome]:
    """Fail each OS call of ``op`` (None: Heap() itself) in turn; what each failure left."""
    inner, close_backend = _make_inner(backend)
    ledger = Ledger(inner)
    old = gos.bind_backend(ledger)
    out = []
    try:
        calls = _dry_run(op)
        assert not ledger.live, "the dry run leaked"
        for k, call in enumerate(calls):
            problem = _inject(op, k)
            if ledger.live:
                problem = problem or f"{ledger.live_bytes():#x} bytes still mapped after close()"
                ledger.live.clear()   # do not charge the next injection with this one's leak
            out.append(Outcome(k, call, problem))
    finally:
        gos.clear_injected_failures()
        gos.bind_backend(old)
        left = close_backend()
    if left and not any(o.problem for o in out):
        out.append(Outcome(-1, "-", f"the backend still holds {left}"))
    return out


def _dry_run(op: Op | None) -> list[str]:
    if op is None:
        with gos.record_calls() as calls:
            h = gcalloc.Heap(-1, scavenger=False, debug="")
        h.close()
        return calls
    h = _heap(op)
    try:
        st = op.setup(h)
        with gos.record_calls() as calls:
            op.run(h, st)
    finally:
        h.close()
    return calls


def _inject(op: Op | None, k: int) -> str | None:
    h = None
    try:
        if op is None:
            gos.inject_nth_failure(k)
            try:
                h = gcalloc.Heap(-1, scavenger=False, debug="")
            except NAMED:
                gos.clear_injected_failures()
                if gos._bound.live:
                    return f"Heap() raised but left {gos._bound.live_bytes():#x} bytes mapped"
                h = gcalloc.Heap(-1, scavenger=False, debug="")
                _after(h)
                return None
            return "Heap() did not raise"
        h = _heap(op)
        st = op.setup(h)
        with gos.record_calls() as calls:
            gos.inject_nth_failure(k)
            try:
                op.run(h, st)
                raised = None
            except NAMED as e:
                raised = e
            finally:
                gos.clear_injected_failures()
        failed = calls[k] if k < len(calls) else None
        if raised is None and failed not in op.absorbs:
            return f"completed although {failed} failed" if failed else "call never made"
        if raised is None and failed == "sys_fault" and h._alloc.efence_unprotected != 1:
            return "an unprotected efence span was not counted"
        if op.name == "close":
            h.close()           # a failed close is finished by the next one
            with pytest.raises(HeapClosed):
                h.alloc(64)
        else:
            _after(h)
        return None
    except Exception as e:  # noqa: BLE001 - every way a heap can be left broken is an outcome
        return f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        gos.clear_injected_failures()
        if h is not None:
            try:
                h.close()
            except Exception:  # noqa: BLE001 - the caller's leak check says what it left
                pass


BACKENDS = ["native", "windows-standin"]
CASES = [(op.name, b) for op in OPS for b in BACKENDS] + [(CONSTRUCTION, b) for b in BACKENDS]


def _op_named(name: str) -> Op | None:
    return None if name == CONSTRUCTION else next(op for op in OPS if op.name == name)


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    yield
    gos.clear_injected_failures()


@pytest.mark.parametrize("name, backend", CASES)
def test_every_os_failure_leaves_a_valid_heap(name: str, backend: str) -> None:
    if backend == "windows-standin" and not standin.AVAILABLE:
        pytest.skip("the kernel32 stand-in needs POSIX mmap; on Windows native is kernel32")
    outcomes = enumerate_op(_op_named(name), backend)
    if name != "root range":     # a root range is bookkeeping only: no OS call to fail
        assert outcomes, f"{name}: the dry run made no OS call"
    bad = [f"call {o.k} ({o.call}): {o.problem}" for o in outcomes if o.problem]
    assert not bad, f"{name}: {len(bad)} of {len(outcomes)} failures broke the heap:\n" + \
        "\n".join(bad)


def test_reusing_a_released_span_commits_it_on_windows_and_a_refusal_keeps_it_free() -> None:
    """On the Windows backend sys_used is MEM_COMMIT: a scavenged span is decommitted, its
    reuse commits it again, and when that commit is refused the span stays free, still
    decommitted, and the next attempt succeeds."""
    if not standin.AVAILABLE:
        pytest.skip("the kernel32 stand-in needs POSIX mmap")
    k = standin.Kernel32StandIn()
    old = gos.bind_backend(WindowsMemory(k, k.get_last_error))
    try:
        with gcalloc.Heap(-1, scavenger=False, debug="") as h:
            h.alloc(16)
            p = h.alloc(300000)
            n = h.usable_size(p)
            h.free(p)
            h.scavenge(-1.0)
            assert not k.committed(p, n)
            gos.inject_failure("sys_used")
            with pytest.raises(SysMemoryError):
                h.alloc(300000)
            h.verify()
            assert not k.committed(p, n)
            assert h.alloc(300000) == p, "the released span was kept for reuse"
            assert k.committed(p, n)
            h.verify()
        assert not k.reservations()
    finally:
        gos.clear_injected_failures()
        gos.bind_backend(old)
        k.close()


if __name__ == "__main__":
    total = good = 0
    for name, backend in CASES:
        if backend == "windows-standin" and not standin.AVAILABLE:
            continue
        res = enumerate_op(_op_named(name), backend)
        ok = sum(o.problem is None for o in res)
        total += len(res)
        good += ok
        print(f"{name:40s} {backend:16s} {ok:3d}/{len(res):3d} valid")
        for o in res:
            if o.problem:
                print(f"    call {o.k} ({o.call}): {o.problem[:160]}")
    print(f"total: {good} of {total} injections left a valid heap")


class _RefusingStat(gos.SysMemStat):
    """A stat whose ``add`` fails, as a persistentalloc-backed one does when the OS refuses."""

    def add(self, n: int) -> None:
        raise OutOfMemory("refused")


def test_fixalloc_whose_chunk_is_refused_counts_no_chunk() -> None:
    from gcalloc.fixalloc import FixAlloc

    fa = FixAlloc(object, 48, None, _RefusingStat())
    with pytest.raises(OutOfMemory):
        fa.alloc()
    assert (fa.sys_bytes, fa.live, fa.inuse_bytes, fa.free_count) == (0, 0, 0, 0)
    fa._sys_stat = gos.SysMemStat()      # the OS gives memory again
    fa.alloc()
    assert fa.sys_bytes == fa._sys_stat.value == 16 << 10


def test_nth_failure_counts_every_function_and_record_calls_sees_them() -> None:
    n = 1 << 20
    gos.inject_nth_failure(2)
    with gos.record_calls() as calls:
        p = gos.sys_reserve(None, n)
        gos.sys_map(p, n, None)
        with pytest.raises(InjectedFailure):
            gos.sys_used(p, n)          # the third call of any function
        gos.sys_used(p, n)              # one failure only
        gos.sys_free(p, n, None)
    assert calls == ["sys_reserve", "sys_map", "sys_used", "sys_used", "sys_free"]
    gos.inject_nth_failure(0, ["sys_alloc"])
    q = gos.sys_reserve(None, n)        # not counted: only sys_alloc is
    assert q is not None
    gos.sys_free(q, n, None)
    assert gos.sys_alloc(n, None) is None
    with pytest.raises(ValueError):
        gos.inject_nth_failure(-1)
    with pytest.raises(ValueError):
        gos.inject_nth_failure(0, ["sys_mmap"])


_RLIMIT_CHILD = """
import resource, psutil, gcalloc
from gcalloc.errors import OutOfMemory
proc = psutil.Process()
before = proc.memory_info().vms
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (before + (6 << 30), hard))
for _ in range(3):
    try:
        gcalloc.Heap(-1, scavenger=False, debug="")
    except OutOfMemory:
        pass
    else:
        raise SystemExit("Heap() fitted in 6 GiB of address space")
leaked = proc.memory_info().vms - before
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
with gcalloc.Heap(-1, scavenger=False, debug="") as h:
    h.alloc(100)
    h.verify()
print(leaked)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS bounds mmap on Linux")
def test_heap_refused_by_rlimit_as_leaves_no_reservation() -> None:
    """A real refusal, not an injected one: under RLIMIT_AS a Heap() cannot reserve its
    ~8 GiB of metadata space, raises OutOfMemory, and gives back what it had reserved."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _RLIMIT_CHILD], capture_output=True,
                          text=True, timeout=120, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    leaked = int(proc.stdout.split()[-1])
    assert leaked < 64 * MiB, f"{leaked / MiB:.0f} MiB of address space kept by failed Heap()s"
