"""records.c as a compiled CPython extension module: records_ext.c wraps it in a module whose
``build(capi, n)`` takes ``heap.capi`` and raises MemoryError with gcalloc_last_error's
message on failure.

    python examples/c_extension/run_extension.py [--records N]

The module is compiled at run time with the system C compiler, Python.h (sysconfig's include
directory) and gcalloc.h (gcalloc.get_include()) on the include path, as a setuptools
``Extension(include_dirs=[gcalloc.get_include()])`` would; no library is linked. Without a
compiler it prints why it skipped and exits 0.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import HERE, check_and_release, compile_c, find_compiler, parse_records  # noqa: E402

import gcalloc  # noqa: E402


def main() -> int:
    n = parse_records()
    cc = find_compiler()
    if cc is None:
        print("skipped: no C compiler found (looked for $CC, cc, gcc, clang)")
        return 0
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    with tempfile.TemporaryDirectory() as tmp, gcalloc.Heap(debug="") as heap:
        so = compile_c(cc, [os.path.join(HERE, "records_ext.c")],
                       os.path.join(tmp, "records_ext" + suffix),
                       sysconfig.get_paths()["include"], HERE)
        spec = importlib.util.spec_from_file_location("records_ext", so)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print(f"compiled records_ext.c with {os.path.basename(cc)} (a CPython extension)")
        head = mod.build(heap.capi, n)
        return check_and_release(heap, head, n, mod.finalized)


if __name__ == "__main__":
    raise SystemExit(main())
