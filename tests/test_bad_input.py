"""The bad-input table: every public call given bad input raises the exception README.md's
"What each public call raises" table names for it, and leaves a heap that verifies, still
allocates and collects, and still holds the objects it held.

Each case is a line of code run against a small heap (``h``, gc_percent=-1) holding a rooted
Structure (``node``, value 42) and a counted root (``p``, 64 bytes). Some of these inputs
used to crash the process (a root range at address 0 segfaulted the next collection), so the
cases run in a child process, batched: the child reports each case as one JSON line before it
starts the next, and if it dies the case it was running is recorded as a crash and a new
child goes on with the rest.

``test_readme_table_matches_cases`` parses the README's table and checks that every exception
a row names for a call is raised by some case of that call here, and that every case is
described by its row: the README and the code cannot drift apart.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

import gcalloc
from gcalloc import errors

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    row: str          # the README row's call: "alloc", "Heap", "mem_profile_rate", ...
    id: str
    code: str         # run with exec(); must raise
    raises: str       # a class of gcalloc.errors, or a built-in exception
    closed: bool = False           # run on a closed heap (then a fresh heap is checked)
    env: dict = field(default_factory=dict)
    subclass_ok: bool = False      # a subclass of ``raises`` passes too (OSError and kin)


C = Case
CASES = [
    # --- Heap(...) -----------------------------------------------------------------------
    C("Heap", "gc_percent-str", "gcalloc.Heap(gc_percent='x')", "InvalidArgument"),
    C("Heap", "gc_percent-float", "gcalloc.Heap(gc_percent=1.5)", "InvalidArgument"),
    C("Heap", "scavenger-str", "gcalloc.Heap(scavenger='yes')", "InvalidArgument"),
    C("Heap", "scavenger-int", "gcalloc.Heap(scavenger=1)", "InvalidArgument"),
    C("Heap", "debug-int", "gcalloc.Heap(debug=123)", "InvalidArgument"),
    C("Heap", "debug-no-equals", "gcalloc.Heap(debug='gctrace')", "ConfigError"),
    C("Heap", "debug-not-int", "gcalloc.Heap(debug='gctrace=yes')", "ConfigError"),
    C("Heap", "env-debug", "gcalloc.Heap()", "ConfigError",
      env={"GCALLOC_DEBUG": "verify=x"}),
    C("Heap", "env-gogc", "gcalloc.Heap()", "ConfigError", env={"GCALLOC_GOGC": "lots"}),
    C("Heap", "env-memlimit", "gcalloc.Heap()", "ConfigError",
      env={"GCALLOC_MEMLIMIT": "64MB"}),
    # --- alloc ---------------------------------------------------------------------------
    C("alloc", "negative", "h.alloc(-1)", "InvalidSize"),
    C("alloc", "too-large", "h.alloc(1 << 60)", "InvalidSize"),
    C("alloc", "str", "h.alloc('16')", "InvalidArgument"),
    C("alloc", "float", "h.alloc(16.0)", "InvalidArgument"),
    C("alloc", "bool", "h.alloc(True)", "InvalidArgument"),
    C("alloc", "not-multiple", "h.alloc(20, type=Node)", "InvalidSize"),
    C("alloc", "type-str", "h.alloc(16, type='Node')", "InvalidArgument"),
    C("alloc", "type-instance", "h.alloc(16, type=Node())", "InvalidArgument"),
    C("alloc", "empty-structure", "h.alloc(64, type=Empty)", "InvalidSize"),
    C("alloc", "zero-length-array", "h.alloc(64, type=ctypes.c_char * 0)", "InvalidSize"),
    C("alloc", "zero-size-Type", "h.alloc(64, type=gcalloc.Type(0))", "InvalidSize"),
    C("alloc", "structure-no-fields", "h.alloc(8, type=NoFields)", "InvalidType"),
    C("alloc", "unaligned-pointer", "h.alloc(16, type=Packed)", "InvalidType"),
    C("alloc", "unaligned-array", "h.alloc(24, type=gcalloc.Type(12, 1))", "InvalidType"),
    C("alloc", "out-of-memory", "h.alloc(1 << 40)", "OutOfMemory"),
    C("alloc", "closed", "h.alloc(16)", "HeapClosed", closed=True),
    # --- alloc_many ------------------------------------------------------------------------
    C("alloc_many", "negative-n", "h.alloc_many(16, -1)", "InvalidSize"),
    C("alloc_many", "negative-size", "h.alloc_many(-16, 4)", "InvalidSize"),
    C("alloc_many", "too-large", "h.alloc_many(1 << 40, 1 << 10)", "InvalidSize"),
    C("alloc_many", "not-multiple", "h.alloc_many(20, 4, type=Node)", "InvalidSize"),
    C("alloc_many", "n-float", "h.alloc_many(16, 4.0)", "InvalidArgument"),
    C("alloc_many", "size-str", "h.alloc_many('16', 4)", "InvalidArgument"),
    C("alloc_many", "type-str", "h.alloc_many(16, 4, type='Node')", "InvalidArgument"),
    C("alloc_many", "no-fields", "h.alloc_many(8, 4, type=NoFields)", "InvalidType"),
    C("alloc_many", "out-of-memory", "h.alloc_many(1 << 20, 1 << 20)", "OutOfMemory"),
    C("alloc_many", "closed", "h.alloc_many(16, 4)", "HeapClosed", closed=True),
    # --- new -----------------------------------------------------------------------------
    C("new", "n-zero", "h.new(Node, 0)", "InvalidSize"),
    C("new", "n-huge", "h.new(Node, 1 << 50)", "InvalidSize"),
    C("new", "n-str", "h.new(Node, '2')", "InvalidArgument"),
    C("new", "out-of-memory", "h.new(ctypes.c_char * (1 << 20), 1 << 20)", "OutOfMemory"),
    C("new", "ctype-str", "h.new('Node')", "InvalidArgument"),
    C("new", "no-fields", "h.new(NoFields)", "InvalidType"),
    C("new", "closed", "h.new(Node)", "HeapClosed", closed=True),
    # --- free ----------------------------------------------------------------------------
    C("free", "outside", "h.free(ctypes.addressof(buf))", "NotHeapPointer"),
    C("free", "interior", "h.free(p + 8)", "InteriorPointer"),
    C("free", "double", "q = h.alloc(64); h.free(q); h.free(q)", "DoubleFree"),
    C("free", "tiny", "h.free(h.alloc(4, noscan=True))", "TinyObjectFree"),
    C("free", "str", "h.free('p')", "InvalidArgument"),
    C("free", "closed", "h.free(p)", "HeapClosed", closed=True),
    # --- lookup, usable_size ---------------------------------------------------------------
    C("lookup", "float", "h.lookup(1.0)", "InvalidArgument"),
    C("lookup", "closed", "h.lookup(p)", "HeapClosed", closed=True),
    C("usable_size", "outside", "h.usable_size(ctypes.addressof(buf))", "NotHeapPointer"),
    C("usable_size", "interior", "h.usable_size(p + 8)", "InteriorPointer"),
    C("usable_size", "none", "h.usable_size(None)", "InvalidArgument"),
    C("usable_size", "closed", "h.usable_size(p)", "HeapClosed", closed=True),
    # --- handle ----------------------------------------------------------------------------
    C("handle", "outside", "h.handle(ctypes.addressof(buf))", "NotHeapPointer"),
    C("handle", "str-address", "h.handle('p')", "InvalidArgument"),
    C("handle", "ctype-str", "h.handle(p, 'str')", "InvalidArgument"),
    C("handle", "ctype-Type", "h.handle(p, gcalloc.Type(8))", "InvalidArgument"),
    C("handle", "ctype-too-big", "h.handle(p, ctypes.c_char * 4096)", "InvalidSize"),
    C("handle", "ctype-huge", "h.handle(p, ctypes.c_char * (1 << 30))", "InvalidSize"),
    C("handle", "ctype-no-fields", "h.handle(p, NoFields)", "InvalidType"),
    C("handle", "closed", "h.handle(p)", "HeapClosed", closed=True),
    # --- add_root, remove_root -------------------------------------------------------------
    C("add_root", "outside", "h.add_root(ctypes.addressof(buf))", "NotHeapPointer"),
    C("add_root", "str", "h.add_root('p')", "InvalidArgument"),
    C("add_root", "closed", "h.add_root(p)", "HeapClosed", closed=True),
    C("remove_root", "not-a-root", "h.remove_root(h.alloc(64))", "NotARoot"),
    C("remove_root", "outside", "h.remove_root(ctypes.addressof(buf))", "NotHeapPointer"),
    C("remove_root", "bytes", "h.remove_root(b'p')", "InvalidArgument"),
    C("remove_root", "closed", "h.remove_root(p)", "HeapClosed", closed=True),
    # --- add_root_range, remove_root_range ---------------------------------------------------
    C("add_root_range", "at-zero", "h.add_root_range(0, 64)", "InvalidRootRange"),
    C("add_root_range", "negative-address", "h.add_root_range(-4096, 64)",
      "InvalidRootRange"),
    C("add_root_range", "past-user-space", "h.add_root_range(1 << 47, 64)",
      "InvalidRootRange"),
    C("add_root_range", "precise-at-zero",
      "h.add_root_range(0, 16, conservative=False, type=Node)", "InvalidRootRange"),
    C("add_root_range", "unmapped", "h.add_root_range(unmapped, 4096)", "InvalidRootRange"),
    C("add_root_range", "prot-none", "h.add_root_range(noaccess, 4096)", "InvalidRootRange"),
    C("add_root_range", "runs-off-buffer", "h.add_root_range(unmapped - 64, 128)",
      "InvalidRootRange"),
    C("add_root_range", "heap-arena", "h.add_root_range(p, 64)", "InvalidRootRange"),
    C("add_root_range", "negative-size", "h.add_root_range(ctypes.addressof(buf), -8)",
      "InvalidSize"),
    C("add_root_range", "str-address", "h.add_root_range('buf', 64)", "InvalidArgument"),
    C("add_root_range", "precise-no-type",
      "h.add_root_range(ctypes.addressof(buf), 64, conservative=False)", "InvalidArgument"),
    C("add_root_range", "conservative-with-type",
      "h.add_root_range(ctypes.addressof(buf), 64, type=Node)", "InvalidArgument"),
    C("add_root_range", "precise-not-multiple",
      "h.add_root_range(ctypes.addressof(buf), 24, conservative=False, type=Node)",
      "InvalidSize"),
    C("add_root_range", "precise-unaligned",
      "h.add_root_range(ctypes.addressof(buf) + 4, 16, conservative=False, type=Node)",
      "InvalidSize"),
    C("add_root_range", "precise-no-fields",
      "h.add_root_range(ctypes.addressof(buf), 16, conservative=False, type=NoFields)",
      "InvalidType"),
    C("add_root_range", "closed", "h.add_root_range(ctypes.addressof(buf), 64)", "HeapClosed",
      closed=True),
    C("remove_root_range", "unknown-token", "h.remove_root_range(12345)", "NotARoot"),
    C("remove_root_range", "twice",
      "t = h.add_root_range(ctypes.addressof(buf), 64); h.remove_root_range(t); "
      "h.remove_root_range(t)", "NotARoot"),
    C("remove_root_range", "closed", "h.remove_root_range(1)", "HeapClosed", closed=True),
    # --- finalizers ------------------------------------------------------------------------
    C("set_finalizer", "not-callable", "h.set_finalizer(p, 42)", "FinalizerNotCallable"),
    C("set_finalizer", "outside", "h.set_finalizer(ctypes.addressof(buf), print)",
      "NotHeapPointer"),
    C("set_finalizer", "interior", "h.set_finalizer(p + 8, print)", "InteriorPointer"),
    C("set_finalizer", "twice", "h.set_finalizer(p, print); h.set_finalizer(p, print)",
      "FinalizerAlreadySet"),
    C("set_finalizer", "str-address", "h.set_finalizer('p', print)", "InvalidArgument"),
    C("set_finalizer", "closed", "h.set_finalizer(p, print)", "HeapClosed", closed=True),
    C("make_weak", "outside", "h.make_weak(ctypes.addressof(buf))", "NotHeapPointer"),
    C("make_weak", "freed", "q = h.alloc(64); h.free(q); h.make_weak(q)", "NotHeapPointer"),
    C("make_weak", "str", "h.make_weak('p')", "InvalidArgument"),
    C("make_weak", "closed", "h.make_weak(p)", "HeapClosed", closed=True),
    C("add_cleanup", "not-callable", "h.add_cleanup(p, 42, None)", "CleanupNotCallable"),
    C("add_cleanup", "arg-is-object", "h.add_cleanup(p, print, p + 8)", "CleanupArgIsObject"),
    C("add_cleanup", "arg-is-handle", "h.add_cleanup(node.addr, print, node)",
      "CleanupArgIsObject"),
    C("add_cleanup", "outside", "h.add_cleanup(ctypes.addressof(buf), print, 1)",
      "NotHeapPointer"),
    C("add_cleanup", "str", "h.add_cleanup('p', print, 1)", "InvalidArgument"),
    C("add_cleanup", "closed", "h.add_cleanup(p, print, 1)", "HeapClosed", closed=True),
    C("run_finalizers", "timeout-str", "h.run_finalizers(timeout='x')", "InvalidArgument"),
    C("run_finalizers", "timeout-negative", "h.run_finalizers(timeout=-1)", "InvalidSize"),
    C("run_finalizers", "timeout-nan", "h.run_finalizers(timeout=float('nan'))",
      "InvalidSize"),
    C("run_finalizers", "closed", "h.run_finalizers()", "HeapClosed", closed=True),
    # --- the heap profile ------------------------------------------------------------------
    C("mem_profile_rate", "str", "h.mem_profile_rate = '1'", "InvalidArgument"),
    C("mem_profile_rate", "negative", "h.mem_profile_rate = -1", "InvalidSize"),
    C("mem_profile_rate", "closed", "h.mem_profile_rate = 4096", "HeapClosed", closed=True),
    C("write_heap_profile", "fd", "h.write_heap_profile(fd)", "InvalidArgument"),
    C("write_heap_profile", "text-file", "h.write_heap_profile(io.StringIO())",
      "InvalidArgument"),
    C("write_heap_profile", "none", "h.write_heap_profile(None)", "InvalidArgument"),
    C("write_heap_profile", "no-directory",
      "h.write_heap_profile('/nonexistent-gcalloc-dir/heap.pb.gz')", "OSError",
      subclass_ok=True),
    C("write_heap_profile", "closed", "h.write_heap_profile(io.BytesIO())", "HeapClosed",
      closed=True),
    C("memprofile", "closed", "h.memprofile()", "HeapClosed", closed=True),
    # --- collection control ----------------------------------------------------------------
    C("set_gc_percent", "str", "h.set_gc_percent('100')", "InvalidArgument"),
    C("set_gc_percent", "closed", "h.set_gc_percent(100)", "HeapClosed", closed=True),
    C("set_memory_limit", "str", "h.set_memory_limit('64MiB')", "InvalidArgument"),
    C("set_memory_limit", "float", "h.set_memory_limit(1e9)", "InvalidArgument"),
    C("set_memory_limit", "closed", "h.set_memory_limit(1 << 30)", "HeapClosed", closed=True),
    C("read_memlimit", "closed", "h.read_memlimit()", "HeapClosed", closed=True),
    C("no_gc", "closed", "h.no_gc().__enter__()", "HeapClosed", closed=True),
    C("scavenge", "str", "h.scavenge('x')", "InvalidArgument"),
    C("scavenge", "closed", "h.scavenge()", "HeapClosed", closed=True),
    C("collect", "closed", "h.collect()", "HeapClosed", closed=True),
    C("free_os_memory", "closed", "h.free_os_memory()", "HeapClosed", closed=True),
    C("read_memstats", "closed", "h.read_memstats()", "HeapClosed", closed=True),
    C("capi", "closed", "h.capi", "HeapClosed", closed=True),
    C("verify", "corrupt",
      "s = h._alloc.mheap.span_of(p); s.allocCount += 1\n"
      "try:\n    h.verify()\nfinally:\n    s.allocCount -= 1", "HeapCorruption"),
    C("verify", "closed", "h.verify()", "HeapClosed", closed=True),
    # --- the OS layer ----------------------------------------------------------------------
    C("gcalloc.os.inject_failure", "unknown-name", "gos.inject_failure('sys_nothing')",
      "ValueError"),
    C("gcalloc.os.inject_failure", "negative", "gos.inject_failure('sys_map', -1)",
      "ValueError"),
    C("gcalloc.os.inject_failure", "count-str", "gos.inject_failure('sys_map', count='x')",
      "InvalidArgument"),
    C("OS failures anywhere", "map-fails-on-growth",
      "gos.inject_failure('sys_map')\ntry:\n    h.alloc(200 << 20)\n"
      "finally:\n    gos.clear_injected_failures()", "SysMemoryError", subclass_ok=True),
]

# The child: one fresh heap per case, the case, then the checks; one JSON line per case.
CHILD = r'''
import ctypes, io, json, mmap, os, sys, traceback
import gcalloc
from gcalloc import errors
from gcalloc import os as gos
import builtins

class Node(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_int64)]

class Empty(ctypes.Structure):
    _fields_ = []

class NoFields(ctypes.Structure):
    pass

class Packed(ctypes.Structure):
    _pack_ = 4
    _fields_ = [("a", ctypes.c_int32), ("p", ctypes.c_void_p), ("b", ctypes.c_int32)]

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
# Two pages: the first readable (its end is "unmapped - 64"), the second unmapped. Placed by
# a hint far from where the kernel puts mappings without one (below the libraries) and from
# the heap's arena hints, so that no later mapping of this process (numba's, numpy's, the
# heaps') fills the hole.
area = libc.mmap(0x3E0000000000, 8192, mmap.PROT_READ | mmap.PROT_WRITE,
                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
libc.munmap(area + 4096, 4096)
unmapped = area + 4096
noaccess = libc.mmap(None, 4096, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
buf = (ctypes.c_uint64 * 64)()
rfd, fd = os.pipe()
print('{"ready": true}', flush=True)

def lookup_class(name):
    return getattr(errors, name, None) or getattr(builtins, name)

def check_heap(h, node, p):
    h.verify()
    q = h.alloc(100)
    h.collect()
    h.verify()
    assert node.view.value == 42, "the rooted Structure changed"
    assert h.lookup(p) is not None, "the counted root was freed"
    assert h.lookup(q) is None, "an unrooted object survived a collection"
    h.alloc(5000)
    h.verify()

for line in sys.stdin:
    case = json.loads(line)
    saved = {k: os.environ.get(k) for k in case["env"]}
    result = {"id": case["id"], "raised": None, "message": "", "ok": False, "after": "ok"}
    h = gcalloc.Heap(-1, scavenger=False, debug="")
    node = h.new(Node)
    node.view.value = 42
    p = h.alloc(64)
    h.add_root(p)
    if case["closed"]:
        h.close()
    ns = dict(globals(), h=h, node=node, p=p)
    os.environ.update(case["env"])
    try:
        exec(case["code"], ns)
    except BaseException as e:
        cls = lookup_class(case["raises"])
        result["raised"] = type(e).__name__
        result["message"] = str(e)[:300]
        result["ok"] = isinstance(e, cls) and (case["subclass_ok"] or type(e) is cls)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        if case["closed"]:
            try:
                h.alloc(16)
                result["after"] = "a closed heap allocated"
            except errors.HeapClosed:
                pass
            h = gcalloc.Heap(-1, scavenger=False, debug="")
            node = h.new(Node)
            node.view.value = 42
            p = h.alloc(64)
            h.add_root(p)
        check_heap(h, node, p)
    except BaseException:
        result["after"] = traceback.format_exc(limit=4)[-600:]
    h.close()
    print(json.dumps(result), flush=True)
'''


def _run_batch(cases: list[Case]) -> dict[str, dict]:
    """Run the cases in child processes; a child that dies costs only the case it ran."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("GCALLOC_DEBUG", "GCALLOC_GOGC", "GCALLOC_MEMLIMIT"):
        env.pop(k, None)
    results: dict[str, dict] = {}
    todo = list(cases)
    while todo:
        lines_in = "".join(json.dumps(dict(asdict(c), id=_case_id(c))) + "\n" for c in todo)
        proc = subprocess.run([sys.executable, "-c", CHILD], input=lines_in, capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=120)
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        if not lines:   # died before its first case: every case would die the same way
            for c in todo:
                results[_case_id(c)] = {"crashed": proc.returncode, "stderr": proc.stderr}
            break
        for r in lines[1:]:
            results[r["id"]] = r
        todo = [c for c in todo if _case_id(c) not in results]
        if todo:
            dead = _case_id(todo.pop(0))
            results[dead] = {"id": dead, "crashed": proc.returncode,
                             "stderr": proc.stderr[-2000:]}
    return results


def _case_id(c: Case) -> str:
    return f"{c.row}:{c.id}"


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    ids = [_case_id(c) for c in CASES]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    return _run_batch(CASES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input(case: Case, results: dict[str, dict]) -> None:
    r = results[_case_id(case)]
    assert "crashed" not in r, f"the process died (exit {r.get('crashed')}): {r.get('stderr')}"
    assert r["raised"] is not None, "nothing was raised"
    assert r["ok"], f"raised {r['raised']}({r['message']}), expected {case.raises}"
    assert r["after"] == "ok", r["after"]


def test_enough_cases() -> None:
    assert len(CASES) >= 60


# --- the README's table drives the cases ------------------------------------------------

def _readme_rows() -> list[tuple[list[str], set[str]]]:
    """(call keys, exception names) per row of README's "What each public call raises"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## What each public call raises", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("call", "---") or set(cells[0]) <= {"-"}:
            continue
        calls = re.findall(r"`([^`]+)`", cells[0])
        keys = [re.split(r"[( =]", c, maxsplit=1)[0] for c in calls] or [cells[0]]
        names = {n for n in re.findall(r"`(\w+)`", cells[1]) if _is_exception(n)}
        rows.append((keys, names))
    return rows


def _is_exception(name: str) -> bool:
    cls = getattr(errors, name, None) or getattr(builtins, name, None)
    return isinstance(cls, type) and issubclass(cls, BaseException)


def test_readme_table_matches_cases() -> None:
    rows = _readme_rows()
    assert len(rows) >= 20, "the README's error table was not found"
    covered = {(c.row, c.raises) for c in CASES}
    missing = [(k, n) for keys, names in rows for k in keys for n in sorted(names)
               if (k, n) not in covered]
    assert not missing, f"README names exceptions no case raises: {missing}"
    named = {(k, n) for keys, names in rows for k in keys for n in names}
    undocumented = sorted(covered - named)
    assert not undocumented, f"cases raise exceptions the README does not name: {undocumented}"


def test_every_public_heap_method_has_a_row() -> None:
    keys = {k for ks, _ in _readme_rows() for k in ks}
    public = {n for n in dir(gcalloc.Heap) if not n.startswith("_")}
    # Not in the table: close() (idempotent, raises nothing) and the properties that only
    # read (closed, gc_percent). The Heap shows nothing else: its allocator and collector
    # are private (Heap._alloc, Heap._gc).
    not_user_calls = {"close", "closed", "gc_percent"}
    assert public - not_user_calls - keys == set()
