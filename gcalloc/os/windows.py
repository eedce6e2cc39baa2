"""The Windows backend: VirtualAlloc / VirtualFree through kernel32 (Go's runtime/mem_windows.go).

Windows separates reserving address space from committing memory to it, so the four states map
directly onto the OS:

    Reserved  MEM_RESERVE                         (sys_reserve, sys_reserve_aligned)
    Prepared  MEM_COMMIT, PAGE_READWRITE          (sys_map commits, as Go's sysMap does)
    Ready     MEM_COMMIT, PAGE_READWRITE          (sys_used commits again: a no-op if committed)
    Prepared  after sys_unused: MEM_DECOMMIT      (the pages leave the working set and the commit
                                                   charge; touching them faults until sys_used)
    Reserved  after sys_fault: MEM_DECOMMIT       (Go's sysFault is sysUnused: decommitted
                                                   reserved memory faults on every access)
    None      VirtualFree(base, 0, MEM_RELEASE)   (sys_free)

Rules of VirtualAlloc that shape this module:
- a reservation's base is a multiple of the allocation granularity (64 KiB); a requested base is
  rounded down to it, and reserving over an existing reservation fails;
- one VirtualFree(MEM_DECOMMIT) or VirtualAlloc(MEM_COMMIT) may not span two reservations, so a
  range that the heap merged from neighbouring reservations is (de)committed in successively
  smaller pieces, as Go does;
- a reservation is released whole, by its base, with size 0: ``sys_free(v, n, stat)`` must be
  given the base of a whole reservation (what sys_reserve, sys_reserve_aligned or sys_alloc
  returned), and it releases all of that reservation whatever ``n`` says (``n`` only moves the
  stat). Freeing part of a reservation, which POSIX allows, raises SysMemoryError here;
- no piece of a reservation can be released, so sys_reserve_aligned cannot trim: it reserves
  n + align to learn an aligned address, releases everything, and reserves exactly n there,
  retrying if another thread took the spot in between.

Huge pages: Windows large pages need SeLockMemoryPrivilege and are never transparent, so
``phys_huge_page_size`` is 0 and sys_huge_page / sys_no_huge_page do nothing.

The kernel32 object is a constructor parameter so that tests can run this module's logic on a
stand-in (gcalloc/os/_kernel32_standin.py) on any POSIX machine. The last error is read through
an injectable function: the real one is ``ctypes.get_last_error`` (kernel32 is loaded with
``use_last_error=True``, so ctypes saves the thread's error right after each call).

Invariants:
- every address and length given to the OS is a multiple of the page size read from
  GetSystemInfo (unaligned ranges raise SysMemoryError(EINVAL) before any call);
- a failure is returned as the state's sentinel (reserve/alloc: None, (None, 0)) or raised as
  SysMemoryError carrying the Windows error code in ``errno`` and its message; stats move only
  after the OS call succeeded.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

from gcalloc.errors import SysMemoryError

MEM_COMMIT = 0x1000
MEM_RESERVE = 0x2000
MEM_DECOMMIT = 0x4000
MEM_RELEASE = 0x8000
PAGE_NOACCESS = 0x01
PAGE_READWRITE = 0x04

ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_INVALID_PARAMETER = 87
ERROR_INVALID_ADDRESS = 487
ERROR_NOACCESS = 998
ERROR_COMMITMENT_LIMIT = 1455

_MESSAGES = {  # FormatMessage's text, for hosts without ctypes.FormatError (the stand-in)
    ERROR_NOT_ENOUGH_MEMORY: "Not enough memory resources are available to process this command.",
    ERROR_INVALID_PARAMETER: "The parameter is incorrect.",
    ERROR_INVALID_ADDRESS: "Attempt to access invalid address.",
    ERROR_NOACCESS: "Invalid access to memory location.",
    ERROR_COMMITMENT_LIMIT: "The paging file is too small for this operation to complete.",
}

_ALIGN_RETRIES = 100  # Go's sysReserveAligned gives up (throws) after 100 lost races


class SYSTEM_INFO(ctypes.Structure):  # noqa: N801 - the Win32 name
    """GetSystemInfo's out-parameter (the dwOemId union is read as its two WORDs)."""

    _fields_ = [
        ("wProcessorArchitecture", ctypes.c_uint16),
        ("wReserved", ctypes.c_uint16),
        ("dwPageSize", ctypes.c_uint32),
        ("lpMinimumApplicationAddress", ctypes.c_void_p),
        ("lpMaximumApplicationAddress", ctypes.c_void_p),
        ("dwActiveProcessorMask", ctypes.c_size_t),
        ("dwNumberOfProcessors", ctypes.c_uint32),
        ("dwProcessorType", ctypes.c_uint32),
        ("dwAllocationGranularity", ctypes.c_uint32),
        ("wProcessorLevel", ctypes.c_uint16),
        ("wProcessorRevision", ctypes.c_uint16),
    ]


def load_kernel32() -> Any:
    """The real kernel32 with the prototypes this module calls (Windows only)."""
    if sys.platform != "win32":
        raise ImportError("kernel32 exists only on Windows; pass a stand-in to WindowsMemory")
    k = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    k.VirtualAlloc.restype = ctypes.c_void_p
    k.VirtualAlloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_uint32]
    k.VirtualFree.restype = ctypes.c_int
    k.VirtualFree.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32]
    k.GetSystemInfo.restype = None
    k.GetSystemInfo.argtypes = [ctypes.POINTER(SYSTEM_INFO)]
    return k


def format_error(code: int) -> str:
    """The system's message for a Windows error code."""
    fmt = getattr(ctypes, "FormatError", None)  # only on Windows
    if fmt is not None:
        return fmt(code).strip()
    return _MESSAGES.get(code, f"Windows error {code}")


class WindowsMemory:
    """The sys_* functions over kernel32 (or a stand-in with the same calls).

    ``kernel32`` needs VirtualAlloc, VirtualFree and GetSystemInfo with Win32's signatures
    (addresses as ints, None for NULL). ``last_error`` returns the error of the last failed call;
    it defaults to ``ctypes.get_last_error`` for the real kernel32 and to
    ``kernel32.GetLastError`` for anything else.
    """

    name = "windows"

    def __init__(self, kernel32: Any = None,
                 last_error: Callable[[], int] | None = None) -> None:
        if kernel32 is None:
            kernel32 = load_kernel32()
            if last_error is None:
                last_error = ctypes.get_last_error  # type: ignore[attr-defined]
        elif last_error is None:
            last_error = kernel32.GetLastError
        self.k = kernel32
        self._last_error = last_error
        info = SYSTEM_INFO()
        kernel32.GetSystemInfo(ctypes.pointer(info))
        self.phys_page_size: int = info.dwPageSize
        self.alloc_granularity: int = info.dwAllocationGranularity
        self.phys_huge_page_size: int = 0

    # --- raw calls ---------------------------------------------------------------------

    def _valloc(self, v: int | None, n: int, kind: int, prot: int) -> int | None:
        return self.k.VirtualAlloc(v or None, n, kind, prot) or None

    def _vfree(self, v: int, n: int, kind: int) -> bool:
        return bool(self.k.VirtualFree(v, n, kind))

    def _fail(self, what: str, v: int | None, n: int) -> SysMemoryError:
        code = self._last_error()
        where = f"{v:#x}" if v is not None else "any"
        return SysMemoryError(code, f"{what}({where}, {n:#x}): {format_error(code)}")

    def _check_range(self, what: str, v: int, n: int) -> None:
        mask = self.phys_page_size - 1
        if v & mask or n & mask or n <= 0:
            raise SysMemoryError(22, f"{what}({v:#x}, {n:#x}): range not page-aligned")

    def _reserve_at(self, v: int, n: int) -> int | None:
        """Reserve exactly [v, v+n), or None (nothing is left reserved on failure)."""
        p = self._valloc(v, n, MEM_RESERVE, PAGE_READWRITE)
        if p is not None and p != v:  # v was not granularity-aligned: Windows rounded it down
            self._vfree(p, 0, MEM_RELEASE)
            return None
        return p

    def _in_pieces(self, v: int, n: int, call: Callable[[int, int], bool]) -> bool:
        """Apply ``call`` to [v, v+n) in successively smaller pieces (Go's sysUnusedOS loop).

        Windows refuses one (de)commit that spans reservations; halving the piece until the call
        succeeds finds each reservation's boundary in O(log n) calls. False if some page fails.
        """
        page = self.phys_page_size
        while n > 0:
            small = n
            while small >= page and not call(v, small):
                small = (small // 2) & ~(page - 1)
            if small < page:
                return False
            v += small
            n -= small
        return True

    def _commit(self, v: int, n: int) -> bool:
        def one(a: int, m: int) -> bool:
            return self._valloc(a, m, MEM_COMMIT, PAGE_READWRITE) == a
        return one(v, n) or self._in_pieces(v, n, one)

    def _decommit(self, v: int, n: int) -> bool:
        def one(a: int, m: int) -> bool:
            return self._vfree(a, m, MEM_DECOMMIT)
        return one(v, n) or self._in_pieces(v, n, one)

    # --- the state transitions ---------------------------------------------------------

    def sys_reserve(self, hint: int | None, n: int) -> int | None:
        """None -> Reserved. Try the hint first (fails if any of it is reserved), then anywhere."""
        if hint:
            p = self._valloc(hint, n, MEM_RESERVE, PAGE_READWRITE)
            if p is not None:
                return p
        return self._valloc(None, n, MEM_RESERVE, PAGE_READWRITE)

    def sys_reserve_aligned(self, hint: int | None, n: int, align: int) -> tuple[int | None, int]:
        """Reserve exactly ``n`` bytes at a multiple of ``align``, as one reservation.

        Release-and-retry (Go's sysReserveAligned on Windows): reserve n + align anywhere, note
        the aligned address inside, release it all, reserve n at that address. Another thread
        may take the spot in between; then try again, up to a limit, and return (None, 0).
        """
        if align & (align - 1) or align < self.phys_page_size:
            raise SysMemoryError(22, f"sys_reserve_aligned: bad alignment {align:#x}")
        if align <= self.alloc_granularity:  # every reservation is that aligned already
            p = self.sys_reserve(hint, n)
            return (p, n) if p is not None else (None, 0)
        if hint and hint & (align - 1) == 0:
            p = self._reserve_at(hint, n)
            if p is not None:
                return p, n
        for _ in range(_ALIGN_RETRIES):
            p = self._valloc(None, n + align, MEM_RESERVE, PAGE_READWRITE)
            if p is None:
                return None, 0
            if not self._vfree(p, 0, MEM_RELEASE):
                raise self._fail("sys_reserve_aligned", p, n + align)
            q = self._reserve_at((p + align - 1) & ~(align - 1), n)
            if q is not None:
                return q, n
        return None, 0

    def _commit_or_raise(self, what: str, v: int, n: int) -> None:
        if self._commit(v, n):
            return
        err = self._fail(what, v, n)  # read the last error before the rollback's calls
        # A prefix may be committed. Decommitting it restores the caller's state: before sys_map
        # the range was Reserved, and Prepared memory may be committed or not (its contents are
        # undefined), so a failed call leaves no commit charge behind.
        self._decommit(v, n)
        raise err

    def sys_map(self, v: int, n: int, stat) -> None:
        """Reserved -> Prepared: commit read/write (zeroed) pages, as Go's sysMap does."""
        self._check_range("sys_map", v, n)
        self._commit_or_raise("sys_map", v, n)
        if stat is not None:
            stat.add(n)

    def sys_used(self, v: int, n: int) -> None:
        """Prepared -> Ready: commit (again); pages decommitted by sys_unused come back zero."""
        self._check_range("sys_used", v, n)
        self._commit_or_raise("sys_used", v, n)

    def sys_unused(self, v: int, n: int) -> None:
        """Ready -> Prepared: decommit; the contents are lost and access faults until sys_used."""
        self._check_range("sys_unused", v, n)
        if not self._decommit(v, n):
            raise self._fail("sys_unused", v, n)

    def sys_fault(self, v: int, n: int) -> None:
        """Ready/Prepared -> Reserved: decommit, so that every access faults."""
        self._check_range("sys_fault", v, n)
        if not self._decommit(v, n):
            raise self._fail("sys_fault", v, n)

    def sys_alloc(self, n: int, stat) -> int | None:
        """None -> Ready: a fresh committed read/write reservation anywhere, or None."""
        p = self._valloc(None, n, MEM_COMMIT | MEM_RESERVE, PAGE_READWRITE)
        if p is not None and stat is not None:
            stat.add(n)
        return p

    def sys_free(self, v: int, n: int, stat) -> None:
        """Any -> None: release the whole reservation whose base is ``v`` (see the module doc)."""
        self._check_range("sys_free", v, n)
        if not self._vfree(v, 0, MEM_RELEASE):
            raise self._fail("sys_free", v, n)
        if stat is not None:
            stat.sub(n)

    def sys_huge_page(self, v: int, n: int) -> None:
        """No transparent huge pages on Windows: nothing to advise."""

    def sys_no_huge_page(self, v: int, n: int) -> None:
        """No transparent huge pages on Windows: nothing to advise."""


def backend() -> WindowsMemory:
    return WindowsMemory()
