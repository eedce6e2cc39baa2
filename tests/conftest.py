"""Shared fixtures for the allocator suites.

- ``heap``: a fresh ``gcalloc.Heap`` closed after the test, with no automatic collections
  (gc_percent=-1), no background scavenger and no GCALLOC_DEBUG flags, so neither the pacer
  nor the environment changes what a test measures. Objects a test keeps across an explicit
  collection (``free_os_memory`` collects first) must be rooted.
- ``rss``: a function returning this process's resident set size in bytes (psutil).
- every test runs without GCALLOC_MEMLIMIT: a limit set in the caller's environment would make
  the pacer collect early in heaps that tests measure (tests of the variable set it).
- the native mark path is loaded before the first test (``pytest_sessionstart``): its loader
  thread maps memory, which could land in a range a test has just unmapped and checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psutil
import pytest

import gcalloc

_PROCESS = psutil.Process()


def pytest_sessionstart(session: pytest.Session) -> None:
    from gcalloc.gc import marknative
    marknative.available()   # load (or compile) it now, not on a thread during a test


def current_rss() -> int:
    """Resident set size of this process, in bytes."""
    return _PROCESS.memory_info().rss


@pytest.fixture(autouse=True)
def _no_memory_limit_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCALLOC_MEMLIMIT", raising=False)


@pytest.fixture
def heap() -> Iterator[gcalloc.Heap]:
    h = gcalloc.Heap(-1, scavenger=False, debug="")
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def rss() -> Callable[[], int]:
    return current_rss
