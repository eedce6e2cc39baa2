"""The OS memory layer: the only place gcalloc talks to the operating system.

Address space moves between four states (Go 1.16 runtime/malloc.go):

    None      unreserved and unmapped: the default state of any address.
    Reserved  owned by the heap; every access faults. Does not count against memory.
    Prepared  reserved and about to be usable; access is undefined (may fault, may read
              zero). Going to Ready is cheap.
    Ready     may be read and written.

    sys_alloc:   None -> Ready                 sys_free:  any -> None
    sys_reserve: None -> Reserved              sys_map:   Reserved -> Prepared
    sys_used:    Prepared -> Ready             sys_unused: Ready -> Prepared (contents lost)
    sys_fault:   Ready/Prepared -> Reserved (for debugging: every access faults)

The backend of the running OS is chosen once, at import, like psutil's per-OS modules; the
functions below are the backend's, wrapped only to honour ``inject_failure``. Nothing
OS-specific is visible above this package.

Accounting: ``sys_map``, ``sys_alloc`` and ``sys_free`` take a ``SysMemStat`` (or ``None``: do
not account) and move it by the bytes that changed state, so MemStats can say where every
mapped byte went.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from gcalloc.errors import InjectedFailure


class SysMemStat:
    """A byte counter for memory obtained from the OS (Go's sysMemStat).

    Invariant: ``value`` >= 0; it is the bytes currently mapped (Prepared or Ready) on behalf of
    whatever this counter names.
    """

    __slots__ = ("value", "name")

    def __init__(self, name: str = "", value: int = 0) -> None:
        self.name = name
        self.value = value

    def add(self, n: int) -> None:
        self.value += n

    def sub(self, n: int) -> None:
        self.value -= n

    def __repr__(self) -> str:
        return f"SysMemStat({self.name!r}, {self.value})"


def _select_backend() -> Any:
    if sys.platform.startswith("linux"):
        from gcalloc.os import linux as backend
    elif sys.platform == "darwin":
        from gcalloc.os import darwin as backend
    elif sys.platform.startswith("freebsd"):
        from gcalloc.os import freebsd as backend
    elif sys.platform == "win32":
        from gcalloc.os import windows as backend
    else:
        raise ImportError(f"gcalloc has no OS memory backend for {sys.platform!r}")
    return backend.backend()


backend = _select_backend()
"""The running OS's backend object (``name`` says which)."""

# --- fault injection ----------------------------------------------------------------------

_FAILABLE = (
    "sys_reserve", "sys_reserve_aligned", "sys_map", "sys_used", "sys_unused", "sys_fault",
    "sys_alloc", "sys_free",
)
_pending_failures: dict[str, int] = {}
_failure_lock = threading.Lock()


def inject_failure(name: str, count: int = 1) -> None:
    """Make the next ``count`` calls of OS function ``name`` fail as the OS would report it.

    Functions that return a sentinel on failure (``sys_reserve`` -> None, ``sys_alloc`` -> None,
    ``sys_reserve_aligned`` -> (None, 0)) return it; the others raise ``InjectedFailure``.
    Raises ValueError for an unknown name or a negative count.
    """
    if name not in _FAILABLE:
        raise ValueError(f"unknown OS function {name!r}; one of {', '.join(_FAILABLE)}")
    if count < 0:
        raise ValueError("count must be >= 0")
    with _failure_lock:
        if count:
            _pending_failures[name] = count
        else:
            _pending_failures.pop(name, None)


def clear_injected_failures() -> None:
    """Forget every pending injected failure."""
    with _failure_lock:
        _pending_failures.clear()


def _take_failure(name: str) -> bool:
    if not _pending_failures:  # the common case costs one dict truth test
        return False
    with _failure_lock:
        left = _pending_failures.get(name, 0)
        if not left:
            return False
        if left == 1:
            del _pending_failures[name]
        else:
            _pending_failures[name] = left - 1
        return True


def _failable(name: str, impl: Callable[..., Any], sentinel: Any = None,
              raises: bool = True) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if _pending_failures and _take_failure(name):
            if raises:
                raise InjectedFailure(12, f"{name}: injected failure (ENOMEM)")
            return sentinel
        return impl(*args)

    call.__name__ = name
    call.__doc__ = impl.__doc__
    return call


sys_reserve: Callable[[int | None, int], int | None] = _failable(
    "sys_reserve", backend.sys_reserve, None, raises=False)
sys_reserve_aligned: Callable[[int | None, int, int], tuple[int | None, int]] = _failable(
    "sys_reserve_aligned", backend.sys_reserve_aligned, (None, 0), raises=False)
sys_map: Callable[[int, int, SysMemStat | None], None] = _failable("sys_map", backend.sys_map)
sys_used: Callable[[int, int], None] = _failable("sys_used", backend.sys_used)
sys_unused: Callable[[int, int], None] = _failable("sys_unused", backend.sys_unused)
sys_fault: Callable[[int, int], None] = _failable("sys_fault", backend.sys_fault)
sys_alloc: Callable[[int, SysMemStat | None], int | None] = _failable(
    "sys_alloc", backend.sys_alloc, None, raises=False)
sys_free: Callable[[int, int, SysMemStat | None], None] = _failable("sys_free", backend.sys_free)
sys_huge_page: Callable[[int, int], None] = backend.sys_huge_page
sys_no_huge_page: Callable[[int, int], None] = backend.sys_no_huge_page

phys_page_size: int = backend.phys_page_size
"""The OS's page size in bytes, read from the OS."""
phys_huge_page_size: int = backend.phys_huge_page_size
"""Transparent huge page size in bytes, or 0 where the OS has none."""
alloc_granularity: int = backend.alloc_granularity
"""Granularity of a reservation's base address (page size on POSIX, 64 KiB on Windows)."""

__all__ = [
    "SysMemStat", "backend", "inject_failure", "clear_injected_failures",
    "sys_reserve", "sys_reserve_aligned", "sys_map", "sys_used", "sys_unused", "sys_fault",
    "sys_alloc", "sys_free", "sys_huge_page", "sys_no_huge_page",
    "phys_page_size", "phys_huge_page_size", "alloc_granularity",
]

goos: str = backend.name
"""The running OS as Go's GOOS names it ("linux", "darwin", "freebsd", "windows"): upper layers
choose Go's per-OS constants (such as the arena size) by it, as malloc.go does."""
__all__.append("goos")
