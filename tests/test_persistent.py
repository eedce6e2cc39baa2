"""persistentalloc and linearAlloc over real OS memory: alignment, zeroing, chunking,
accounting, injected OS failures and release."""

from __future__ import annotations

import ctypes
import os
import sys
import threading

import psutil
import pytest

import gcalloc.os as gos
from gcalloc.errors import InvalidAlignment, InvalidSize, OutOfMemory
from gcalloc.os import SysMemStat
from gcalloc.persistent import (
    PERSISTENT_CHUNK_SIZE,
    PERSISTENT_MAX_BLOCK,
    LinearAlloc,
    PersistentAlloc,
)

PAGE = gos.phys_page_size
KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(autouse=True)
def _no_leftover_failures():
    gos.clear_injected_failures()
    yield
    gos.clear_injected_failures()


@pytest.fixture
def pa():
    other = SysMemStat("other_sys")
    a = PersistentAlloc(other)
    yield a
    a.release_all()


def is_zero(p: int, n: int) -> bool:
    return ctypes.string_at(p, n) == bytes(n)


def write_and_check(p: int, n: int, byte: int = 0xA5) -> None:
    ctypes.memset(p, byte, n)
    assert ctypes.string_at(p, n) == bytes([byte]) * n


# --- persistentalloc ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 24, 3000, PERSISTENT_MAX_BLOCK])
def test_alignment_honoured_for_every_power_of_two(pa, size):
    for shift in range(14):  # 1 .. 8192
        align = 1 << shift
        for _ in range(3):
            p = pa.alloc(size, align, None)
            assert p % align == 0, (size, align, hex(p))
            write_and_check(p, size)  # also: the block is really ours, all of it


def test_align_zero_means_eight(pa):
    pa.alloc(3, 0, None)
    assert pa.alloc(1, 0, None) % 8 == 0


@pytest.mark.parametrize("align", [3, 12, 16384, -8])
def test_bad_align_raises_and_changes_nothing(pa, align):
    pa.alloc(16, 8, None)
    before = (pa.other_sys.value, pa.mappings())
    with pytest.raises(InvalidAlignment):
        pa.alloc(16, align, None)
    assert (pa.other_sys.value, pa.mappings()) == before


@pytest.mark.parametrize("size", [0, -1, -PERSISTENT_MAX_BLOCK])
def test_bad_size_raises_and_changes_nothing(pa, size):
    stat = SysMemStat("gc_sys")
    with pytest.raises(InvalidSize):
        pa.alloc(size, 8, stat)
    assert (pa.other_sys.value, stat.value, pa.mappings()) == (0, 0, [])


def test_memory_is_zeroed_and_writable(pa):
    small = [pa.alloc(n, 8, None) for n in (1, 100, 4096, 60 * KiB)]
    big = pa.alloc(300 * KiB, 8, None)
    for p, n in zip(small + [big], (1, 100, 4096, 60 * KiB, 300 * KiB), strict=True):
        assert is_zero(p, n)
        write_and_check(p, n)
    assert is_zero(pa.alloc(64, 8, None), 64)  # neighbours of written blocks are untouched


def test_blocks_fill_a_chunk_then_a_new_chunk_is_mapped(pa):
    n = 60 * KiB
    ps = [pa.alloc(n, 8, None) for _ in range(PERSISTENT_CHUNK_SIZE // n)]  # 4 fit
    assert len(pa.mappings()) == 1
    assert pa.other_sys.value == PERSISTENT_CHUNK_SIZE
    base = pa.mappings()[0][0]
    assert all(base <= p and p + n <= base + PERSISTENT_CHUNK_SIZE for p in ps)
    assert [b - a for a, b in zip(ps, ps[1:], strict=False)] == [n] * 3  # bump allocation, no gaps

    q = pa.alloc(n, 8, None)  # 16 KiB left: a new chunk
    assert len(pa.mappings()) == 2
    assert pa.other_sys.value == 2 * PERSISTENT_CHUNK_SIZE
    assert not base <= q < base + PERSISTENT_CHUNK_SIZE
    assert all(size == PERSISTENT_CHUNK_SIZE for _, size in pa.mappings())


def test_64k_and_larger_go_direct_to_the_os(pa):
    stat = SysMemStat("gc_sys")
    p = pa.alloc(PERSISTENT_MAX_BLOCK, 8, stat)
    assert pa.mappings() == [(p, PERSISTENT_MAX_BLOCK)]
    assert (stat.value, pa.other_sys.value) == (PERSISTENT_MAX_BLOCK, 0)
    odd = 100_001  # charged as the OS maps it: whole pages
    q = pa.alloc(odd, 8, None)
    rounded = -(-odd // PAGE) * PAGE
    assert (q, rounded) in pa.mappings()
    assert pa.other_sys.value == rounded
    just_below = pa.alloc(PERSISTENT_MAX_BLOCK - 1, 8, None)  # still a chunk allocation
    assert pa.other_sys.value == rounded + PERSISTENT_CHUNK_SIZE
    assert len(pa.mappings()) == 3 and (just_below, PERSISTENT_CHUNK_SIZE) in pa.mappings()


def test_in_persistent_alloc(pa):
    p = pa.alloc(100, 8, None)
    big = pa.alloc(200 * KiB, 8, None)
    (cbase, csize), = [m for m in pa.mappings() if m[1] == PERSISTENT_CHUNK_SIZE]
    for inside in (p, p + 99, cbase, cbase + csize - 1, big, big + 200 * KiB - 1):
        assert pa.in_persistent_alloc(inside), hex(inside)
    # The OS may place the two mappings next to each other, so an edge of one can be inside
    # the other: the expected answer comes from the two ranges themselves.
    ranges = [(cbase, cbase + csize), (big, big + 200 * KiB)]
    for x in (0, 8, cbase - 1, cbase + csize, big - 1, big + 200 * KiB, 1 << 62):
        expected = any(lo <= x < hi for lo, hi in ranges)
        assert pa.in_persistent_alloc(x) == expected, hex(x)
    assert not pa.in_persistent_alloc(0) and not pa.in_persistent_alloc(1 << 62)
    assert not PersistentAlloc(SysMemStat()).in_persistent_alloc(p)  # per heap


def test_named_stat_takes_bytes_from_other_sys(pa):
    gc_sys, other = SysMemStat("gc_sys"), pa.other_sys
    pa.alloc(100, 8, gc_sys)
    assert (gc_sys.value, other.value) == (100, PERSISTENT_CHUNK_SIZE - 100)
    pa.alloc(28, 8, None)  # None and other_sys itself: nothing moves
    pa.alloc(40, 8, other)
    assert (gc_sys.value, other.value) == (100, PERSISTENT_CHUNK_SIZE - 100)
    assert gc_sys.value + other.value == sum(size for _, size in pa.mappings())


def test_injected_failure_raises_out_of_memory_and_changes_nothing(pa):
    stat = SysMemStat("gc_sys")
    gos.inject_failure("sys_alloc")
    with pytest.raises(OutOfMemory, match="cannot allocate memory"):
        pa.alloc(100, 8, stat)
    assert (pa.other_sys.value, stat.value, pa.mappings()) == (0, 0, [])

    ps = [pa.alloc(60 * KiB, 8, stat) for _ in range(4)]  # the OS works again; chunk full
    before = (pa.other_sys.value, stat.value, pa.mappings())
    for size in (200 * KiB, 60 * KiB):  # a large block, then a new chunk
        gos.inject_failure("sys_alloc")
        with pytest.raises(OutOfMemory):
            pa.alloc(size, 8, stat)
        assert (pa.other_sys.value, stat.value, pa.mappings()) == before
    assert pa.alloc(8, 8, stat) == ps[-1] + 60 * KiB  # the bump pointer did not move either


def _maps_snapshot(buf: bytearray | None = None) -> bytes:
    """/proc/self/maps, read into ``buf`` if given: a buffer made beforehand, so that reading
    the file cannot itself map memory at an address just freed."""
    if buf is None:
        buf = bytearray(4 * MiB)
    mv = memoryview(buf)
    fd = os.open("/proc/self/maps", os.O_RDONLY)
    try:
        n = 0
        while True:
            got = os.readv(fd, [mv[n:]])
            if got == 0:
                break
            n += got
    finally:
        os.close(fd)
    return bytes(buf[:n])


def _mapped(maps: bytes, addr: int) -> bool:
    for line in maps.splitlines():
        lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split(b"-"))
        if lo <= addr < hi:
            return True
    return False


def test_release_all_returns_every_mapping_and_the_stats(pa):
    proc = psutil.Process()
    gc_sys, big_sys = SysMemStat("gc_sys"), SysMemStat("big_sys")
    buf = bytearray(4 * MiB)
    rss0 = proc.memory_info().rss
    for _ in range(4 * 32):  # 32 chunks = 8 MiB, every byte touched
        ctypes.memset(pa.alloc(60 * KiB, 8, gc_sys), 1, 60 * KiB)
    for _ in range(8):  # 8 MiB of large blocks
        ctypes.memset(pa.alloc(MiB, 4096, big_sys), 1, MiB)
    maps = pa.mappings()
    assert len(maps) == 40
    total = sum(n for _, n in maps)
    assert gc_sys.value + big_sys.value + pa.other_sys.value == total
    rss1 = proc.memory_info().rss
    assert rss1 - rss0 >= 15 * MiB

    linux = sys.platform.startswith("linux")
    if linux:
        assert all(_mapped(_maps_snapshot(buf), b) for b, _ in maps)
    pa.release_all()
    after = _maps_snapshot(buf) if linux else b""
    rss2 = proc.memory_info().rss

    assert (pa.other_sys.value, gc_sys.value, big_sys.value) == (0, 0, 0)
    assert pa.mappings() == [] and pa.mapped_bytes == 0
    assert not pa.in_persistent_alloc(maps[0][0])
    assert rss1 - rss2 >= 15 * MiB
    if linux:
        assert not any(_mapped(after, b) for b, _ in maps)
    # Usable again after release, and release is idempotent.
    p = pa.alloc(10, 8, None)
    assert pa.in_persistent_alloc(p) and pa.other_sys.value == PERSISTENT_CHUNK_SIZE
    pa.release_all()
    pa.release_all()
    assert pa.other_sys.value == 0


def test_release_all_keeps_a_mapping_the_os_refused(pa):
    pa.alloc(8, 8, None)
    big = pa.alloc(PERSISTENT_MAX_BLOCK, 8, None)
    gos.inject_failure("sys_free")
    with pytest.raises(OSError):
        pa.release_all()
    assert len(pa.mappings()) == 1  # one freed, one kept (and still charged)
    kept = pa.mappings()[0][1]
    assert pa.other_sys.value == kept
    assert kept in (PERSISTENT_MAX_BLOCK, PERSISTENT_CHUNK_SIZE)
    pa.release_all()
    assert (pa.mappings(), pa.other_sys.value) == ([], 0)
    assert not pa.in_persistent_alloc(big)


# --- linearAlloc -------------------------------------------------------------------------------

REGION = 64 * PAGE


@pytest.fixture
def region():
    base = gos.sys_reserve(None, REGION)
    assert base is not None
    la = LinearAlloc(base, REGION)
    yield la
    if la.end != la.base:
        gos.sys_free(la.base, la.end - la.base, None)


def check_invariants(la: LinearAlloc) -> None:
    assert la.base <= la.next <= la.mapped <= la.end
    assert la.mapped % PAGE == 0 and la.base % PAGE == 0


def test_linear_alloc_maps_in_phys_page_steps(region):
    la, stat = region, SysMemStat("gc_sys")
    assert la.mapped == la.base and la.next == la.base
    p = la.alloc(100, 8, stat)
    assert p == la.base and la.next == la.base + 100
    assert la.mapped == la.base + PAGE and stat.value == PAGE
    q = la.alloc(PAGE, 8, stat)  # crosses into the second page
    assert q == la.base + 104
    assert la.mapped == la.base + 2 * PAGE and stat.value == 2 * PAGE
    r = la.alloc(PAGE - 104, 8, stat)  # ends exactly on the page boundary
    assert r == la.base + 104 + PAGE and la.next == la.base + 2 * PAGE
    assert la.mapped == la.base + 2 * PAGE and stat.value == 2 * PAGE
    s = la.alloc(1, 1, stat)  # first byte of page 3
    assert s == la.base + 2 * PAGE and la.mapped == la.base + 3 * PAGE
    assert stat.value == la.mapped_bytes == 3 * PAGE
    check_invariants(la)


def test_linear_alloc_memory_is_zero_and_writable(region):
    la = region
    blocks = [(la.alloc(n, 16, None), n) for n in (10, 5000, 3 * PAGE + 7)]
    for p, n in blocks:
        assert is_zero(p, n)
        write_and_check(p, n)
    check_invariants(la)
    assert is_zero(la.next, la.mapped - la.next)  # the mapped tail is zero too


def test_linear_alloc_alignment(region):
    la = region
    la.alloc(1, 1, None)
    for align in (2, 8, 64, 4096, 8192, 16 * PAGE):
        p = la.alloc(3, align, None)
        assert p % align == 0
        check_invariants(la)
    assert la.alloc(1, 0, None) % 8 == 0


def test_linear_alloc_exhaustion_returns_none_and_changes_nothing(region):
    la, stat = region, SysMemStat()
    la.alloc(REGION - 100, 8, stat)
    state = (la.next, la.mapped, stat.value)
    assert la.alloc(101, 8, stat) is None
    assert la.alloc(8, 4096, stat) is None  # the padding is what does not fit
    assert (la.next, la.mapped, stat.value) == state
    assert la.alloc(100, 4, stat) == la.end - 100
    assert la.next == la.mapped == la.end and stat.value == REGION
    assert la.alloc(1, 1, stat) is None


@pytest.mark.parametrize("size, align, exc", [
    (0, 8, InvalidSize), (-5, 8, InvalidSize), (8, 3, InvalidAlignment),
    (8, -8, InvalidAlignment),
])
def test_linear_alloc_bad_arguments(region, size, align, exc):
    with pytest.raises(exc):
        region.alloc(size, align, None)
    assert region.next == region.mapped == region.base


def test_linear_alloc_bad_region():
    with pytest.raises(InvalidAlignment):
        LinearAlloc(PAGE + 8, PAGE)
    with pytest.raises(InvalidSize):
        LinearAlloc(PAGE, PAGE + 1)
    with pytest.raises(InvalidSize):
        LinearAlloc(PAGE, 0)


@pytest.mark.parametrize("fn", ["sys_map", "sys_used"])
def test_linear_alloc_os_failure_raises_and_changes_nothing(region, fn):
    la, stat = region, SysMemStat()
    la.alloc(10, 8, stat)
    state = (la.next, la.mapped, stat.value)
    gos.inject_failure(fn)
    with pytest.raises(OutOfMemory):
        la.alloc(PAGE, 8, stat)
    assert (la.next, la.mapped, stat.value) == state
    p = la.alloc(PAGE, 8, stat)  # works once the OS does
    write_and_check(p, PAGE)
    assert stat.value == 2 * PAGE


def test_linear_alloc_without_mapping_only_bumps():
    stat = SysMemStat()
    base = gos.sys_alloc(4 * PAGE, stat)  # the owner made it Ready and accounted it
    assert base is not None
    la = LinearAlloc(base, 4 * PAGE, map_memory=False)
    p = la.alloc(PAGE + 1, 8, SysMemStat())
    assert (p, la.mapped, stat.value) == (base, base + 2 * PAGE, 4 * PAGE)
    write_and_check(p, PAGE + 1)
    la.release(None)
    stat.sub(4 * PAGE)


def test_linear_alloc_release(region):
    la, stat = region, SysMemStat()
    base = la.base
    ctypes.memset(la.alloc(5 * PAGE, 8, stat), 7, 5 * PAGE)
    assert stat.value == 5 * PAGE
    la.release(stat)
    assert stat.value == 0
    assert la.alloc(1, 1, stat) is None
    la.release(stat)  # idempotent
    assert stat.value == 0
    if sys.platform.startswith("linux"):
        assert not _mapped(_maps_snapshot(), base)


def test_concurrent_allocs_never_overlap(pa):
    stat = SysMemStat("gc_sys")
    got: list[list[tuple[int, int]]] = [[] for _ in range(8)]

    def worker(i: int) -> None:
        for k in range(300):
            n = 1 + (k * 97 + i * 31) % 5000
            got[i].append((pa.alloc(n, 8, stat), n))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blocks = sorted(b for per in got for b in per)
    assert all(p + n <= q for (p, n), (q, _) in zip(blocks, blocks[1:], strict=False))
    assert stat.value == sum(n for _, n in blocks)
    assert stat.value + pa.other_sys.value == sum(n for _, n in pa.mappings())
