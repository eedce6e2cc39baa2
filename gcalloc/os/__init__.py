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
functions below are the backend's, wrapped only to honour fault injection (``inject_failure``,
``inject_nth_failure``) and ``record_calls``; ``bind_backend`` lets tests bind another
backend. Nothing OS-specific is visible above this package.

Accounting: ``sys_map``, ``sys_alloc`` and ``sys_free`` take a ``SysMemStat`` (or ``None``: do
not account) and move it by the bytes that changed state, so MemStats can say where every
mapped byte went.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gcalloc.errors import InjectedFailure, InvalidArgument


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
# The k-th call (0-based) of any function in _nth_names fails: calls left before it, or None.
_nth_left: int | None = None
_nth_names: frozenset[str] = frozenset(_FAILABLE)
# Lists receiving the name of every failable call while record_calls() blocks run.
_recorders: list[list[str]] = []
# Whether any of the three above is set: the wrappers' one test on the common path.
_armed = False


def _rearm() -> None:
    global _armed
    _armed = bool(_pending_failures) or _nth_left is not None or bool(_recorders)


def _check_names(names: Iterable[str]) -> frozenset[str]:
    out = frozenset(names)
    for name in out:
        if name not in _FAILABLE:
            raise ValueError(f"unknown OS function {name!r}; one of {', '.join(_FAILABLE)}")
    return out


def inject_failure(name: str, count: int = 1) -> None:
    """Make the next ``count`` calls of OS function ``name`` fail as the OS would report it.

    Functions that return a sentinel on failure (``sys_reserve`` -> None, ``sys_alloc`` -> None,
    ``sys_reserve_aligned`` -> (None, 0)) return it; the others raise ``InjectedFailure``.
    Raises ValueError for an unknown name or a negative count.
    """
    _check_names([name])
    if isinstance(count, bool) or not isinstance(count, int):
        raise InvalidArgument(f"count must be an int, not {type(count).__name__}")
    if count < 0:
        raise ValueError("count must be >= 0")
    with _failure_lock:
        if count:
            _pending_failures[name] = count
        else:
            _pending_failures.pop(name, None)
        _rearm()


def inject_nth_failure(k: int, names: Iterable[str] | None = None) -> None:
    """Make the ``k``-th call from now (0-based) of any OS function in ``names`` (default:
    every failable one) fail as ``inject_failure`` would; calls before it go through. With
    ``record_calls`` this enumerates every OS call site of an operation: count its calls,
    then fail each in turn. Replaces a previous pending k-th failure. Raises ValueError."""
    global _nth_left, _nth_names
    chosen = _check_names(_FAILABLE if names is None else names)
    if k < 0:
        raise ValueError("k must be >= 0")
    with _failure_lock:
        _nth_left, _nth_names = k, chosen
        _rearm()


@contextlib.contextmanager
def record_calls() -> Iterator[list[str]]:
    """A block during which every call of a failable OS function (any thread) appends its
    name to the list yielded, in call order. Calls that fail by injection are recorded too."""
    calls: list[str] = []
    with _failure_lock:
        _recorders.append(calls)
        _rearm()
    try:
        yield calls
    finally:
        with _failure_lock:
            _recorders.remove(calls)
            _rearm()


def clear_injected_failures() -> None:
    """Forget every pending injected failure (by name and k-th)."""
    global _nth_left
    with _failure_lock:
        _pending_failures.clear()
        _nth_left = None
        _rearm()


def _take_failure(name: str) -> bool:
    global _nth_left
    with _failure_lock:
        for calls in _recorders:
            calls.append(name)
        if _nth_left is not None and name in _nth_names:
            if _nth_left == 0:
                _nth_left = None
                _rearm()
                return True
            _nth_left -= 1
        left = _pending_failures.get(name, 0)
        if not left:
            return False
        if left == 1:
            del _pending_failures[name]
            _rearm()
        else:
            _pending_failures[name] = left - 1
        return True


def _failable(name: str, impl: Callable[..., Any], sentinel: Any = None,
              raises: bool = True) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if _armed and _take_failure(name):  # the common case costs one global truth test
            if raises:
                raise InjectedFailure(12, f"{name}: injected failure (ENOMEM)")
            return sentinel
        return impl(*args)

    call.__name__ = name
    call.__doc__ = impl.__doc__
    return call


sys_reserve: Callable[[int | None, int], int | None]
sys_reserve_aligned: Callable[[int | None, int, int], tuple[int | None, int]]
sys_map: Callable[[int, int, SysMemStat | None], None]
sys_used: Callable[[int, int], None]
sys_unused: Callable[[int, int], None]
sys_fault: Callable[[int, int], None]
sys_alloc: Callable[[int, SysMemStat | None], int | None]
sys_free: Callable[[int, int, SysMemStat | None], None]
sys_huge_page: Callable[[int, int], None]
sys_no_huge_page: Callable[[int, int], None]
phys_page_size: int
"""The OS's page size in bytes, read from the OS."""
phys_huge_page_size: int
"""Transparent huge page size in bytes, or 0 where the OS has none."""
alloc_granularity: int
"""Granularity of a reservation's base address (page size on POSIX, 64 KiB on Windows)."""


def bind_backend(b: Any) -> Any:
    """Route every sys_* function (and the page sizes) through backend ``b``; returns the
    backend bound before. For tests that run whole heaps over another OS's logic (the Windows
    backend on the kernel32 stand-in). Layers above call ``gcalloc.os.sys_*`` at call time, so
    a heap created after this call uses ``b``; one created before must be closed before the
    old backend comes back. ``goos`` and the constants chosen by it do not change."""
    global sys_reserve, sys_reserve_aligned, sys_map, sys_used, sys_unused, sys_fault
    global sys_alloc, sys_free, sys_huge_page, sys_no_huge_page
    global phys_page_size, phys_huge_page_size, alloc_granularity, _bound
    old = _bound
    sys_reserve = _failable("sys_reserve", b.sys_reserve, None, raises=False)
    sys_reserve_aligned = _failable("sys_reserve_aligned", b.sys_reserve_aligned, (None, 0),
                                    raises=False)
    sys_map = _failable("sys_map", b.sys_map)
    sys_used = _failable("sys_used", b.sys_used)
    sys_unused = _failable("sys_unused", b.sys_unused)
    sys_fault = _failable("sys_fault", b.sys_fault)
    sys_alloc = _failable("sys_alloc", b.sys_alloc, None, raises=False)
    sys_free = _failable("sys_free", b.sys_free)
    sys_huge_page = b.sys_huge_page
    sys_no_huge_page = b.sys_no_huge_page
    phys_page_size = b.phys_page_size
    phys_huge_page_size = b.phys_huge_page_size
    alloc_granularity = b.alloc_granularity
    _bound = b
    return old


_bound: Any = None
bind_backend(backend)


__all__ = [
    "SysMemStat", "backend", "inject_failure", "inject_nth_failure", "record_calls",
    "clear_injected_failures", "bind_backend",
    "sys_reserve", "sys_reserve_aligned", "sys_map", "sys_used", "sys_unused", "sys_fault",
    "sys_alloc", "sys_free", "sys_huge_page", "sys_no_huge_page",
    "phys_page_size", "phys_huge_page_size", "alloc_granularity",
]

goos: str = backend.name
"""The running OS as Go's GOOS names it ("linux", "darwin", "freebsd", "windows"): upper layers
choose Go's per-OS constants (such as the arena size) by it, as malloc.go does."""
__all__.append("goos")
