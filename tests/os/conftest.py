"""Fixtures for the OS-layer suite.

Every test in test_conformance.py runs once per backend:
- ``native``: the running OS's backend through the public ``gcalloc.os`` functions (POSIX mmap
  here; real kernel32 on Windows);
- ``windows-standin``: the Windows backend (gcalloc/os/windows.py) over the kernel32 stand-in
  (gcalloc/os/_kernel32_standin.py), which needs POSIX mmap and so is skipped on Windows, where
  the native run covers real kernel32;
- ``windows-wine``: the same backend over Wine's kernel32, through the bridge program in
  winebridge.py; its addresses live in the Wine process, so memory, resident set and faults are
  read there. Without Wine and mingw it is skipped, saying why, except in CI on Linux, where it
  fails (CI installs them; it must not go green by skipping).

``sysmem`` hands a test its backend wrapped in a ``Mem`` that remembers every reservation and
frees what the test left, so that no mapping outlives its test. Touches that must fault run as
scenarios (``run_scenario``): in a child process that must die of the fault, or for Wine in the
bridge, which performs the access under an exception handler.

``wine_kernel32`` is one bridge process (and one WINEPREFIX, made on first use) per session;
its teardown stops the prefix's wineserver.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from oshelpers import BACKENDS, STANDIN_SKIP, WINE, Mem, make_backend, wine_missing
from winebridge import Kernel32Bridge

import gcalloc.os as gos
from gcalloc.os import _kernel32_standin as standin


@pytest.fixture(scope="session")
def wine_kernel32(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel32Bridge]:
    wine_missing()
    bridge = Kernel32Bridge(tmp_path_factory.mktemp("wine"))
    try:
        yield bridge
    finally:
        bridge.close()


@pytest.fixture
def wine(wine_kernel32: Kernel32Bridge) -> Iterator[Kernel32Bridge]:
    """The session's bridge, with nothing of a test's left in it afterwards."""
    wine_kernel32.set_last_error(0)
    yield wine_kernel32
    wine_kernel32.release_mine()


@pytest.fixture
def sk() -> Iterator[standin.Kernel32StandIn]:
    """A fresh kernel32 stand-in, every reservation released afterwards."""
    if not standin.AVAILABLE:
        pytest.skip(STANDIN_SKIP)
    k = standin.Kernel32StandIn()
    yield k
    k.close()


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    if request.param == "windows-standin" and not standin.AVAILABLE:
        pytest.skip(STANDIN_SKIP)
    return request.param


@pytest.fixture
def sysmem(backend_name: str, request: pytest.FixtureRequest) -> Iterator[Mem]:
    bridge = request.getfixturevalue("wine") if backend_name == WINE else None
    m = Mem(backend_name, make_backend(backend_name, bridge))
    yield m
    m.close()


@pytest.fixture(autouse=True)
def _no_injected_failures() -> Iterator[None]:
    gos.clear_injected_failures()
    yield
    gos.clear_injected_failures()
