"""A managed heap inside a C extension: C code allocates in a gcalloc heap through the packaged
C ABI (gcalloc.h), Python reads what it built, and the collector frees it. This script loads
the C with ctypes; run_cffi.py does the same through cffi and run_extension.py as a compiled
CPython extension module.

    python examples/c_extension/run.py [--records N]

1. records.c is compiled at run time with the system C compiler (``$CC``, cc, gcc or clang)
   into a shared library: ``cc -shared -fPIC -O2 -I<gcalloc.get_include()>`` in a temporary
   directory. No gcalloc library is linked: the ABI is header-only. Without a compiler the
   example prints why it skipped and exits 0.
2. ``heap.capi`` is the address of the heap's ``gcalloc_api``; C receives it as a pointer and
   calls gcalloc_alloc, gcalloc_add_root, gcalloc_set_finalizer, ... on it. Small objects come
   from the calling thread's buckets without entering Python.
3. C builds a linked list of records, each pointing to a name string with a C finalizer, roots
   the head with gcalloc_add_root, collects halfway and returns the head.
4. Python walks the list through a ctypes Structure with the same layout and checks every
   value, drops the root and collects: the finalizers (C functions) run on the finalizer
   thread, and a second collection frees everything.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import gcalloc

HERE = os.path.dirname(os.path.abspath(__file__))


class Record(ctypes.Structure):
    """struct record in records.c."""


Record._fields_ = [("next", ctypes.POINTER(Record)), ("name", ctypes.c_char_p),
                   ("value", ctypes.c_int64)]


def find_compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def compile_c(cc: str, sources: list[str], out: str, *include: str) -> str:
    """cc -shared -fPIC -O2 with gcalloc.h (and ``include``) on the include path."""
    cmd = [cc, "-shared", "-fPIC", "-O2", "-I", gcalloc.get_include()]
    for d in include:
        cmd += ["-I", d]
    if sys.platform == "darwin":
        cmd += ["-undefined", "dynamic_lookup"]
    subprocess.run(cmd + ["-o", out, *sources], check=True, capture_output=True, text=True)
    return out


def walk(head: int) -> list[tuple[int, bytes]]:
    out = []
    p = ctypes.cast(head, ctypes.POINTER(Record))
    while p:
        out.append((p.contents.value, p.contents.name))
        p = p.contents.next
    return out


def check_and_release(heap: gcalloc.Heap, head: int, n: int,
                      finalized: Callable[[], int]) -> int:
    """What every variant prints: the list C built, then the finalizers and the frees once
    the root is dropped. Returns the exit status."""
    records = walk(head)
    expected = [(i * i, f"item-{i}".encode()) for i in range(n)]
    if records != expected:
        print("FAILED: the list C built is not what Python reads")
        return 1
    ms = heap.read_memstats()
    print(f"C built {len(records)} records in the heap; Python walked them all "
          f"(first {records[0]}, last {records[-1]}); num_gc={ms.num_gc}, "
          f"heap_objects={ms.heap_objects}")
    heap.remove_root(head)
    heap.collect()                         # names unreachable: finalizers queued
    heap.run_finalizers(timeout=30)
    count = finalized()
    heap.collect()                         # finalized objects freed
    left = heap.read_memstats().heap_objects
    heap.verify()
    print(f"root dropped: {count} C finalizers ran; heap_objects={left}")
    if count != n or left != 0:
        print("FAILED: expected every finalizer to run and every object to be freed")
        return 1
    print("ok")
    return 0


def parse_records() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    return parser.parse_args().records


def main() -> int:
    n = parse_records()
    cc = find_compiler()
    if cc is None:
        print("skipped: no C compiler found (looked for $CC, cc, gcc, clang)")
        return 0
    with tempfile.TemporaryDirectory() as tmp, gcalloc.Heap(debug="") as heap:
        lib = ctypes.CDLL(compile_c(cc, [os.path.join(HERE, "records.c")],
                                    os.path.join(tmp, "librecords.so")))
        lib.build_records.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.build_records.restype = ctypes.c_uint64
        lib.records_error.argtypes = [ctypes.c_void_p]
        lib.records_error.restype = ctypes.c_char_p
        lib.finalized_count.restype = ctypes.c_int64
        print(f"compiled records.c with {os.path.basename(cc)} (ctypes)")
        head = lib.build_records(heap.capi, n)
        if not head:
            print(f"FAILED: build_records: {lib.records_error(heap.capi).decode()}")
            return 1
        return check_and_release(heap, head, n, lib.finalized_count)


if __name__ == "__main__":
    raise SystemExit(main())
