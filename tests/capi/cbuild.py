"""Compiling the C ABI tests' C: real C with the system compiler, against the packaged header
(gcalloc.get_include()). A test needing a compiler skips with a message only where none
exists (``$CC``, cc, gcc, clang)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import gcalloc

HERE = Path(__file__).resolve().parent
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC"]


def compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def require_compiler() -> str:
    cc = compiler()
    if cc is None:
        pytest.skip("no C compiler found (looked for $CC, cc, gcc, clang)")
    return cc


def build_shared(sources: list[Path], out: Path, *extra: str, python: bool = False) -> Path:
    """Compile sources into the shared library ``out`` with gcalloc.h on the include path
    (and Python.h when ``python``: a CPython extension module)."""
    cc = require_compiler()
    cmd = [cc, *CFLAGS, "-shared", "-I", gcalloc.get_include()]
    if python:
        cmd += ["-I", sysconfig.get_paths()["include"]]
        if sys.platform == "darwin":
            cmd += ["-undefined", "dynamic_lookup"]
    cmd += ["-o", str(out), *map(str, sources), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return out
