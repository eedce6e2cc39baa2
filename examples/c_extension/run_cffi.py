"""records.c through cffi: the same C extension as run.py, built as a cffi module (API mode,
``ffi.set_source`` with gcalloc.get_include() on the include path) and called through
``lib``. The heap's api is passed as an integer (``heap.capi``) and cast in C.

    python examples/c_extension/run_cffi.py [--records N]

Needs cffi (``pip install cffi``; it is in gcalloc's test extra) and a C compiler; without
either it prints why it skipped and exits 0.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import HERE, check_and_release, find_compiler, parse_records  # noqa: E402

import gcalloc  # noqa: E402

CDEF = """
int64_t build(uint64_t capi, int64_t n);
int64_t finalized_count(void);
const char *error(uint64_t capi);
"""

SOURCE = """
#include "records.c"
int64_t build(uint64_t capi, int64_t n) {
    return (int64_t)(uintptr_t)build_records((gcalloc_api *)(uintptr_t)capi, n);
}
const char *error(uint64_t capi) { return gcalloc_last_error((gcalloc_api *)(uintptr_t)capi); }
"""


def main() -> int:
    n = parse_records()
    try:
        import cffi
    except ImportError:
        print("skipped: cffi is not installed (pip install cffi)")
        return 0
    if find_compiler() is None:
        print("skipped: no C compiler found (looked for $CC, cc, gcc, clang)")
        return 0
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_records_cffi", SOURCE, include_dirs=[gcalloc.get_include(), HERE])
    with tempfile.TemporaryDirectory() as tmp, gcalloc.Heap(debug="") as heap:
        so = ffi.compile(tmpdir=tmp)
        spec = importlib.util.spec_from_file_location("_records_cffi", so)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print("compiled records.c with cffi")
        head = mod.lib.build(heap.capi, n)
        if not head:
            print(f"FAILED: build_records: {ffi.string(mod.lib.error(heap.capi)).decode()}")
            return 1
        return check_and_release(heap, head, n, mod.lib.finalized_count)


if __name__ == "__main__":
    raise SystemExit(main())
