"""The C ABI (gcalloc/include/gcalloc.h, gcalloc/capi.py), called from real C compiled with the
system compiler: the packaged header, every call and its errors, the inline fast path's
buckets (shared mcache, given back at each collection, one-slot black runs while marking,
emptied at close), thread records, and the three ways in (ctypes, cffi, a CPython extension).
The threads-and-stacks half is tested in test_capi_roots.py (C locals as roots, through this
header) and test_cthreads.py (the suspension protocol, from a harness).
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cbuild import HERE, build_shared, require_compiler

import gcalloc
from gcalloc import capi
from gcalloc.gc import cthreads as ct
from gcalloc.sizeclasses import NUM_SPAN_CLASSES, class_to_size

ROOT = HERE.parent.parent
NOSCAN32 = capi.span_class(32, True)


class Node(ctypes.Structure):
    pass


Node._fields_ = [("next", ctypes.POINTER(Node)), ("value", ctypes.c_int64)]


class Stats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "heap_alloc", "heap_objects", "heap_sys", "mallocs", "frees", "num_gc", "next_gc",
        "pause_total_ns")]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("capi") / "libcapi_calls.so"
    dll = ctypes.CDLL(str(build_shared([HERE / "capi_calls.c"], out)))
    vp, u64, i64, i32 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int
    sigs = {
        "build_list": ([vp, i64, i64, i64], u64), "sum_list": ([u64], i64),
        "alloc": ([vp, u64, i32], u64), "register_node_type": ([vp], i64),
        "register_type": ([vp, u64, vp, u64], i64), "alloc_typed": ([vp, i64, u64], u64),
        "free_": ([vp, u64], i32), "collect": ([vp], i32), "add_root": ([vp, u64], i32),
        "remove_root": ([vp, u64], i32), "add_root_range": ([vp, u64, u64], i64),
        "remove_root_range": ([vp, i64], i32), "no_gc_enter": ([vp], i32),
        "no_gc_leave": ([vp], i32), "read_stats": ([vp, vp], i32),
        "last_error": ([vp], ctypes.c_char_p), "set_finalizer": ([vp, u64, i32], i32),
        "finalized_count": ([], i64), "finalized_with": ([], u64),
        "thread_record": ([vp], u64), "alloc_in_pthread": ([vp, i64, vp], u64),
        "bucket_left": ([vp, ctypes.c_uint], u64),
        "span_class_of": ([u64, i32], ctypes.c_uint), "class_size": ([ctypes.c_uint], u64),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(dll, name)
        fn.argtypes = args
        fn.restype = res
    return dll


def error(lib, api) -> str:
    return lib.last_error(api).decode()


# --- the packaged header ---------------------------------------------------------------------


@pytest.fixture
def heap(heap):
    """conftest's heap with heap-profile sampling off: a sample cuts a run short (the
    sampled object starts a run), and these tests count runs and refills exactly; the
    sampling test turns it back on."""
    heap.mem_profile_rate = 0
    return heap


def test_get_include_holds_the_headers():
    inc = Path(gcalloc.get_include())
    assert (inc / "gcalloc.h").is_file() and (inc / "gcalloc_stop.h").is_file()
    assert inc == ROOT / "gcalloc" / "include"


def test_header_is_strict_c11(tmp_path):
    src = tmp_path / "strict.c"
    src.write_text("#include <gcalloc.h>\n"
                   "void *f(gcalloc_api *api) { return gcalloc_alloc(api, 32); }\n")
    build_shared([src], tmp_path / "strict.so", "-std=c11", "-D_GNU_SOURCE", "-Wpedantic")


def test_header_tables_are_generated_from_sizeclasses():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "mkcapitables.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_header_size_classes_agree_with_python(lib):
    for sc in range(len(class_to_size)):
        assert lib.class_size(sc) == class_to_size[sc]
    for size in list(range(1, 1100)) + list(range(1100, 32769, 61)) + [32768]:
        for noscan in (0, 1):
            assert lib.span_class_of(size, noscan) == capi.span_class(size, bool(noscan))


def test_packaging_ships_the_header():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'gcalloc = \[.*"include/\*\.h".*\]', pyproject)
    assert "recursive-include gcalloc/include *.h" in (ROOT / "MANIFEST.in").read_text()


# --- the calls ---------------------------------------------------------------------------------


def test_list_from_c_survives_collections(heap, lib):
    api = heap.capi
    head = lib.build_list(api, 20000, 0, 5000)
    assert head, error(lib, api)
    heap.collect()
    assert lib.sum_list(head) == sum(range(20000))
    heap.verify()
    assert lib.remove_root(api, head) == 0
    heap.collect()
    assert heap.read_memstats().heap_objects == 0


def test_typed_objects_from_a_type_registered_in_c(heap, lib):
    api = heap.capi
    tid = lib.register_node_type(api)
    assert tid == 1, error(lib, api)
    head = lib.build_list(api, 3000, tid, 1000)
    assert head, error(lib, api)
    assert lib.sum_list(head) == sum(range(3000))
    s = heap._alloc.mheap.span_of(head)
    assert s.typed
    assert heap._capi._types[0] == gcalloc.Type(16, 0b01)
    arr = lib.alloc_typed(api, tid, 10)        # an array of 10 nodes: one object
    assert arr and heap.usable_size(arr) >= 160
    heap.verify()
    lib.remove_root(api, head)


def test_large_and_zero_size(heap, lib):
    api = heap.capi
    p = lib.alloc(api, 100_000, 0)
    assert p and heap.usable_size(p) >= 100_000
    assert lib.alloc(api, 0, 1) == heap._alloc.zerobase
    assert bytes((ctypes.c_char * 100_000).from_address(p)) == bytes(100_000)


def test_free_from_c(heap, lib):
    api = heap.capi
    p = lib.alloc(api, 4096, 1)
    assert lib.free_(api, p) == 0
    assert heap.lookup(p) is None
    assert lib.free_(api, 0) == 0               # NULL: a no-op, as Heap.free(0)


def test_roots_and_root_ranges(heap, lib):
    api = heap.capi
    p = lib.alloc(api, 64, 0)
    assert lib.add_root(api, p) == 0 and lib.add_root(api, p) == 0   # counted
    assert lib.remove_root(api, p) == 0
    heap.collect()
    assert heap.lookup(p) is not None
    assert lib.remove_root(api, p) == 0
    slot = ctypes.c_uint64.in_dll(lib, "global_slot")
    q = lib.alloc(api, 48, 1)
    slot.value = q
    token = lib.add_root_range(api, ctypes.addressof(slot), 32)
    assert token >= 0, error(lib, api)
    heap.collect()
    assert heap.lookup(q) is not None and heap.lookup(p) is None
    assert lib.remove_root_range(api, token) == 0
    heap.collect()
    assert heap.lookup(q) is None
    slot.value = 0


def test_finalizer_is_a_c_function(heap, lib):
    api = heap.capi
    before = lib.finalized_count()
    p = lib.alloc(api, 32, 1)
    assert lib.set_finalizer(api, p, 0) == 0
    heap.collect()
    assert heap.run_finalizers(timeout=30)
    assert lib.finalized_count() == before + 1
    assert lib.finalized_with() == 0x5EED
    q = lib.alloc(api, 32, 1)
    assert lib.set_finalizer(api, q, 0) == 0 and lib.set_finalizer(api, q, 1) == 0  # cleared
    heap.collect()
    heap.run_finalizers(timeout=30)
    assert lib.finalized_count() == before + 1


def test_no_gc_nests_and_needs_enter(heap, lib):
    api = heap.capi
    assert lib.no_gc_enter(api) == 0 and lib.no_gc_enter(api) == 0
    assert heap._gc.inhibit == 2
    assert lib.no_gc_leave(api) == 0 and lib.no_gc_leave(api) == 0
    assert heap._gc.inhibit == 0
    assert lib.no_gc_leave(api) == -1
    assert error(lib, api).startswith("InvalidArgument: gcalloc_no_gc_leave without")


def test_stats_are_read_memstats(heap, lib):
    api = heap.capi
    for _ in range(10):
        lib.alloc(api, 100_000, 1)
    st = Stats()
    assert lib.read_stats(api, ctypes.byref(st)) == 0
    ms = heap.read_memstats()
    assert st.num_gc == ms.num_gc and st.heap_sys == ms.heap_sys
    assert st.heap_alloc >= 10 * 100_000 and st.mallocs >= 10
    assert lib.read_stats(api, None) == -1
    assert error(lib, api) == "InvalidArgument: gcalloc_read_stats: out is NULL"


@pytest.mark.parametrize("call, message", [
    (lambda lib, api, h: lib.free_(api, 0x1234) == -1,
     "NotHeapPointer: free of 0x1234: not an object of this heap"),
    (lambda lib, api, h: lib.add_root(api, 0x1234) == -1,
     "NotHeapPointer: 0x1234 is not an allocated object of this heap"),
    (lambda lib, api, h: lib.remove_root(api, lib.alloc(api, 64, 0)) == -1, "NotARoot: "),
    (lambda lib, api, h: lib.alloc(api, 1 << 49, 0) == 0, "InvalidSize: allocation size"),
    (lambda lib, api, h: lib.alloc_typed(api, 7, 1) == 0,
     "InvalidArgument: no type with id 7 registered on this heap"),
    (lambda lib, api, h: lib.alloc_typed(api, lib.register_node_type(api), 0) == 0,
     "InvalidSize: count must be >= 1, got 0"),
    (lambda lib, api, h: lib.register_type(api, 16, (ctypes.c_size_t * 1)(4), 1) == -1,
     "InvalidType: pointer offset 4 is not an 8-byte-aligned word"),
    (lambda lib, api, h: lib.register_type(api, 16, (ctypes.c_size_t * 1)(16), 1) == -1,
     "InvalidType: pointer offset 16 is not"),
    (lambda lib, api, h: lib.register_type(api, 16, None, 1) == -1,
     "InvalidArgument: ptr_offsets is NULL"),
    (lambda lib, api, h: lib.remove_root_range(api, 12345) == -1, "NotARoot: "),
    (lambda lib, api, h: lib.add_root_range(api, lib.alloc(api, 64, 0), 64) == -1,
     "InvalidRootRange: root range"),
    (lambda lib, api, h: lib.set_finalizer(api, lib.alloc(api, 64, 0) + 8, 0) == -1,
     "InteriorPointer: "),
], ids=["free-not-heap", "root-not-heap", "not-a-root", "huge", "unknown-type", "count-0",
        "offset-unaligned", "offset-outside", "offsets-null", "range-token", "range-in-heap",
        "finalizer-interior"])
def test_bad_arguments_fail_cleanly(heap, lib, call, message):
    api = heap.capi
    lib.alloc(api, 64, 0)                    # the thread has a record: errors land in it
    assert call(lib, api, heap)
    assert error(lib, api).startswith(message), error(lib, api)
    heap.verify()                             # the heap is intact
    assert lib.alloc(api, 64, 0)              # and still works


def test_null_api_fails_cleanly(lib):
    """From a thread that never called gcalloc (its cache empty) and from one that did."""
    out = []

    def fresh_thread():
        out.append((lib.alloc(None, 32, 1), lib.last_error(None).decode(),
                    lib.free_(None, 0), lib.collect(None)))

    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join()
    assert out == [(0, "InvalidArgument: api is NULL", -1, -1)]
    assert lib.alloc(None, 32, 0) == 0


def test_double_free_from_c(heap, lib):
    api = heap.capi
    p = lib.alloc(api, 256, 1)
    assert lib.free_(api, p) == 0
    assert lib.free_(api, p) == -1
    assert error(lib, api).startswith("DoubleFree: ")
    heap.verify()


def test_abi_mismatch_is_refused(lib):
    with gcalloc.Heap(-1, debug="") as heap:
        api = capi._Api.from_address(heap.capi)
        api.abi_version = 999
        try:
            assert lib.alloc(heap.capi, 32, 0) == 0
            assert "does not match the installed gcalloc" in error(lib, heap.capi)
        finally:
            api.abi_version = capi.ABI_VERSION
        assert lib.alloc(heap.capi, 32, 0)


# --- buckets -----------------------------------------------------------------------------------


def test_bucket_continues_the_python_run(heap, lib):
    """Python and C on one thread share its mcache: C takes over the Python run."""
    api = heap.capi
    p = heap.alloc(32, noscan=True)
    q = lib.alloc(api, 32, 1)
    assert q == p + 32
    assert lib.bucket_left(api, NOSCAN32) > 0
    assert next(heap._alloc._tls.mcache.runs[NOSCAN32], 0) == 0    # the run is C's now


def test_bucket_is_a_long_run(heap, lib):
    """A refill hands the bucket a whole fresh span's free slots."""
    api = heap.capi
    lib.alloc(api, 32, 1)
    rec = heap._capi._records[lib.thread_record(api)]
    refills = rec.words[capi.REFILLS_OFFSET // 8]
    for _ in range(200):
        lib.alloc(api, 32, 1)
    assert rec.words[capi.REFILLS_OFFSET // 8] == refills
    assert lib.bucket_left(api, NOSCAN32) == (256 - 201) * 32


def test_bucket_given_back_exactly_at_flush(heap, lib):
    api = heap.capi
    ptrs = [lib.alloc(api, 32, 1) for _ in range(10)]
    s = heap._alloc.mheap.span_of(ptrs[0])
    assert s.allocCount == s.nelems == 256     # the whole span is the bucket's run
    a = heap._alloc
    a.stop_the_world()
    try:
        a.flush_mcaches()
        assert s.allocCount == 10               # the 246 slots not handed out came back
        assert lib.bucket_left(api, NOSCAN32) == 0
    finally:
        a.start_the_world()
    heap.verify()
    nxt = lib.alloc(api, 32, 1)
    assert nxt not in ptrs


def test_collection_empties_every_bucket(heap, lib):
    api = heap.capi
    for size in (8, 24, 100, 1000, 5000, 30000):
        lib.alloc(api, size, 0)
        lib.alloc(api, size, 1)
    heap.collect()
    assert all(lib.bucket_left(api, spc) == 0 for spc in range(NUM_SPAN_CLASSES))
    assert heap.read_memstats().heap_objects == 0
    heap.verify()


def test_refill_while_marking_is_one_black_slot(heap, lib):
    api = heap.capi
    lib.alloc(api, 32, 1)
    got = []

    def during_mark(marker):
        got.append(lib.alloc(api, 32, 1))
        got.append(lib.bucket_left(api, NOSCAN32))

    heap._gc.after_mark.append(during_mark)
    try:
        heap.collect()
    finally:
        heap._gc.after_mark.remove(during_mark)
    p, left = got
    assert p and left == 0                     # a one-slot run
    assert heap.lookup(p) is not None          # unrooted, but allocated black: survived
    heap.collect()
    assert heap.lookup(p) is None


def test_close_fails_every_later_call(lib):
    heap = gcalloc.Heap(-1, debug="")
    api = heap.capi
    p = lib.alloc(api, 32, 0)
    assert p and lib.bucket_left(api, capi.span_class(32, False)) > 0
    heap.close()
    assert heap.capi == api                    # the same address, valid for good
    assert lib.alloc(api, 32, 0) == 0          # the bucket was emptied: no bump into it
    assert error(lib, api) == "HeapClosed: heap is closed"
    assert lib.free_(api, p) == -1 and lib.collect(api) == -1
    assert lib.add_root(api, p) == -1 and lib.no_gc_enter(api) == -1
    assert lib.register_node_type(api) == -1 and lib.alloc_typed(api, 1, 1) == 0
    assert error(lib, api) == "HeapClosed: heap is closed"


def test_capi_of_a_closed_heap_is_refused():
    heap = gcalloc.Heap(-1, debug="")
    heap.close()
    with pytest.raises(gcalloc.errors.HeapClosed):
        _ = heap.capi


def test_dropped_heap_closes_its_api(lib):
    heap = gcalloc.Heap(-1, debug="")
    api = heap.capi
    assert lib.alloc(api, 32, 1)
    del heap
    import gc
    gc.collect()
    assert lib.alloc(api, 32, 1) == 0
    assert error(lib, api).startswith("HeapClosed: ")


def test_thread_record_per_thread_reaped_after_exit(heap, lib):
    """A C thread (pthread_create: Python gets a new thread state at every callback) gets
    its own record and an mcache that lasts across its calls; when it exits, the pthread
    key's destructor marks the record exited and the next collection reaps both."""
    api = heap.capi
    assert lib.alloc(api, 32, 1)
    mine = lib.thread_record(api)
    mcaches = len(heap._alloc.mcaches)
    rec = ctypes.c_uint64()
    last = lib.alloc_in_pthread(api, 1000, ctypes.byref(rec))
    assert last and rec.value and rec.value != mine
    theirs = heap._capi._records[rec.value]
    assert theirs.words[capi.REFILLS_OFFSET // 8] == 4    # 1000 objects: 4 spans, 4 refills
    assert theirs.owns_mcache and len(heap._alloc.mcaches) == mcaches + 1
    assert capi._state(rec.value) == ct.EXITED
    heap.collect()                                       # reaped with the world stopped
    assert rec.value not in heap._capi._records and mine in heap._capi._records
    assert len(heap._alloc.mcaches) == mcaches
    assert heap.read_memstats().heap_objects == 0
    heap.verify()


# --- the three ways in -------------------------------------------------------------------------


def test_cffi_module_allocates(heap, tmp_path):
    cffi = pytest.importorskip("cffi", reason="cffi is in the test extra")
    require_compiler()
    ffi = cffi.FFI()
    ffi.cdef("int64_t cffi_sum(uint64_t api, int64_t n);")
    ffi.set_source("_capi_cffi_test", """
        #define _GNU_SOURCE
        #include <gcalloc.h>
        int64_t cffi_sum(uint64_t capi, int64_t n) {
            gcalloc_api *api = (gcalloc_api *)(uintptr_t)capi;
            int64_t *xs = gcalloc_alloc_noscan(api, (size_t)n * sizeof *xs);
            if (xs == NULL || gcalloc_add_root(api, xs) != 0) return -1;
            for (int64_t i = 0; i < n; i++) xs[i] = i;
            if (gcalloc_collect(api) != 0) return -1;
            int64_t s = 0;
            for (int64_t i = 0; i < n; i++) s += xs[i];
            return gcalloc_remove_root(api, xs) == 0 ? s : -1;
        }
    """, include_dirs=[gcalloc.get_include()])
    so = ffi.compile(tmpdir=str(tmp_path))
    spec = importlib.util.spec_from_file_location("_capi_cffi_test", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.lib.cffi_sum(heap.capi, 1000) == sum(range(1000))
    heap.collect()
    assert heap.read_memstats().heap_objects == 0


def test_cpython_extension_allocates(heap, tmp_path):
    src = tmp_path / "capi_ext.c"
    src.write_text(r"""
        #define _GNU_SOURCE
        #define PY_SSIZE_T_CLEAN
        #include <Python.h>
        #include <gcalloc.h>
        static PyObject *squares(PyObject *self, PyObject *args) {
            unsigned long long capi; Py_ssize_t n;
            (void)self;
            if (!PyArg_ParseTuple(args, "Kn", &capi, &n)) return NULL;
            gcalloc_api *api = (gcalloc_api *)(uintptr_t)capi;
            int64_t *xs = gcalloc_alloc_noscan(api, (size_t)n * sizeof *xs);
            if (xs == NULL) {
                PyErr_SetString(PyExc_MemoryError, gcalloc_last_error(api));
                return NULL;
            }
            for (Py_ssize_t i = 0; i < n; i++) xs[i] = (int64_t)i * i;
            return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)xs);
        }
        static PyMethodDef methods[] = {{"squares", squares, METH_VARARGS, ""},
                                        {NULL, NULL, 0, NULL}};
        static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, .m_name = "capi_ext",
                                         .m_size = -1, .m_methods = methods};
        PyMODINIT_FUNC PyInit_capi_ext(void) { return PyModule_Create(&mod); }
    """)
    import sysconfig
    so = build_shared([src], tmp_path / ("capi_ext" + sysconfig.get_config_var("EXT_SUFFIX")),
                      python=True)
    spec = importlib.util.spec_from_file_location("capi_ext", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p = mod.squares(heap.capi, 500)
    assert list((ctypes.c_int64 * 500).from_address(p)) == [i * i for i in range(500)]
    heap.close()
    with pytest.raises(MemoryError, match="HeapClosed: heap is closed"):
        mod.squares(heap.capi, 10)


def test_efence_gives_every_c_object_its_own_span(lib):
    """Under efence=1 the buckets stay empty: every C allocation takes the slow path."""
    with gcalloc.Heap(-1, debug="efence=1") as heap:
        api = heap.capi
        ptrs = [lib.alloc(api, 32, 1) for _ in range(5)]
        assert all(ptrs) and len({heap._alloc.mheap.span_of(p).base for p in ptrs}) == 5
        assert lib.bucket_left(api, NOSCAN32) == 0
        heap.verify()


def test_heap_profile_samples_c_allocations(heap, lib):
    """A run stops at the next sample: at rate 1 every C allocation is a refill, sampled."""
    api = heap.capi
    heap.mem_profile_rate = 1
    for _ in range(50):
        assert lib.alloc(api, 32, 1)
    assert lib.bucket_left(api, NOSCAN32) == 0
    heap.collect()
    sampled = sum(r.alloc_objects for r in heap.memprofile()
                  if r.alloc_bytes == 32 * r.alloc_objects)
    assert sampled >= 50


def test_c_allocations_are_paced(lib):
    """The pacer is charged per refill: C allocations alone start collections (from a C
    loop in a C thread: 32 MiB of garbage at GOGC=100)."""
    with gcalloc.Heap(100, debug="") as heap:
        rec = ctypes.c_uint64()
        assert lib.alloc_in_pthread(heap.capi, 1_000_000, ctypes.byref(rec))
        assert heap.read_memstats().num_gc >= 2
        heap.verify()


def test_an_exited_record_with_the_request_bit_is_reused():
    """A retired record is free once its thread exited, whatever the collector's request bit
    (gcalloc_stop.h: only the low byte is the state)."""
    mem = capi._memory()
    r = mem.record()
    ctypes.c_int32.from_address(r).value = ct.EXITED | ct.REQUESTED
    with mem.lock:
        free, mem.free_records = mem.free_records, []
    try:
        mem.retire([r])
        assert mem.record() == r
    finally:
        with mem.lock:
            mem.free_records.extend(free)
