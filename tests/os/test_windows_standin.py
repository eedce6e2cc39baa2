"""The kernel32 stand-in enforces VirtualAlloc's rules, and the Windows backend's own logic
(pieces across reservations, release-and-retry alignment, rollback, error reporting through the
last-error seam) holds on it. The stand-in is not Windows: see gcalloc/os/_kernel32_standin.py.
"""

from __future__ import annotations

import ctypes

import pytest
from oshelpers import STANDIN_SKIP, MiB, died_of_fault, run_child, view

from gcalloc.errors import SysMemoryError
from gcalloc.os import SysMemStat, windows
from gcalloc.os import _kernel32_standin as s
from gcalloc.os.windows import WindowsMemory

pytestmark = pytest.mark.skipif(not s.AVAILABLE, reason=STANDIN_SKIP)

G = s.ALLOCATION_GRANULARITY
RW = s.PAGE_READWRITE


@pytest.fixture
def k():
    k = s.Kernel32StandIn()
    yield k
    k.close()


@pytest.fixture
def wm(k):
    return WindowsMemory(k, k.get_last_error)


def free_base(k, n: int = 4 * MiB) -> int:
    """A 64 KiB-aligned address with ``n`` free bytes after it."""
    p = k.VirtualAlloc(None, n, s.MEM_RESERVE, RW)
    assert k.VirtualFree(p, 0, s.MEM_RELEASE) == 1
    return p


def fails_with(k, result, code: int) -> bool:
    return not result and k.GetLastError() == code


# --- reservations --------------------------------------------------------------------------

def test_reservations_are_granularity_aligned_and_page_rounded(k):
    p = k.VirtualAlloc(None, 1, s.MEM_RESERVE, RW)
    assert p % G == 0
    assert k.reservations() == [(p, k.page_size)]
    b = free_base(k)
    q = k.VirtualAlloc(b + G + 0x1234, 0x1000, s.MEM_RESERVE, RW)
    assert q == b + G  # rounded down to the granularity
    end = (b + G + 0x1234 + 0x1000 + k.page_size - 1) & ~(k.page_size - 1)
    assert (q, end - q) in k.reservations()


def test_reserving_over_a_reservation_fails_with_invalid_address(k):
    b = free_base(k)
    assert k.VirtualAlloc(b + G, 2 * G, s.MEM_RESERVE, RW) == b + G
    k.SetLastError(0)
    assert fails_with(k, k.VirtualAlloc(b + 2 * G, G, s.MEM_RESERVE, RW), s.ERROR_INVALID_ADDRESS)
    assert fails_with(k, k.VirtualAlloc(b, 2 * G, s.MEM_RESERVE, RW), s.ERROR_INVALID_ADDRESS)
    assert k.VirtualAlloc(b, G, s.MEM_RESERVE, RW) == b  # the free granule just below is fine


def test_reserving_where_the_host_has_a_mapping_fails(k):
    import mmap
    m = mmap.mmap(-1, 4 * G)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m)) & ~(G - 1)
    try:
        assert fails_with(k, k.VirtualAlloc(addr + G, G, s.MEM_RESERVE, RW),
                          s.ERROR_INVALID_ADDRESS)
    finally:
        del addr
        m.close()
    assert k.reservations() == []


# --- commit / decommit -----------------------------------------------------------------------

def test_commit_only_inside_one_reservation(k):
    b = free_base(k)
    k.VirtualAlloc(b, G, s.MEM_RESERVE, RW)
    k.VirtualAlloc(b + G, G, s.MEM_RESERVE, RW)  # adjacent, separate
    assert fails_with(k, k.VirtualAlloc(b + 2 * G, 4096, s.MEM_COMMIT, RW),
                      s.ERROR_INVALID_ADDRESS)  # unreserved
    k.SetLastError(0)
    assert fails_with(k, k.VirtualAlloc(b + G - 4096, 8192, s.MEM_COMMIT, RW),
                      s.ERROR_INVALID_ADDRESS)  # crosses into the neighbour
    assert not k.committed(b + G - 4096, 4096)
    pg = k.page_size
    assert k.VirtualAlloc(b + pg + 10, 100, s.MEM_COMMIT, RW) == b + pg  # page-rounded
    assert k.committed(b + pg, pg) and not k.committed(b, pg)
    ctypes.memset(b + pg, 0x11, pg)
    assert k.VirtualAlloc(b + pg, pg, s.MEM_COMMIT, RW) == b + pg  # again: contents kept
    assert ctypes.string_at(b + pg, 4) == b"\x11" * 4


def test_decommit_loses_contents_and_recommit_reads_zero(k):
    b = k.VirtualAlloc(None, 4 * G, s.MEM_RESERVE | s.MEM_COMMIT, RW)
    v = view(b, 4 * G)
    v.fill(0x33)
    assert k.VirtualFree(b + G, G, s.MEM_DECOMMIT) == 1
    assert not k.committed(b + G, G) and k.committed(b, G) and k.committed(b + 2 * G, 2 * G)
    assert k.VirtualFree(b + G, G, s.MEM_DECOMMIT) == 1  # decommitting twice is allowed
    assert k.VirtualAlloc(b + G, G, s.MEM_COMMIT, RW) == b + G
    assert not v[G:2 * G].any() and v[:G].min() == 0x33 and v[2 * G:].min() == 0x33
    assert k.VirtualFree(b, 0, s.MEM_DECOMMIT) == 1  # size 0 at the base: all of it
    assert not k.committed(b, 4096) and not k.committed(b + 3 * G, 4096)
    assert fails_with(k, k.VirtualFree(b + G, 0, s.MEM_DECOMMIT), s.ERROR_INVALID_PARAMETER)


def test_decommit_across_reservations_fails(k):
    b = free_base(k)
    k.VirtualAlloc(b, G, s.MEM_RESERVE | s.MEM_COMMIT, RW)
    k.VirtualAlloc(b + G, G, s.MEM_RESERVE | s.MEM_COMMIT, RW)
    assert fails_with(k, k.VirtualFree(b, 2 * G, s.MEM_DECOMMIT), s.ERROR_INVALID_ADDRESS)
    assert k.committed(b, G) and k.committed(b + G, G)


# --- release -------------------------------------------------------------------------------

def test_release_needs_size_zero_and_the_exact_base(k):
    b = k.VirtualAlloc(None, 2 * G, s.MEM_RESERVE, RW)
    assert fails_with(k, k.VirtualFree(b, 2 * G, s.MEM_RELEASE), s.ERROR_INVALID_PARAMETER)
    k.SetLastError(0)
    assert fails_with(k, k.VirtualFree(b + G, 0, s.MEM_RELEASE), s.ERROR_INVALID_PARAMETER)
    assert k.reservations() == [(b, 2 * G)]
    assert k.VirtualFree(b, 0, s.MEM_RELEASE) == 1
    assert k.reservations() == []
    k.SetLastError(0)
    assert fails_with(k, k.VirtualFree(b, 0, s.MEM_RELEASE), s.ERROR_INVALID_PARAMETER)


@pytest.mark.parametrize("kind, protect, size", [
    (s.MEM_RELEASE, RW, 4096), (s.MEM_COMMIT | 0x80000, RW, 4096), (0, RW, 4096),
    (s.MEM_RESERVE, 0x40, 4096), (s.MEM_RESERVE, RW, 0),
])
def test_bad_alloc_parameters(k, kind, protect, size):
    assert fails_with(k, k.VirtualAlloc(None, size, kind, protect), s.ERROR_INVALID_PARAMETER)
    assert k.reservations() == []


def test_bad_free_type(k):
    b = k.VirtualAlloc(None, G, s.MEM_RESERVE, RW)
    assert fails_with(k, k.VirtualFree(b, 0, s.MEM_RELEASE | s.MEM_DECOMMIT),
                      s.ERROR_INVALID_PARAMETER)


# --- protection and faults -----------------------------------------------------------------------

def test_virtual_protect(k):
    b = k.VirtualAlloc(None, 2 * G, s.MEM_RESERVE, RW)
    k.VirtualAlloc(b, G, s.MEM_COMMIT, RW)
    old = ctypes.c_uint32(0)
    assert k.VirtualProtect(b, G, s.PAGE_READONLY, ctypes.byref(old)) == 1
    assert old.value == RW
    assert k.VirtualProtect(b, G, RW, ctypes.pointer(old)) == 1
    assert old.value == s.PAGE_READONLY
    assert fails_with(k, k.VirtualProtect(b + G, 4096, RW, ctypes.byref(old)),
                      s.ERROR_INVALID_ADDRESS)  # reserved, not committed
    assert fails_with(k, k.VirtualProtect(b, 4096, RW, None), s.ERROR_NOACCESS)
    assert fails_with(k, k.VirtualProtect(b, 4096, 0x40, ctypes.byref(old)),
                      s.ERROR_INVALID_PARAMETER)


def test_noaccess_and_decommitted_pages_fault():
    for setup in ("k.VirtualAlloc(p, 4096, MEM_COMMIT, PAGE_NOACCESS)",
                  "k.VirtualFree(p, 4096, MEM_DECOMMIT)"):
        proc = run_child("native", f"""
            from gcalloc.os._kernel32_standin import *
            k = Kernel32StandIn()
            p = k.VirtualAlloc(None, 1 << 16, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
            ctypes.c_char.from_address(p).value = b"y"
            assert {setup}
            print("touching", flush=True)
            ctypes.c_char.from_address(p).value
            print("survived", flush=True)
        """)
        assert "touching" in proc.stdout and "survived" not in proc.stdout, proc.stderr
        assert died_of_fault(proc), (setup, proc.returncode, proc.stderr)


# --- last error and system info -------------------------------------------------------------------

def test_last_error_is_set_by_failure_and_kept_by_success(k):
    k.SetLastError(0)
    b = k.VirtualAlloc(None, G, s.MEM_RESERVE, RW)
    assert b and k.GetLastError() == 0
    assert not k.VirtualFree(b + 4096, 0, s.MEM_RELEASE)
    assert k.GetLastError() == k.get_last_error() == s.ERROR_INVALID_PARAMETER
    assert k.VirtualFree(b, 0, s.MEM_RELEASE)
    assert k.get_last_error() == s.ERROR_INVALID_PARAMETER  # success leaves it
    assert k.set_last_error(5) == s.ERROR_INVALID_PARAMETER
    assert k.GetLastError() == 5


def test_get_system_info(k):
    info = windows.SYSTEM_INFO()
    k.GetSystemInfo(ctypes.byref(info))
    assert info.dwPageSize == k.page_size >= 4096
    assert info.dwAllocationGranularity == 65536
    assert info.lpMinimumApplicationAddress == 0x10000


# --- the Windows backend's logic ------------------------------------------------------------------

def test_backend_reads_page_size_and_granularity_from_the_system(k, wm):
    assert wm.phys_page_size == k.page_size
    assert wm.alloc_granularity == 65536
    assert wm.phys_huge_page_size == 0


def test_map_and_unused_span_neighbouring_reservations_in_pieces(k, wm):
    n = MiB
    b = free_base(k, 2 * n)
    assert wm.sys_reserve(b, n) == b and wm.sys_reserve(b + n, n) == b + n
    stat = SysMemStat()
    wm.sys_map(b, 2 * n, stat)  # one VirtualAlloc would fail: the backend splits it
    assert k.committed(b, n) and k.committed(b + n, n) and stat.value == 2 * n
    v = view(b, 2 * n)
    v.fill(0x77)
    wm.sys_unused(b, 2 * n)
    assert not k.committed(b, 4096) and not k.committed(b + 2 * n - 4096, 4096)
    wm.sys_used(b, 2 * n)
    assert k.committed(b, n) and k.committed(b + n, n) and not v.any()
    wm.sys_fault(b, 2 * n)
    assert not k.committed(b + n - 4096, 4096) and not k.committed(b + n, 4096)
    wm.sys_free(b, n, stat)
    wm.sys_free(b + n, n, stat)
    assert stat.value == 0 and k.reservations() == []


def test_failed_map_rolls_back_and_reports_the_windows_error(k, wm):
    n = MiB
    b = free_base(k, 2 * n)
    assert wm.sys_reserve(b, n) == b  # [b+n, b+2n) stays unreserved
    stat = SysMemStat()
    with pytest.raises(SysMemoryError) as e:
        wm.sys_map(b, 2 * n, stat)
    assert e.value.errno == s.ERROR_INVALID_ADDRESS
    assert "Attempt to access invalid address" in str(e.value)
    assert stat.value == 0
    assert not any(k.committed(b + i, 4096) for i in range(0, n, 64 * 4096))


def test_sys_free_needs_the_base_of_a_reservation(k, wm):
    p = wm.sys_reserve(None, MiB)
    with pytest.raises(SysMemoryError) as e:
        wm.sys_free(p + 65536, 65536, None)
    assert e.value.errno == s.ERROR_INVALID_PARAMETER
    assert k.reservations() == [(p, MiB)]
    wm.sys_free(p, MiB, None)  # releases the whole reservation
    assert k.reservations() == []


class RacingKernel32(s.Kernel32StandIn):
    """After each MEM_RELEASE, another "thread" reserves the aligned address the backend wants."""

    def __init__(self, align: int, races: int) -> None:
        super().__init__()
        self.align, self.races, self.stolen = align, races, []

    def VirtualFree(self, address, size, free_type):  # noqa: N802
        ok = super().VirtualFree(address, size, free_type)
        if ok and free_type == s.MEM_RELEASE and self.races:
            self.races -= 1
            spot = (address + self.align - 1) & ~(self.align - 1)
            self.stolen.append(super().VirtualAlloc(spot, G, s.MEM_RESERVE, RW))
        return ok


def test_reserve_aligned_retries_when_another_thread_takes_the_spot():
    align, n = 4 * MiB, MiB
    k = RacingKernel32(align, races=3)
    try:
        wm = WindowsMemory(k, k.get_last_error)
        p, size = wm.sys_reserve_aligned(None, n, align)
        assert p is not None and p % align == 0 and size == n
        assert len(k.stolen) == 3 and None not in k.stolen and p not in k.stolen
        assert sorted(k.reservations()) == sorted([(q, G) for q in k.stolen] + [(p, n)])
    finally:
        k.close()


def test_reserve_aligned_gives_up_after_too_many_races_without_leaking():
    k = RacingKernel32(4 * MiB, races=10**6)
    try:
        wm = WindowsMemory(k, k.get_last_error)
        assert wm.sys_reserve_aligned(None, MiB, 4 * MiB) == (None, 0)
        assert len(k.stolen) == windows._ALIGN_RETRIES
        assert sorted(k.reservations()) == sorted((q, G) for q in k.stolen)
    finally:
        k.close()


def test_last_error_is_read_through_the_injected_function(k):
    wm = WindowsMemory(k, lambda: windows.ERROR_COMMITMENT_LIMIT)
    with pytest.raises(SysMemoryError) as e:
        wm.sys_used(free_base(k), 65536)  # not reserved: fails
    assert e.value.errno == windows.ERROR_COMMITMENT_LIMIT
    assert "paging file is too small" in str(e.value)
    default = WindowsMemory(k)  # no function given: kernel32.GetLastError
    with pytest.raises(SysMemoryError) as e:
        default.sys_used(free_base(k), 65536)
    assert e.value.errno == s.ERROR_INVALID_ADDRESS


def test_sys_alloc_failure_leaves_the_not_enough_memory_error(k, wm):
    assert wm.sys_alloc(1 << 62, None) is None
    assert k.GetLastError() == s.ERROR_NOT_ENOUGH_MEMORY

