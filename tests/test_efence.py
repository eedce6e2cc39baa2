"""GCALLOC_DEBUG=efence=1 (gccgo's debug.efence): every object gets a span of its own, and a
freed span — by ``free`` or by the sweeper — is made inaccessible with sys_fault and never
reused, so a use after free faults at once.

The faulting runs in a child process, which must die of SIGSEGV (SIGBUS on macOS, an access
violation on Windows) right at the stale access; the same program without efence survives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gcalloc

ROOT = Path(__file__).resolve().parent.parent
FAULT_CODES = {-signal.SIGSEGV, -getattr(signal, "SIGBUS", signal.SIGSEGV),
               0xC0000005, -1073741819}   # Windows: STATUS_ACCESS_VIOLATION

CHILD = """
import ctypes, sys
import gcalloc

heap = gcalloc.Heap(-1, debug=sys.argv[1])
how = sys.argv[2]
size = 64 if how != "large" else 100_000
p = heap.alloc(size)
ctypes.c_uint64.from_address(p).value = 0x1234
assert ctypes.c_uint64.from_address(p).value == 0x1234
if how == "swept":
    heap.collect()              # unrooted: the sweeper frees it
else:
    heap.free(p)
print("freed", flush=True)
value = ctypes.c_uint64.from_address(p).value     # use after free
print("survived", value, flush=True)
"""


def run_child(debug: str, how: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("GCALLOC_DEBUG", None)
    env.pop("PYTHONFAULTHANDLER", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), debug, how],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("how", ["free", "swept", "large"])
def test_use_after_free_faults_under_efence(how):
    r = run_child("efence=1", how)
    assert r.stdout == "freed\n", (r.returncode, r.stdout, r.stderr)
    assert r.returncode in FAULT_CODES, (r.returncode, r.stderr)


@pytest.mark.parametrize("how", ["free", "swept"])
def test_same_program_survives_without_efence(how):
    r = run_child("", how)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("freed\nsurvived")


def test_every_object_gets_its_own_span_and_freed_spans_are_not_reused():
    with gcalloc.Heap(-1, debug="efence=1") as heap:
        assert heap._alloc.efence
        objs = [heap.alloc(n) for n in (8, 8, 24, 64, 64, 1000, 40_000)]
        tiny = [heap.alloc(4, noscan=True) for _ in range(3)]   # no tiny blocks either
        spans = [heap._alloc.mheap.span_of(p) for p in objs + tiny]
        assert len({id(s) for s in spans}) == len(spans)
        for p, s in zip(objs + tiny, spans, strict=True):
            assert heap.lookup(p) is not None and heap.lookup(p)[0] == p
            assert s.allocCount == 1
        heap.verify()
        freed = set(objs)
        for p in objs:
            heap.free(p)
        heap.collect()                       # the tiny objects die by sweep
        again = [heap.alloc(n) for n in (8, 24, 64, 1000, 40_000) for _ in range(4)]
        assert not freed.intersection(again)
        assert all(heap.lookup(p) is None for p in objs)
        heap.verify()


def test_efence_from_the_environment(monkeypatch):
    monkeypatch.setenv("GCALLOC_DEBUG", "efence=1")
    with gcalloc.Heap(-1) as heap:
        a, b = heap.alloc(16), heap.alloc(16)
        assert heap._alloc.mheap.span_of(a) is not heap._alloc.mheap.span_of(b)
    monkeypatch.setenv("GCALLOC_DEBUG", "")
    with gcalloc.Heap(-1) as heap:
        a, b = heap.alloc(16), heap.alloc(16)
        assert heap._alloc.mheap.span_of(a) is heap._alloc.mheap.span_of(b)
