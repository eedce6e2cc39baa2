"""A stand-in for kernel32's virtual-memory calls, built on POSIX mmap, for testing only.

This is NOT Windows. It lets the Windows backend (windows.py) run on a POSIX machine so that
its logic (release-and-retry alignment, (de)committing in pieces across reservations, error
reporting through the last error) is tested against the rules of VirtualAlloc. The rules and
their error codes are those that Wine's kernel32 shows (tests/os/test_wine_differential.py
replays random call sequences against both and compares every result and last error):

- Addresses are rounded down to a page (to the allocation granularity, 64 KiB, when reserving)
  and sizes cover every page containing a byte of [address, address + size). Size 0, a range
  below 64 KiB or past the highest application address, an unknown allocation type or an
  unknown protection fail with ERROR_INVALID_PARAMETER.
- MEM_RESERVE (or MEM_COMMIT with no address) makes a reservation; with no address the
  stand-in picks a 64 KiB-aligned one. Reserving over any part of an existing reservation fails
  with ERROR_INVALID_ADDRESS, and so does a requested range the host has already mapped for
  something else. MEM_RESERVE | MEM_COMMIT commits the whole new reservation.
- MEM_COMMIT with an address commits pages inside one reservation; pages outside every
  reservation, or a range crossing out of its reservation, fail with ERROR_INVALID_ADDRESS
  (checked before the protection). Committing committed pages keeps their contents and sets
  the protection; newly committed pages read zero. MEM_TOP_DOWN is accepted and ignored.
- VirtualFree: an address in no reservation fails with ERROR_INVALID_PARAMETER. MEM_RELEASE
  needs size 0 (else ERROR_INVALID_PARAMETER) and the reservation's base page (else
  ERROR_INVALID_ADDRESS), and releases all of it. MEM_DECOMMIT decommits the pages of
  [address, address + size) (size 0: the whole reservation, given its base page, else
  ERROR_INVALID_ADDRESS); a range running past the reservation's end fails with
  ERROR_INVALID_PARAMETER. Decommitting pages that are not committed is allowed.
- VirtualProtect: a NULL old-protection pointer fails with ERROR_NOACCESS before anything is
  looked at; the range must lie in one reservation (ERROR_INVALID_PARAMETER) and its pages be
  committed (ERROR_INVALID_ADDRESS; size 0 means the address's page); it stores the first
  page's old protection.
- VirtualQuery: a buffer shorter than MEMORY_BASIC_INFORMATION fails with ERROR_BAD_LENGTH, an
  address past the highest application address with ERROR_INVALID_PARAMETER. Otherwise it
  describes the run of pages from the address's page that share state and protection: in a
  reservation (MEM_COMMIT with its protection, or MEM_RESERVE with protection 0; MEM_PRIVATE;
  the reservation's base and the protection it was reserved with), or free (MEM_FREE,
  PAGE_NOACCESS, up to the next reservation the stand-in holds).
- Protections: PAGE_NOACCESS, PAGE_READONLY, PAGE_READWRITE and the three PAGE_EXECUTE ones
  (PAGE_EXECUTE pages can be read, as under Wine); anything else (PAGE_WRITECOPY too) is
  ERROR_INVALID_PARAMETER.
- The last error is set by a failing call and left alone by a succeeding one (as Win32 does
  for these calls). ``get_last_error`` / ``set_last_error`` play ``ctypes.get_last_error`` /
  ``ctypes.set_last_error``, the seam windows.py reads the error through.

The memory is real: committed pages are mapped with the host protection matching theirs and
count in the RSS; reserved and decommitted pages are PROT_NONE mappings with no pages behind
them, so touching them faults (SIGSEGV/SIGBUS) as it would on Windows (an access violation).
Decommitting replaces the pages with a fresh PROT_NONE mapping, so they leave the RSS at once
and read zero when committed again.

What it does not model: the commit charge and its limit (ERROR_COMMITMENT_LIMIT), placeholders,
MEM_RESET, MEM_WRITE_WATCH, large pages, the PAGE_GUARD / PAGE_NOCACHE / PAGE_WRITECOMBINE
modifiers (refused with ERROR_INVALID_PARAMETER; Wine accepts them), other processes, and the
address space the host uses for itself (a free region ends at the next reservation the
stand-in made). Where the host page is larger than 4 KiB (Apple silicon: 16 KiB), the
stand-in's page is the host's, and GetSystemInfo says so; a host that refuses writable and
executable pages (macOS without MAP_JIT) fails PAGE_EXECUTE_READWRITE with
ERROR_NOT_ENOUGH_MEMORY. Addresses come from the host's mmap, so hints behave like Linux/macOS
hints, which Windows does not promise.

Invariant: ``_regions`` maps each reservation's base to its record; the records never overlap,
and the host mapping of [base, base + size) exists exactly while the record does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

MEM_COMMIT = 0x1000
MEM_RESERVE = 0x2000
MEM_DECOMMIT = 0x4000
MEM_RELEASE = 0x8000
MEM_FREE = 0x10000  # VirtualQuery states and types
MEM_PRIVATE = 0x20000
PAGE_NOACCESS = 0x01
PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
PAGE_EXECUTE = 0x10
PAGE_EXECUTE_READ = 0x20
PAGE_EXECUTE_READWRITE = 0x40
MEM_TOP_DOWN = 0x100000

ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_BAD_LENGTH = 24
ERROR_INVALID_PARAMETER = 87
ERROR_INVALID_ADDRESS = 487
ERROR_NOACCESS = 998

ALLOCATION_GRANULARITY = 64 << 10
WINDOWS_PAGE_SIZE = 4 << 10
MIN_APPLICATION_ADDRESS = 0x10000
MAX_APPLICATION_ADDRESS = 0x7FFFFFFEFFFF

_PROT_NONE, _PROT_READ, _PROT_WRITE, _PROT_EXEC = 0, 1, 2, 4
_HOST_PROT = {  # Win32 protection -> host mprotect bits
    PAGE_NOACCESS: _PROT_NONE,
    PAGE_READONLY: _PROT_READ,
    PAGE_READWRITE: _PROT_READ | _PROT_WRITE,
    PAGE_EXECUTE: _PROT_READ | _PROT_EXEC,  # readable, as Wine (and x86 Windows) have it
    PAGE_EXECUTE_READ: _PROT_READ | _PROT_EXEC,
    PAGE_EXECUTE_READWRITE: _PROT_READ | _PROT_WRITE | _PROT_EXEC,
}
_USER_LIMIT = MAX_APPLICATION_ADDRESS + 1
_UNCOMMITTED = 0  # a page's entry in _Reservation.pages when it is only reserved

AVAILABLE = os.name == "posix"
"""Whether the stand-in can run here (it needs POSIX mmap)."""


class MEMORY_BASIC_INFORMATION(ctypes.Structure):  # noqa: N801 - the Win32 name (64-bit)
    """VirtualQuery's out-parameter."""

    _fields_ = [
        ("BaseAddress", ctypes.c_void_p),
        ("AllocationBase", ctypes.c_void_p),
        ("AllocationProtect", ctypes.c_uint32),
        ("PartitionId", ctypes.c_uint16),
        ("RegionSize", ctypes.c_size_t),
        ("State", ctypes.c_uint32),
        ("Protect", ctypes.c_uint32),
        ("Type", ctypes.c_uint32),
    ]


class _Win32Error(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _Reservation:
    base: int
    size: int
    pages: bytearray  # per page: _UNCOMMITTED or the PAGE_* protection it was committed with
    protect: int  # the protection it was reserved with (VirtualQuery's AllocationProtect)

    @property
    def end(self) -> int:
        return self.base + self.size


def _host_constants() -> Any:
    if sys.platform.startswith("linux"):
        from gcalloc.os.linux import LINUX as c
    elif sys.platform == "darwin":
        from gcalloc.os.darwin import DARWIN as c
    elif sys.platform.startswith("freebsd"):
        from gcalloc.os.freebsd import FREEBSD as c
    else:
        raise OSError(f"the kernel32 stand-in needs POSIX mmap; {sys.platform!r} has none")
    return c


def _load_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mprotect.restype = ctypes.c_int
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_MAP_FAILED = ctypes.c_void_p(-1).value


def out_target(out: Any) -> Any:
    """The object behind a ctypes pointer() or byref() out-parameter (None for NULL)."""
    target = getattr(out, "contents", None)
    if target is None:
        target = getattr(out, "_obj", None)  # ctypes.byref(x)
    return target


def _store(out: Any, value: int) -> bool:
    """Write through a ctypes pointer or byref() out-parameter; False if there is none."""
    target = out_target(out)
    if target is None:
        return False
    target.value = value
    return True


class Kernel32StandIn:
    """A stand-in for kernel32 (see the module doc): VirtualAlloc, VirtualFree, VirtualProtect,
    VirtualQuery, GetSystemInfo, GetLastError and SetLastError over host mmap/munmap/mprotect."""

    def __init__(self) -> None:
        self._c = _host_constants()
        self._libc = _load_libc()
        self.page_size = max(WINDOWS_PAGE_SIZE, os.sysconf("SC_PAGE_SIZE"))
        self._regions: dict[int, _Reservation] = {}
        self._lock = threading.RLock()
        self._last_error = 0

    # --- the last error (GetLastError/SetLastError and the ctypes-style seam) -----------

    def GetLastError(self) -> int:  # noqa: N802 - Win32 names
        return self._last_error

    def SetLastError(self, code: int) -> None:  # noqa: N802
        self._last_error = code

    def get_last_error(self) -> int:
        """Like ``ctypes.get_last_error``: the error the last failing call left."""
        return self._last_error

    def set_last_error(self, code: int) -> int:
        """Like ``ctypes.set_last_error``: set it, return the old value."""
        old, self._last_error = self._last_error, code
        return old

    # --- kernel32 -------------------------------------------------------------------------

    def GetSystemInfo(self, info: Any) -> None:  # noqa: N802
        """Fill a SYSTEM_INFO given by ctypes.pointer() or ctypes.byref()."""
        si = out_target(info)
        si.dwPageSize = self.page_size
        si.dwAllocationGranularity = ALLOCATION_GRANULARITY
        si.lpMinimumApplicationAddress = MIN_APPLICATION_ADDRESS
        si.lpMaximumApplicationAddress = MAX_APPLICATION_ADDRESS
        si.dwNumberOfProcessors = os.cpu_count() or 1

    def VirtualAlloc(self, address: int | None, size: int, allocation_type: int,  # noqa: N802
                     protect: int) -> int | None:
        """The base of the reserved region (or of the committed pages), or None (NULL)."""
        with self._lock:
            try:
                return self._virtual_alloc(address or 0, size, allocation_type, protect)
            except _Win32Error as e:
                self._last_error = e.code
                return None

    def VirtualFree(self, address: int | None, size: int, free_type: int) -> int:  # noqa: N802
        """1 on success, 0 on failure (see GetLastError)."""
        with self._lock:
            try:
                self._virtual_free(address or 0, size, free_type)
                return 1
            except _Win32Error as e:
                self._last_error = e.code
                return 0

    def VirtualProtect(self, address: int | None, size: int, new_protect: int,  # noqa: N802
                       old_protect: Any) -> int:
        """1 on success (the first page's old protection is stored through ``old_protect``)."""
        with self._lock:
            try:
                if out_target(old_protect) is None:
                    raise _Win32Error(ERROR_NOACCESS)
                _store(old_protect, self._virtual_protect(address or 0, size, new_protect))
                return 1
            except _Win32Error as e:
                self._last_error = e.code
                return 0

    def VirtualQuery(self, address: int | None, buffer: Any, length: int) -> int:  # noqa: N802
        """The bytes written to the MEMORY_BASIC_INFORMATION behind ``buffer``, or 0."""
        with self._lock:
            try:
                if length < ctypes.sizeof(MEMORY_BASIC_INFORMATION):
                    raise _Win32Error(ERROR_BAD_LENGTH)
                mbi = out_target(buffer)
                if mbi is None:
                    raise _Win32Error(ERROR_NOACCESS)
                self._virtual_query(address or 0, mbi)
                return ctypes.sizeof(MEMORY_BASIC_INFORMATION)
            except _Win32Error as e:
                self._last_error = e.code
                return 0

    # --- stand-in-only introspection (not kernel32) --------------------------------------

    def reservations(self) -> list[tuple[int, int]]:
        """(base, size) of every live reservation, by address."""
        with self._lock:
            return sorted((r.base, r.size) for r in self._regions.values())

    def committed(self, address: int, size: int) -> bool:
        """Whether every page of [address, address + size) is committed."""
        with self._lock:
            first, last = self._pages(address, size)
            r = self._containing(first)
            if r is None or last > r.end:
                return False
            return _UNCOMMITTED not in r.pages[self._index(r, first):self._index(r, last)]

    def close(self) -> None:
        """Release every reservation still held."""
        with self._lock:
            for base in list(self._regions):
                self._virtual_free(base, 0, MEM_RELEASE)

    # --- the rules ------------------------------------------------------------------------

    def _pages(self, address: int, size: int) -> tuple[int, int]:
        """The page-aligned [first, last) covering every byte of [address, address + size)."""
        first = address & ~(self.page_size - 1)
        return first, self._round_up(address + size, self.page_size)

    def _virtual_alloc(self, address: int, size: int, kind: int, protect: int) -> int:
        if size <= 0:
            raise _Win32Error(ERROR_INVALID_PARAMETER)
        reserving = bool(kind & MEM_RESERVE or not address)
        if address:
            grain = ALLOCATION_GRANULARITY if kind & MEM_RESERVE else self.page_size
            base = address & ~(grain - 1)
            end = self._round_up(address + size, self.page_size)
            if base < MIN_APPLICATION_ADDRESS or end > _USER_LIMIT:
                raise _Win32Error(ERROR_INVALID_PARAMETER)
        elif size > _USER_LIMIT:
            raise _Win32Error(ERROR_INVALID_PARAMETER)
        if not kind & (MEM_COMMIT | MEM_RESERVE) or kind & ~(MEM_COMMIT | MEM_RESERVE
                                                            | MEM_TOP_DOWN):
            raise _Win32Error(ERROR_INVALID_PARAMETER)
        if reserving:
            if protect not in _HOST_PROT:
                raise _Win32Error(ERROR_INVALID_PARAMETER)
            r = self._reserve(address, size, protect)
            if kind & MEM_COMMIT:
                try:
                    self._commit(r, r.base, r.end, protect)
                except _Win32Error:
                    self._virtual_free(r.base, 0, MEM_RELEASE)  # all or nothing
                    raise
            return r.base
        first, last = self._pages(address, size)
        r = self._holding(first, last, ERROR_INVALID_ADDRESS)
        if protect not in _HOST_PROT:
            raise _Win32Error(ERROR_INVALID_PARAMETER)
        self._commit(r, first, last, protect)
        return first

    def _virtual_free(self, address: int, size: int, kind: int) -> None:
        first, last = self._pages(address, size)
        r = self._containing(first)
        if not first or r is None:
            raise _Win32Error(ERROR_INVALID_PARAMETER)
        if kind == MEM_RELEASE:
            if size:
                raise _Win32Error(ERROR_INVALID_PARAMETER)
            if first != r.base:
                raise _Win32Error(ERROR_INVALID_ADDRESS)
            del self._regions[r.base]
            if self._libc.munmap(r.base, r.size) != 0:
                raise _Win32Error(ERROR_INVALID_PARAMETER)
        elif kind == MEM_DECOMMIT:
            if not size:
                if first != r.base:
                    raise _Win32Error(ERROR_INVALID_ADDRESS)
                last = r.end
            if last > r.end:
                raise _Win32Error(ERROR_INVALID_PARAMETER)
            self._decommit(r, first, last)
        else:
            raise _Win32Error(ERROR_INVALID_PARAMETER)

    def _virtual_protect(self, address: int, size: int, protect: int) -> int:
        first, last = self._pages(address, size)
        r = self._holding(first, last, ERROR_INVALID_PARAMETER)
        i, j = self._index(r, first), max(self._index(r, last), self._index(r, first) + 1)
        if _UNCOMMITTED in r.pages[i:j]:
            raise _Win32Error(ERROR_INVALID_ADDRESS)
        if protect not in _HOST_PROT:
            raise _Win32Error(ERROR_INVALID_PARAMETER)
        old = r.pages[i]
        if last > first:
            self._mprotect(first, last - first, protect)
            r.pages[i:j] = bytes([protect]) * (j - i)
        return old

    def _virtual_query(self, address: int, mbi: MEMORY_BASIC_INFORMATION) -> None:
        if address >= _USER_LIMIT:
            raise _Win32Error(ERROR_INVALID_PARAMETER)
        first = address & ~(self.page_size - 1)
        r = self._containing(first)
        mbi.BaseAddress = first
        mbi.PartitionId = 0
        if r is None:
            above = [q.base for q in self._regions.values() if q.base > first]
            mbi.AllocationBase = mbi.AllocationProtect = mbi.Type = 0
            mbi.RegionSize = min(above, default=_USER_LIMIT) - first
            mbi.State, mbi.Protect = MEM_FREE, PAGE_NOACCESS
            return
        i = j = self._index(r, first)
        while j < len(r.pages) and r.pages[j] == r.pages[i]:
            j += 1
        mbi.AllocationBase, mbi.AllocationProtect, mbi.Type = r.base, r.protect, MEM_PRIVATE
        mbi.RegionSize = (j - i) * self.page_size
        mbi.State = MEM_RESERVE if r.pages[i] == _UNCOMMITTED else MEM_COMMIT
        mbi.Protect = r.pages[i]

    # --- reservations ---------------------------------------------------------------------

    def _round_up(self, x: int, to: int) -> int:
        return (x + to - 1) & ~(to - 1)

    def _index(self, r: _Reservation, address: int) -> int:
        return (address - r.base) // self.page_size

    def _containing(self, address: int) -> _Reservation | None:
        for r in self._regions.values():
            if r.base <= address < r.end:
                return r
        return None

    def _holding(self, first: int, last: int, code: int) -> _Reservation:
        """The reservation holding every page of [first, last), or _Win32Error(code)."""
        r = self._containing(first)
        if r is None or last > r.end:
            raise _Win32Error(code)
        return r

    def _overlaps(self, base: int, end: int) -> bool:
        return any(r.base < end and base < r.end for r in self._regions.values())

    def _host_map(self, address: int | None, size: int, fixed: bool = False) -> int | None:
        c = self._c
        flags = c.MAP_ANON | c.MAP_PRIVATE | c.MAP_NORESERVE | (c.MAP_FIXED if fixed else 0)
        p = self._libc.mmap(address or None, size, _PROT_NONE, flags, -1, 0)
        if p is None or p == _MAP_FAILED:
            return None
        return p

    def _reserve(self, address: int, size: int, protect: int) -> _Reservation:
        g = ALLOCATION_GRANULARITY
        if address:
            base = address & ~(g - 1)
            length = self._round_up(address + size, self.page_size) - base
            self._claim_at(base, length)
        else:
            length = self._round_up(size, self.page_size)
            base = self._claim_anywhere(length)
        r = _Reservation(base, length, bytearray(length // self.page_size), protect)
        self._regions[base] = r
        return r

    def _claim_at(self, base: int, length: int) -> None:
        if base < MIN_APPLICATION_ADDRESS or base + length > MAX_APPLICATION_ADDRESS + 1:
            raise _Win32Error(ERROR_INVALID_ADDRESS)
        if self._overlaps(base, base + length):
            raise _Win32Error(ERROR_INVALID_ADDRESS)
        p = self._host_map(base, length)
        if p is None:
            raise _Win32Error(ERROR_NOT_ENOUGH_MEMORY)
        if p != base:  # the host has something there: Windows would refuse the address
            self._libc.munmap(p, length)
            raise _Win32Error(ERROR_INVALID_ADDRESS)

    def _claim_anywhere(self, length: int) -> int:
        g = ALLOCATION_GRANULARITY
        p = self._host_map(None, length + g)
        if p is None:
            raise _Win32Error(ERROR_NOT_ENOUGH_MEMORY)
        base = self._round_up(p, g)
        if base > p:
            self._libc.munmap(p, base - p)
        tail = p + length + g - (base + length)
        if tail:
            self._libc.munmap(base + length, tail)
        return base

    # --- commit / decommit ------------------------------------------------------------------

    def _mprotect(self, address: int, size: int, protect: int) -> None:
        if self._libc.mprotect(address, size, _HOST_PROT[protect]) != 0:
            raise _Win32Error(ERROR_NOT_ENOUGH_MEMORY)

    def _commit(self, r: _Reservation, first: int, last: int, protect: int) -> None:
        # Uncommitted pages are fresh PROT_NONE mappings (never touched, or replaced by
        # _decommit), so opening them up shows zeros; committed pages keep their contents.
        self._mprotect(first, last - first, protect)
        i, j = self._index(r, first), self._index(r, last)
        r.pages[i:j] = bytes([protect]) * (j - i)

    def _decommit(self, r: _Reservation, first: int, last: int) -> None:
        p = self._host_map(first, last - first, fixed=True)  # drops the pages from the RSS
        if p != first:
            raise _Win32Error(ERROR_NOT_ENOUGH_MEMORY)
        i, j = self._index(r, first), self._index(r, last)
        r.pages[i:j] = bytes(j - i)
