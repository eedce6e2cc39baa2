"""Fault injection (gcalloc.os.inject_failure): forced failures surface the way real ones do,
last exactly ``count`` calls, change nothing, and bad requests are refused."""

from __future__ import annotations

import pytest
from oshelpers import MiB, view

import gcalloc.os as gos
from gcalloc.errors import InjectedFailure, SysMemoryError

SENTINELS = {"sys_reserve": None, "sys_reserve_aligned": (None, 0), "sys_alloc": None}
RAISING = ["sys_map", "sys_used", "sys_unused", "sys_fault", "sys_free"]


@pytest.fixture
def region():
    """A Ready 1 MiB region, freed afterwards."""
    n = MiB
    p = gos.sys_reserve(None, n)
    gos.sys_map(p, n, None)
    gos.sys_used(p, n)
    yield p, n
    gos.clear_injected_failures()
    gos.sys_free(p, n, None)


def _call(name: str, p: int, n: int, stat: gos.SysMemStat):
    fn = getattr(gos, name)
    if name == "sys_reserve":
        return fn(None, n)
    if name == "sys_reserve_aligned":
        return fn(None, n, 4 * MiB)
    if name == "sys_alloc":
        return fn(n, stat)
    if name in ("sys_map", "sys_free"):
        return fn(p, n, stat)
    return fn(p, n)


@pytest.mark.parametrize("name", sorted(SENTINELS))
def test_injected_failure_returns_the_sentinel_then_clears(name, region):
    p, n = region
    stat = gos.SysMemStat()
    gos.inject_failure(name, 2)
    assert _call(name, p, n, stat) == SENTINELS[name]
    assert _call(name, p, n, stat) == SENTINELS[name]
    assert stat.value == 0
    got = _call(name, p, n, stat)  # the third call reaches the OS
    base = got[0] if isinstance(got, tuple) else got
    assert base is not None
    gos.sys_free(base, n, stat if name == "sys_alloc" else None)  # only sys_alloc accounts
    assert stat.value == 0


@pytest.mark.parametrize("name", RAISING)
def test_injected_failure_raises_then_clears(name, region):
    p, n = region
    stat = gos.SysMemStat(value=n)
    view(p, n)[:] = 6
    gos.inject_failure(name, 1)
    with pytest.raises(InjectedFailure) as e:
        _call(name, p, n, stat)
    assert isinstance(e.value, SysMemoryError) and isinstance(e.value, OSError)
    assert e.value.errno == 12
    assert stat.value == n, "an injected failure must not move the stat"
    assert view(p, n).min() == 6, "an injected failure must not touch the memory"
    if name != "sys_free":  # the next call goes through (sys_free would free the fixture's)
        _call(name, p, n, stat)


def test_count_zero_and_clear_cancel_pending_failures(region):
    p, n = region
    gos.inject_failure("sys_used", 5)
    gos.inject_failure("sys_used", 0)
    gos.sys_used(p, n)
    gos.inject_failure("sys_unused", 3)
    gos.inject_failure("sys_reserve", 3)
    gos.clear_injected_failures()
    gos.sys_unused(p, n)
    q = gos.sys_reserve(None, n)
    assert q is not None
    gos.sys_free(q, n, None)


def test_failures_are_per_function(region):
    p, n = region
    gos.inject_failure("sys_unused")
    gos.sys_used(p, n)  # another function is unaffected
    with pytest.raises(InjectedFailure):
        gos.sys_unused(p, n)
    gos.sys_unused(p, n)


@pytest.mark.parametrize("name, count", [("sys_mmap", 1), ("sys_huge_page", 1),
                                         ("", 1), ("sys_map", -1)])
def test_bad_requests_raise_value_error(name, count):
    with pytest.raises(ValueError):
        gos.inject_failure(name, count)
