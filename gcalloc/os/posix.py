"""The POSIX memory backend shared by Linux, macOS and FreeBSD: mmap, munmap, mprotect-free
remapping and madvise through ctypes on the C library.

Each OS module (linux.py, darwin.py, freebsd.py) supplies a ``PosixConstants`` with its own
flag values and advice choices; this module holds the calls, which are the same everywhere.

Invariants:
- every address and length passed to the OS is a multiple of the physical page size (the
  callers above work in 8 KiB heap pages, a multiple of every page size we support; ranges
  narrower than a physical page are rounded inward for advice and skipped if empty);
- a failure of the OS is either returned as the state's sentinel (reserve/alloc: None) or
  raised as SysMemoryError carrying errno and the decoded message, never ignored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

from gcalloc.errors import SysMemoryError

PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2


@dataclass(frozen=True)
class PosixConstants:
    """One OS's numbers for the calls below (from its <sys/mman.h>)."""

    name: str
    MAP_PRIVATE: int
    MAP_FIXED: int
    MAP_ANON: int
    MAP_NORESERVE: int        # 0 where the OS has no such flag
    MADV_UNUSED: int          # advice that returns Ready pages to the OS (sys_unused)
    MADV_REUSE: int | None    # advice that undoes MADV_UNUSED (sys_used), None if not needed
    MADV_HUGEPAGE: int | None
    MADV_NOHUGEPAGE: int | None
    huge_page_size_path: str | None = None


def _load_libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.restype = ctypes.c_int
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_MAP_FAILED = ctypes.c_void_p(-1).value


class PosixMemory:
    """The sys_* functions over one OS's constants. One instance per process."""

    def __init__(self, consts: PosixConstants) -> None:
        self.name = consts.name
        self.c = consts
        self.libc = _load_libc()
        self.phys_page_size = os.sysconf("SC_PAGE_SIZE")
        self.phys_huge_page_size = self._read_huge_page_size()
        self.alloc_granularity = self.phys_page_size

    def _read_huge_page_size(self) -> int:
        path = self.c.huge_page_size_path
        if not path:
            return 0
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return 0

    # --- raw calls ---------------------------------------------------------------------

    def _mmap(self, v: int | None, n: int, prot: int, flags: int) -> int | None:
        p = self.libc.mmap(v or None, n, prot, flags, -1, 0)
        if p is None or p == _MAP_FAILED:
            return None
        return p

    def _fail(self, what: str, v: int | None, n: int) -> SysMemoryError:
        err = ctypes.get_errno()
        where = f"{v:#x}" if v is not None else "any"
        return SysMemoryError(err, f"{what}({where}, {n:#x}): {os.strerror(err)}")

    def _check_range(self, what: str, v: int, n: int) -> None:
        mask = self.phys_page_size - 1
        if v & mask or n & mask or n <= 0:
            raise SysMemoryError(22, f"{what}({v:#x}, {n:#x}): range not page-aligned")

    def _madvise(self, what: str, v: int, n: int, advice: int) -> None:
        if self.libc.madvise(v, n, advice) != 0:
            raise self._fail(what, v, n)

    # --- the state transitions ---------------------------------------------------------

    def sys_reserve(self, hint: int | None, n: int) -> int | None:
        """None -> Reserved. The hint is honoured when that range is free, else any address."""
        c = self.c
        return self._mmap(hint, n, PROT_NONE, c.MAP_ANON | c.MAP_PRIVATE | c.MAP_NORESERVE)

    def sys_reserve_aligned(self, hint: int | None, n: int, align: int) -> tuple[int | None, int]:
        """Reserve ``n`` bytes aligned to ``align``: over-reserve, then trim both ends."""
        if align & (align - 1) or align < self.phys_page_size:
            raise SysMemoryError(22, f"sys_reserve_aligned: bad alignment {align:#x}")
        if hint is not None and hint & (align - 1) == 0:
            p = self.sys_reserve(hint, n)
            if p is not None and p & (align - 1) == 0:
                return p, n
            if p is not None:
                self.libc.munmap(p, n)
        p = self.sys_reserve(None, n + align)
        if p is None:
            return None, 0
        base = (p + align - 1) & ~(align - 1)
        if base > p:
            self.libc.munmap(p, base - p)
        end = p + n + align
        if end > base + n:
            self.libc.munmap(base + n, end - (base + n))
        return base, n

    def sys_map(self, v: int, n: int, stat) -> None:
        """Reserved -> Prepared (mapped read/write, zero on first touch)."""
        self._check_range("sys_map", v, n)
        c = self.c
        p = self._mmap(v, n, PROT_READ | PROT_WRITE, c.MAP_ANON | c.MAP_FIXED | c.MAP_PRIVATE)
        if p is None:
            raise self._fail("sys_map", v, n)
        if p != v:
            raise SysMemoryError(0, f"sys_map({v:#x}, {n:#x}): OS mapped at {p:#x}")
        if stat is not None:
            stat.add(n)

    def sys_used(self, v: int, n: int) -> None:
        """Prepared -> Ready: undo sys_unused where the OS needs to be told."""
        self._check_range("sys_used", v, n)
        if self.c.MADV_REUSE is not None:
            self._madvise("sys_used", v, n, self.c.MADV_REUSE)

    def sys_unused(self, v: int, n: int) -> None:
        """Ready -> Prepared: the contents are forfeit and the pages go back to the OS."""
        self._check_range("sys_unused", v, n)
        self._madvise("sys_unused", v, n, self.c.MADV_UNUSED)

    def sys_fault(self, v: int, n: int) -> None:
        """Any -> Reserved: replace the range by an inaccessible mapping."""
        self._check_range("sys_fault", v, n)
        c = self.c
        p = self._mmap(v, n, PROT_NONE, c.MAP_ANON | c.MAP_FIXED | c.MAP_PRIVATE | c.MAP_NORESERVE)
        if p is None:
            raise self._fail("sys_fault", v, n)

    def sys_alloc(self, n: int, stat) -> int | None:
        """None -> Ready: fresh zeroed read/write memory anywhere, or None."""
        c = self.c
        p = self._mmap(None, n, PROT_READ | PROT_WRITE, c.MAP_ANON | c.MAP_PRIVATE)
        if p is not None and stat is not None:
            stat.add(n)
        return p

    def sys_free(self, v: int, n: int, stat) -> None:
        """Any -> None."""
        self._check_range("sys_free", v, n)
        if self.libc.munmap(v, n) != 0:
            raise self._fail("sys_free", v, n)
        if stat is not None:
            stat.sub(n)

    def sys_huge_page(self, v: int, n: int) -> None:
        """Advise transparent huge pages for the range (no-op where the OS has none)."""
        self._advise_huge(v, n, self.c.MADV_HUGEPAGE)

    def sys_no_huge_page(self, v: int, n: int) -> None:
        """Advise against transparent huge pages for the range."""
        self._advise_huge(v, n, self.c.MADV_NOHUGEPAGE)

    def _advise_huge(self, v: int, n: int, advice: int | None) -> None:
        size = self.phys_huge_page_size
        if advice is None or not size:
            return
        # Round inward: advising beyond the range could change memory we do not own.
        beg = (v + size - 1) & ~(size - 1)
        end = (v + n) & ~(size - 1)
        if beg < end:
            self.libc.madvise(beg, end - beg, advice)  # advice only: failure is harmless
