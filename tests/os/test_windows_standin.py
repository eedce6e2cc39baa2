"""VirtualAlloc's rules, and the Windows backend's own logic (pieces across reservations,
release-and-retry alignment, rollback, error reporting through the last-error seam), on two
kernel32s: the stand-in (``windows-standin``; not Windows: see gcalloc/os/_kernel32_standin.py)
and Wine's, through the bridge (``windows-wine``). The same assertions hold on both; the few
that need this process's own mappings run on the stand-in alone (``sk``).
"""

from __future__ import annotations

import ctypes
import textwrap

import pytest
from oshelpers import (
    LOCAL,
    WINE,
    MiB,
    byte_values,
    died_of_fault,
    memory_of,
    run_child,
)

from gcalloc.errors import SysMemoryError
from gcalloc.os import SysMemStat, windows
from gcalloc.os import _kernel32_standin as s
from gcalloc.os.windows import WindowsMemory

G = s.ALLOCATION_GRANULARITY
RW = s.PAGE_READWRITE


@pytest.fixture(params=["windows-standin", WINE])
def k(request):
    """The stand-in, or Wine's kernel32 (the session's bridge, emptied after the test)."""
    return request.getfixturevalue("wine" if request.param == WINE else "sk")


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


def test_reserving_where_the_host_has_a_mapping_fails(sk):
    k = sk
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
    mem = memory_of(k)
    mem.fill(b + pg, pg, 0x11)
    assert k.VirtualAlloc(b + pg, pg, s.MEM_COMMIT, RW) == b + pg  # again: contents kept
    assert byte_values(mem, b + pg, pg) == {0x11}


def test_decommit_loses_contents_and_recommit_reads_zero(k):
    b = k.VirtualAlloc(None, 4 * G, s.MEM_RESERVE | s.MEM_COMMIT, RW)
    mem = memory_of(k)
    mem.fill(b, 4 * G, 0x33)
    assert k.VirtualFree(b + G, G, s.MEM_DECOMMIT) == 1
    assert not k.committed(b + G, G) and k.committed(b, G) and k.committed(b + 2 * G, 2 * G)
    assert k.VirtualFree(b + G, G, s.MEM_DECOMMIT) == 1  # decommitting twice is allowed
    assert k.VirtualAlloc(b + G, G, s.MEM_COMMIT, RW) == b + G
    assert byte_values(mem, b + G, G) == {0}
    assert byte_values(mem, b, G) == byte_values(mem, b + 2 * G, 2 * G) == {0x33}
    assert k.VirtualFree(b + 100, 0, s.MEM_DECOMMIT) == 1  # size 0 at the base page: all of it
    assert not k.committed(b, 4096) and not k.committed(b + 3 * G, 4096)
    assert fails_with(k, k.VirtualFree(b + G, 0, s.MEM_DECOMMIT), s.ERROR_INVALID_ADDRESS)
    assert fails_with(k, k.VirtualFree(b + 3 * G, 2 * G, s.MEM_DECOMMIT),
                      s.ERROR_INVALID_PARAMETER)  # runs past the reservation's end


def test_decommit_across_reservations_fails(k):
    b = free_base(k)
    k.VirtualAlloc(b, G, s.MEM_RESERVE | s.MEM_COMMIT, RW)
    k.VirtualAlloc(b + G, G, s.MEM_RESERVE | s.MEM_COMMIT, RW)
    assert fails_with(k, k.VirtualFree(b, 2 * G, s.MEM_DECOMMIT), s.ERROR_INVALID_PARAMETER)
    assert k.committed(b, G) and k.committed(b + G, G)


# --- release -------------------------------------------------------------------------------

def test_release_needs_size_zero_and_the_base_page(k):
    b = k.VirtualAlloc(None, 2 * G, s.MEM_RESERVE, RW)
    assert fails_with(k, k.VirtualFree(b, 2 * G, s.MEM_RELEASE), s.ERROR_INVALID_PARAMETER)
    k.SetLastError(0)
    assert fails_with(k, k.VirtualFree(b + G, 0, s.MEM_RELEASE), s.ERROR_INVALID_ADDRESS)
    assert k.reservations() == [(b, 2 * G)]
    assert k.VirtualFree(b + 0x123, 0, s.MEM_RELEASE) == 1  # rounded down to the base page
    assert k.reservations() == []
    k.SetLastError(0)
    assert fails_with(k, k.VirtualFree(b, 0, s.MEM_RELEASE), s.ERROR_INVALID_PARAMETER)
    assert fails_with(k, k.VirtualFree(None, 0, s.MEM_RELEASE), s.ERROR_INVALID_PARAMETER)


@pytest.mark.parametrize("kind, protect, size", [
    (s.MEM_RELEASE, RW, 4096), (s.MEM_COMMIT | s.MEM_DECOMMIT, RW, 4096), (0, RW, 4096),
    (s.MEM_TOP_DOWN, RW, 4096), (s.MEM_RESERVE, 0x08, 4096), (s.MEM_RESERVE, 0x03, 4096),
    (s.MEM_RESERVE, 0, 4096), (s.MEM_RESERVE, RW, 0), (s.MEM_RESERVE, RW, 1 << 62),
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
    assert fails_with(k, k.VirtualProtect(b, 4096, 0x08, ctypes.byref(old)),
                      s.ERROR_INVALID_PARAMETER)
    assert fails_with(k, k.VirtualProtect(b + G, 2 * G, RW, ctypes.byref(old)),
                      s.ERROR_INVALID_PARAMETER)  # runs past the reservation's end
    assert k.VirtualProtect(b, G, s.PAGE_EXECUTE_READWRITE, ctypes.byref(old)) == 1
    assert k.VirtualProtect(b + 5, 0, RW, ctypes.byref(old)) == 1  # size 0: the page
    assert old.value == s.PAGE_EXECUTE_READWRITE


def test_virtual_query(k):
    b = k.VirtualAlloc(None, 4 * G, s.MEM_RESERVE, s.PAGE_READONLY)
    k.VirtualAlloc(b + G, 2 * 4096, s.MEM_COMMIT, RW)
    mbi = s.MEMORY_BASIC_INFORMATION()
    size = ctypes.sizeof(mbi)

    def query(a):
        assert k.VirtualQuery(a, ctypes.byref(mbi), size) == size
        return (mbi.BaseAddress, mbi.AllocationBase, mbi.AllocationProtect, mbi.RegionSize,
                mbi.State, mbi.Protect, mbi.Type)

    assert query(b + 10) == (b, b, s.PAGE_READONLY, G, s.MEM_RESERVE, 0, s.MEM_PRIVATE)
    assert query(b + G + 4096) == (b + G + 4096, b, s.PAGE_READONLY, 4096, s.MEM_COMMIT, RW,
                                   s.MEM_PRIVATE)
    assert query(b + G + 2 * 4096)[3:5] == (4 * G - G - 2 * 4096, s.MEM_RESERVE)
    assert k.VirtualFree(b, 0, s.MEM_RELEASE)
    base, alloc, _, _, state, protect, _ = query(b)
    assert (base, alloc, state, protect) == (b, None, s.MEM_FREE, s.PAGE_NOACCESS)
    assert fails_with(k, k.VirtualQuery(b, ctypes.byref(mbi), size - 1), s.ERROR_BAD_LENGTH)
    assert fails_with(k, k.VirtualQuery(s.MAX_APPLICATION_ADDRESS + 1, ctypes.byref(mbi), size),
                      s.ERROR_INVALID_PARAMETER)


@pytest.mark.parametrize("setup, write", [
    ("k.VirtualAlloc(p, 4096, MEM_COMMIT, PAGE_NOACCESS)", False),
    ("k.VirtualFree(p, 4096, MEM_DECOMMIT)", False),
    ("k.VirtualProtect(p, 4096, PAGE_READONLY, ctypes.byref(ctypes.c_uint32()))", True),
])
def test_noaccess_decommitted_and_read_only_pages_fault(k, setup, write):
    body = f"""
        p = k.VirtualAlloc(None, 1 << 16, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
        poke(p, 0x79)
        assert peek(p) == 0x79 and not faults(p + 4096, write=True)
        assert {setup}
    """
    if memory_of(k) is not LOCAL:  # the bridge performs the access under a handler
        mem = memory_of(k)
        ns = {**vars(s), "ctypes": ctypes, "k": k, "poke": mem.write_byte, "peek": mem.read_byte,
              "faults": mem.faults}
        exec(textwrap.dedent(body), ns)
        assert mem.faults(ns["p"], write=write)
        return
    touch = 'ctypes.c_char.from_address(p).value = b"z"' if write else \
        "ctypes.c_char.from_address(p).value"
    proc = run_child("native", "from gcalloc.os._kernel32_standin import *\n"
                     "k = Kernel32StandIn()\n"
                     "def poke(a, v): ctypes.c_uint8.from_address(a).value = v\n"
                     "def peek(a): return ctypes.c_uint8.from_address(a).value\n"
                     "def faults(a, write): return False\n"
                     + textwrap.dedent(body) + f"""
print("touching", flush=True)
{touch}
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
    assert k.GetLastError() == k.get_last_error() == s.ERROR_INVALID_ADDRESS
    assert k.VirtualFree(b, 0, s.MEM_RELEASE)
    assert k.get_last_error() == s.ERROR_INVALID_ADDRESS  # success leaves it
    assert k.set_last_error(5) == s.ERROR_INVALID_ADDRESS
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
    mem = memory_of(k)
    mem.fill(b, 2 * n, 0x77)
    wm.sys_unused(b, 2 * n)
    assert not k.committed(b, 4096) and not k.committed(b + 2 * n - 4096, 4096)
    wm.sys_used(b, 2 * n)
    assert k.committed(b, n) and k.committed(b + n, n) and byte_values(mem, b, 2 * n) == {0}
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
    assert e.value.errno == s.ERROR_INVALID_ADDRESS
    assert k.reservations() == [(p, MiB)]
    wm.sys_free(p, MiB, None)  # releases the whole reservation
    assert k.reservations() == []


class Racing:
    """kernel32 ``k`` where, after each MEM_RELEASE, another "thread" reserves the aligned
    address the backend wants."""

    def __init__(self, k, align: int, races: int) -> None:
        self.k, self.align, self.races, self.stolen = k, align, races, []

    def __getattr__(self, name):
        return getattr(self.k, name)

    def VirtualFree(self, address, size, free_type):  # noqa: N802
        ok = self.k.VirtualFree(address, size, free_type)
        if ok and free_type == s.MEM_RELEASE and self.races:
            self.races -= 1
            spot = (address + self.align - 1) & ~(self.align - 1)
            self.stolen.append(self.k.VirtualAlloc(spot, G, s.MEM_RESERVE, RW))
        return ok


def test_reserve_aligned_retries_when_another_thread_takes_the_spot(k):
    align, n = 4 * MiB, MiB
    rk = Racing(k, align, races=3)
    wm = WindowsMemory(rk, k.get_last_error)
    p, size = wm.sys_reserve_aligned(None, n, align)
    assert p is not None and p % align == 0 and size == n
    assert len(rk.stolen) == 3 and None not in rk.stolen and p not in rk.stolen
    assert sorted(k.reservations()) == sorted([(q, G) for q in rk.stolen] + [(p, n)])


def test_reserve_aligned_gives_up_after_too_many_races_without_leaking(k):
    rk = Racing(k, 4 * MiB, races=10**6)
    wm = WindowsMemory(rk, k.get_last_error)
    assert wm.sys_reserve_aligned(None, MiB, 4 * MiB) == (None, 0)
    assert len(rk.stolen) == windows._ALIGN_RETRIES
    assert sorted(k.reservations()) == sorted((q, G) for q in rk.stolen)


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


def test_sys_alloc_failure_leaves_the_windows_error(k, wm):
    assert wm.sys_alloc(1 << 62, None) is None  # beyond the address space: a bad size
    assert k.GetLastError() == s.ERROR_INVALID_PARAMETER
    assert wm.sys_alloc(0x7FFF00000000, None) is None  # all of it: no room
    assert k.GetLastError() == s.ERROR_NOT_ENOUGH_MEMORY

