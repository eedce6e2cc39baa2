"""The per-OS constant tables equal the values in each system's own headers.

The expected values are copied by hand from the headers (paths below), independently of the
tables, so a typo in a table fails here. Where the running Python's ``mmap`` module exposes the
same constant (compiled from this machine's headers), the running OS's table is checked against
it too.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import pytest

import gcalloc.os as gos
from gcalloc.os import _kernel32_standin as standin
from gcalloc.os import windows
from gcalloc.os.darwin import DARWIN
from gcalloc.os.freebsd import FREEBSD
from gcalloc.os.linux import LINUX

# Apple xnu, bsd/sys/mman.h (apple-oss-distributions/xnu):
#   #define MAP_PRIVATE 0x0002 / MAP_FIXED 0x0010 / MAP_NORESERVE 0x0040 / MAP_ANON 0x1000
#   #define MADV_FREE_REUSABLE 7 / MADV_FREE_REUSE 8
DARWIN_HEADER = dict(MAP_PRIVATE=0x0002, MAP_FIXED=0x0010, MAP_NORESERVE=0x0040,
                     MAP_ANON=0x1000, MADV_UNUSED=7, MADV_REUSE=8,
                     MADV_HUGEPAGE=None, MADV_NOHUGEPAGE=None)

# FreeBSD, sys/sys/mman.h (freebsd/freebsd-src):
#   #define MAP_PRIVATE 0x0002 / MAP_FIXED 0x0010 / MAP_ANON 0x1000 / MADV_FREE 5
#   0x0040 is MAP_RESERVED0040 "previously unimplemented MAP_NORESERVE": no such flag.
FREEBSD_HEADER = dict(MAP_PRIVATE=0x0002, MAP_FIXED=0x0010, MAP_NORESERVE=0,
                      MAP_ANON=0x1000, MADV_UNUSED=5, MADV_REUSE=None,
                      MADV_HUGEPAGE=None, MADV_NOHUGEPAGE=None)

# Linux, include/uapi/asm-generic/mman-common.h: MAP_PRIVATE 0x02, MAP_FIXED 0x10,
# MAP_ANONYMOUS 0x20, MADV_DONTNEED 4, MADV_HUGEPAGE 14, MADV_NOHUGEPAGE 15;
# include/uapi/asm-generic/mman.h: MAP_NORESERVE 0x4000.
LINUX_HEADER = dict(MAP_PRIVATE=0x02, MAP_FIXED=0x10, MAP_NORESERVE=0x4000, MAP_ANON=0x20,
                    MADV_UNUSED=4, MADV_REUSE=None, MADV_HUGEPAGE=14, MADV_NOHUGEPAGE=15)

# Windows SDK, winnt.h: MEM_COMMIT 0x00001000, MEM_RESERVE 0x00002000, MEM_DECOMMIT 0x00004000,
# MEM_RELEASE 0x00008000, PAGE_NOACCESS 0x01, PAGE_READWRITE 0x04; winerror.h:
# ERROR_NOT_ENOUGH_MEMORY 8, ERROR_INVALID_PARAMETER 87, ERROR_INVALID_ADDRESS 487,
# ERROR_NOACCESS 998, ERROR_COMMITMENT_LIMIT 1455.
WINDOWS_HEADER = dict(MEM_COMMIT=0x1000, MEM_RESERVE=0x2000, MEM_DECOMMIT=0x4000,
                      MEM_RELEASE=0x8000, PAGE_NOACCESS=0x01, PAGE_READWRITE=0x04,
                      ERROR_NOT_ENOUGH_MEMORY=8, ERROR_INVALID_PARAMETER=87,
                      ERROR_INVALID_ADDRESS=487, ERROR_NOACCESS=998, ERROR_COMMITMENT_LIMIT=1455)

TABLES = {"darwin": (DARWIN, DARWIN_HEADER), "freebsd": (FREEBSD, FREEBSD_HEADER),
          "linux": (LINUX, LINUX_HEADER)}


@pytest.mark.parametrize("os_name", sorted(TABLES))
def test_table_matches_the_header(os_name):
    table, header = TABLES[os_name]
    assert table.name == os_name
    assert {f: getattr(table, f) for f in header} == header


def test_windows_constants_match_the_sdk_headers():
    assert {f: getattr(windows, f) for f in WINDOWS_HEADER} == WINDOWS_HEADER
    standin_values = {f: getattr(standin, f) for f in WINDOWS_HEADER if hasattr(standin, f)}
    assert standin_values == {f: WINDOWS_HEADER[f] for f in standin_values}
    assert len(standin_values) >= 8


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="layout checked for 64-bit")
def test_system_info_layout_is_win64s():
    # sizeof(SYSTEM_INFO) is 48 on x64; dwAllocationGranularity sits at offset 40.
    assert ctypes.sizeof(windows.SYSTEM_INFO) == 48
    assert windows.SYSTEM_INFO.dwAllocationGranularity.offset == 40
    assert windows.SYSTEM_INFO.dwPageSize.offset == 4


def _running_os() -> str:
    for name in ("linux", "darwin", "freebsd", "win32"):
        if sys.platform.startswith(name):
            return name
    return sys.platform


def test_the_running_os_gets_its_own_backend_and_table():
    os_name = _running_os()
    expected = "windows" if os_name == "win32" else os_name
    assert gos.backend.name == expected
    if os_name in TABLES:
        assert gos.backend.c == TABLES[os_name][0]


def test_running_os_table_agrees_with_pythons_mmap_module():
    os_name = _running_os()
    if os_name not in TABLES:  # Windows: no mman.h; its constants are checked above
        assert os_name == "win32"
        return
    table = TABLES[os_name][0]
    advice = {"linux": {"MADV_DONTNEED": table.MADV_UNUSED, "MADV_HUGEPAGE": table.MADV_HUGEPAGE,
                        "MADV_NOHUGEPAGE": table.MADV_NOHUGEPAGE},
              "darwin": {"MADV_FREE_REUSABLE": table.MADV_UNUSED,
                         "MADV_FREE_REUSE": table.MADV_REUSE},
              "freebsd": {"MADV_FREE": table.MADV_UNUSED}}[os_name]
    flags = {"MAP_PRIVATE": table.MAP_PRIVATE, "MAP_ANON": table.MAP_ANON}
    if table.MAP_NORESERVE:
        flags["MAP_NORESERVE"] = table.MAP_NORESERVE
    checked = 0
    for name, ours in {**flags, **advice}.items():
        if hasattr(mmap, name):
            assert getattr(mmap, name) == ours, name
            checked += 1
    assert checked >= 2  # MAP_PRIVATE and MAP_ANON are in every POSIX build of mmap


def test_real_kernel32_is_loaded_only_on_windows():
    if sys.platform == "win32":
        b = windows.backend()
        assert b.alloc_granularity == 65536 and b.phys_page_size >= 4096
    else:
        with pytest.raises(ImportError):
            windows.backend()
