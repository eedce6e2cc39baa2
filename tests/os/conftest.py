"""Fixtures for the OS-layer suite.

Every test in test_conformance.py runs once per backend:
- ``native``: the running OS's backend through the public ``gcalloc.os`` functions (POSIX mmap
  here; real kernel32 on Windows);
- ``windows-standin``: the Windows backend (gcalloc/os/windows.py) over the kernel32 stand-in
  (gcalloc/os/_kernel32_standin.py), which needs POSIX mmap and so is skipped on Windows, where
  the native run covers real kernel32.

``sysmem`` hands a test its backend wrapped in a ``Mem`` that remembers every reservation and
frees what the test left, so that no mapping outlives its test. Touches that must fault run in a
child process (``run_child``) that must die of the fault while this process goes on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from oshelpers import BACKENDS, STANDIN_SKIP, Mem, make_backend

import gcalloc.os as gos
from gcalloc.os import _kernel32_standin as standin


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    if request.param == "windows-standin" and not standin.AVAILABLE:
        pytest.skip(STANDIN_SKIP)
    return request.param


@pytest.fixture
def sysmem(backend_name: str) -> Iterator[Mem]:
    m = Mem(backend_name, make_backend(backend_name))
    yield m
    m.close()


@pytest.fixture(autouse=True)
def _no_injected_failures() -> Iterator[None]:
    gos.clear_injected_failures()
    yield
    gos.clear_injected_failures()
