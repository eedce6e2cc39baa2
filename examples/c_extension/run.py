"""A managed heap inside a Python extension: C code allocates in a gcalloc heap through a C ABI,
Python reads what it built, and the collector frees it.

    python examples/c_extension/run.py [--records N]

1. records.c is compiled at run time with the system C compiler (``$CC``, cc, gcc or clang)
   into a shared library: ``cc -shared -fPIC -O2`` in a temporary directory. Without a
   compiler the example prints why it skipped and exits 0.
2. gcalloc's C ABI (gcalloc_abi.h) is a struct of function pointers -- alloc, free, collect,
   add_root, remove_root, set_finalizer -- made from Python callables with ctypes CFUNCTYPE.
   The Python callback objects must outlive every C call that may use them: ``CApi`` keeps them.
3. C builds a linked list of records, each pointing to a name string with a C finalizer, roots
   the head with add_root, collects halfway and returns the head.
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
import traceback

import gcalloc
from gcalloc.errors import GcallocError

HERE = os.path.dirname(os.path.abspath(__file__))

FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_uint64)
ALLOC = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int32)
ADDR_CALL = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_uint64)
VOID_CALL = ctypes.CFUNCTYPE(ctypes.c_int32)
SET_FINALIZER = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_uint64, FINALIZER)


class GcallocApi(ctypes.Structure):
    """struct gcalloc_api in gcalloc_abi.h, field for field."""

    _fields_ = [("alloc", ALLOC), ("free", ADDR_CALL), ("collect", VOID_CALL),
                ("add_root", ADDR_CALL), ("remove_root", ADDR_CALL),
                ("set_finalizer", SET_FINALIZER)]


class Record(ctypes.Structure):
    """struct record in records.c."""


Record._fields_ = [("next", ctypes.POINTER(Record)), ("name", ctypes.c_char_p),
                   ("value", ctypes.c_int64)]


class CApi:
    """The C ABI for one heap. Errors inside gcalloc become -1 (0 from alloc) for C, with the
    exception printed on stderr: a Python exception cannot cross into C."""

    def __init__(self, heap: gcalloc.Heap) -> None:
        self.heap = heap
        self.callbacks = [ALLOC(self._alloc), ADDR_CALL(self._free), VOID_CALL(self._collect),
                          ADDR_CALL(self._add_root), ADDR_CALL(self._remove_root),
                          SET_FINALIZER(self._set_finalizer)]
        self.struct = GcallocApi(*self.callbacks)

    @staticmethod
    def _guard(fn, *args, failed=-1):
        try:
            result = fn(*args)
        except GcallocError:
            traceback.print_exc()
            return failed
        return 0 if result is None else result

    def _alloc(self, size: int, noscan: int) -> int:
        return self._guard(self.heap.alloc, size, None, bool(noscan), failed=0)

    def _free(self, addr: int) -> int:
        return self._guard(self.heap.free, addr)

    def _collect(self) -> int:
        return self._guard(self.heap.collect)

    def _add_root(self, addr: int) -> int:
        return self._guard(self.heap.add_root, addr)

    def _remove_root(self, addr: int) -> int:
        return self._guard(self.heap.remove_root, addr)

    def _set_finalizer(self, addr: int, fn) -> int:
        if not fn:                            # a NULL function pointer clears it
            return self._guard(self.heap.set_finalizer, addr, None)
        c_fn = ctypes.cast(fn, FINALIZER)     # a C function: stays valid while the .so does
        return self._guard(self.heap.set_finalizer, addr, lambda p: c_fn(p))


def find_compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def compile_library(cc: str, outdir: str) -> str:
    suffix = ".dll" if sys.platform == "win32" else ".so"
    lib = os.path.join(outdir, "librecords" + suffix)
    cmd = [cc, "-shared", "-fPIC", "-O2", "-o", lib, os.path.join(HERE, "records.c")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return lib


def walk(head: int) -> list[tuple[int, bytes]]:
    out = []
    p = ctypes.cast(head, ctypes.POINTER(Record))
    while p:
        out.append((p.contents.value, p.contents.name))
        p = p.contents.next
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    n = parser.parse_args().records
    cc = find_compiler()
    if cc is None:
        print("skipped: no C compiler found (looked for $CC, cc, gcc, clang)")
        return 0
    with tempfile.TemporaryDirectory() as tmp, gcalloc.Heap(debug="") as heap:
        lib = ctypes.CDLL(compile_library(cc, tmp))
        lib.build_records.argtypes = [ctypes.POINTER(GcallocApi), ctypes.c_int64]
        lib.build_records.restype = ctypes.c_uint64
        lib.finalized_count.restype = ctypes.c_int64
        api = CApi(heap)
        print(f"compiled records.c with {os.path.basename(cc)}")

        head = lib.build_records(ctypes.byref(api.struct), n)
        if not head:
            print("FAILED: build_records returned NULL")
            return 1
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
        finalized = lib.finalized_count()
        heap.collect()                         # finalized objects freed
        left = heap.read_memstats().heap_objects
        heap.verify()
        print(f"root dropped: {finalized} C finalizers ran; heap_objects={left}")
        if finalized != n or left != 0:
            print("FAILED: expected every finalizer to run and every object to be freed")
            return 1
    print("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
