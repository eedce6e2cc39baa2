"""The kernel32 stand-in against Wine's kernel32: one seeded random sequence of calls replayed on
both, every result, out-parameter and last error compared.

The calls are VirtualAlloc, VirtualFree, VirtualProtect, VirtualQuery, SetLastError and
reading or writing a byte (the stand-in says whether that faults from its own VirtualQuery and
then touches its memory; the bridge performs the access under an exception handler). Addresses
fall in a window that both processes have free at the same address, so the sequence is the same
on both, or now and then outside the application's range. An allocation with no address opens
a "handle" whose later calls are relative to each side's own base. Results that are addresses
are compared as (space, offset).

Two things are normalised. Wine's VirtualQuery splits reserved pages by the protection they had
when last committed, which Windows does not (see docs/os.md): the comparison merges such runs.
A free region's size depends on what else the process has mapped: it is compared up to the end
of the space it lies in.

A disagreement fails with the call's index and the calls before it, so that the seed replays it.
"""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass
from typing import Any

import pytest

from gcalloc.os import _kernel32_standin as s

SEED = 0x6A6C6C
CALLS = 12_000
G = s.ALLOCATION_GRANULARITY
PAGE = 4096
WINDOW = 48 * G  # the window's reservable span; calls may run up to a few granules past it
MARGIN = 8 * G
ABSOLUTE = -1  # a target's space when its offset is an address, the same on both sides
# Addresses outside the application's range: below 64 KiB, at and past the top of user space.
_OUT_OF_RANGE = (0x1000, 0xF000, s.MAX_APPLICATION_ADDRESS + 1, 0x7FFFFFFFF000, 0x800000000000,
                 (1 << 64) - PAGE)
_WINDOW_CANDIDATES = (0x200000000000, 0x300000000000, 0x100000000000, 0x3F0000000000)
_READABLE = {s.PAGE_READONLY, s.PAGE_READWRITE, s.PAGE_EXECUTE, s.PAGE_EXECUTE_READ,
             s.PAGE_EXECUTE_READWRITE}
_WRITABLE = {s.PAGE_READWRITE, s.PAGE_EXECUTE_READWRITE}
_PROTECTS = ([s.PAGE_READWRITE] * 6 + [s.PAGE_READONLY] * 2
             + [s.PAGE_NOACCESS, s.PAGE_EXECUTE_READ, s.PAGE_EXECUTE_READWRITE, s.PAGE_EXECUTE]
             + [0, 0x03, 0x08, 0x80])  # the last four are invalid
_ALLOC_TYPES = ([s.MEM_RESERVE] * 4 + [s.MEM_COMMIT] * 6 + [s.MEM_RESERVE | s.MEM_COMMIT] * 2
                + [s.MEM_COMMIT | s.MEM_TOP_DOWN, s.MEM_RESERVE | s.MEM_TOP_DOWN]
                + [0, s.MEM_DECOMMIT, s.MEM_RELEASE, s.MEM_COMMIT | s.MEM_DECOMMIT])
_FREE_TYPES = [s.MEM_RELEASE] * 4 + [s.MEM_DECOMMIT] * 5 + [0, s.MEM_RELEASE | s.MEM_DECOMMIT]


@dataclass
class Space:
    """A stretch of address space both sides use the same way: the window, or a handle."""

    bases: tuple[int, int]  # (stand-in, Wine)
    extent: int
    live: bool = True


class Side:
    """One kernel32 driven by the replay; ``which`` indexes Space.bases."""

    def __init__(self, k: Any, which: int) -> None:
        self.k, self.which = k, which
        self.wine = which == 1

    def address(self, spaces: list[Space], target: tuple[int, int] | None) -> int | None:
        if target is None:
            return None
        space, offset = target
        if space == ABSOLUTE:
            return offset
        return spaces[space].bases[self.which] + offset

    def where(self, spaces: list[Space], a: int | None) -> Any:
        """An address as (space, offset), so that both sides' answers compare."""
        if not a:
            return None
        for i, sp in enumerate(spaces):
            base = sp.bases[self.which]
            if sp.live and base <= a < base + sp.extent:
                return (i, a - base)
        return ("elsewhere", a % G == 0)

    def query(self, spaces: list[Space], a: int, length: int) -> tuple:
        mbi = s.MEMORY_BASIC_INFORMATION()
        r = self.k.VirtualQuery(a, ctypes.byref(mbi), length)
        err = self.k.get_last_error()
        if not r:
            return (r, err)
        base, size = mbi.BaseAddress or 0, mbi.RegionSize
        if self.wine and mbi.State == s.MEM_RESERVE:
            size = self._reserved_run(base, size, mbi.AllocationBase)
            self.k.set_last_error(err)  # the extra queries succeeded, but keep it exact
        place = self.where(spaces, base)
        if isinstance(place, tuple) and isinstance(place[0], int):
            sp = spaces[place[0]]
            size = min(size, sp.bases[self.which] + sp.extent - base)
        return (r, err, place, self.where(spaces, mbi.AllocationBase), mbi.AllocationProtect,
                size, mbi.State, mbi.Protect, mbi.Type)

    def _reserved_run(self, base: int, size: int, alloc: int) -> int:
        """Wine's run of reserved pages merged over its stale-protection boundaries."""
        nxt = s.MEMORY_BASIC_INFORMATION()
        while (self.k.VirtualQuery(base + size, ctypes.byref(nxt), ctypes.sizeof(nxt))
               and nxt.State == s.MEM_RESERVE and nxt.AllocationBase == alloc):
            size += nxt.RegionSize
        return size

    def access(self, a: int, write: bool, value: int) -> Any:
        if self.wine:
            if write:
                return self.k.write_byte(a, value)
            return self.k.read_byte(a)
        mbi = s.MEMORY_BASIC_INFORMATION()
        ok = self.k.VirtualQuery(a, ctypes.byref(mbi), ctypes.sizeof(mbi)) \
            and mbi.State == s.MEM_COMMIT and mbi.Protect in (_WRITABLE if write else _READABLE)
        if write:
            if ok:
                ctypes.c_uint8.from_address(a).value = value
            return bool(ok)
        return ctypes.c_uint8.from_address(a).value if ok else None


def _free_window(sides: list[Side]) -> int:
    """An address where WINDOW + MARGIN bytes are free on both sides."""
    for w in _WINDOW_CANDIDATES:
        got = [side.k.VirtualAlloc(w, WINDOW + MARGIN, s.MEM_RESERVE, s.PAGE_NOACCESS)
               for side in sides]
        for side, p in zip(sides, got):
            if p:
                assert side.k.VirtualFree(p, 0, s.MEM_RELEASE)
        if got == [w, w]:
            return w
    raise AssertionError(f"no common free window among {_WINDOW_CANDIDATES}")


class Replay:
    def __init__(self, standin: Any, wine: Any, seed: int) -> None:
        self.sides = [Side(standin, 0), Side(wine, 1)]
        w = _free_window(self.sides)
        self.spaces = [Space((w, w), WINDOW + MARGIN)]
        for side in self.sides:
            side.k.set_last_error(0)
        self.seed = seed
        self.rng = random.Random(seed)
        self.log: list[str] = []
        self.calls = 0

    # --- choosing a call -------------------------------------------------------------------

    def _target(self, absolute: bool = True) -> tuple[int, int]:
        """Where a call goes: mostly the window, sometimes a live handle, and (``absolute``)
        now and then an address outside the application's range."""
        rng = self.rng
        if absolute and rng.random() < 0.03:
            return ABSOLUTE, rng.choice(_OUT_OF_RANGE)
        live = [i for i, sp in enumerate(self.spaces) if sp.live and i]
        if live and rng.random() < 0.3:
            i = rng.choice(live)
            return i, rng.randrange(0, self.spaces[i].extent, PAGE) + rng.choice([0, 0, 0, 7])
        page = rng.randrange(0, WINDOW // PAGE)
        if rng.random() < 0.4:
            page &= ~(G // PAGE - 1)  # a granule's first page, where reservations start
        return 0, page * PAGE + rng.choice([0] * 6 + [1, 0x123, PAGE - 1])

    def _size(self, target: tuple[int, int] | None, wrap: bool = False) -> int:
        """A size for a call at ``target``; ``wrap`` allows one that wraps past 2**64, which
        only VirtualAlloc is given: Wine's VirtualFree and VirtualProtect round such a size
        down to a small one and go ahead, where Windows checks for the overflow."""
        rng = self.rng
        r = rng.random()
        if r < 0.01:
            return rng.choice([0, 1 << 62] + [(1 << 64) - PAGE] * wrap)
        if r < 0.4:
            n = rng.randint(1, 16) * PAGE
        elif r < 0.7:
            n = rng.randint(1, 4) * G
        else:
            n = rng.randint(1, 3 * PAGE)
        if target is not None and target[0] > 0:  # inside a handle: past it lies the unknown
            n = max(1, min(n, self.spaces[target[0]].extent - target[1]))
        return n

    # --- running it --------------------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        op = rng.choices(["alloc", "free", "protect", "query", "access", "error"],
                         [40, 25, 10, 12, 12, 1])[0]
        if op == "alloc":
            anywhere = rng.random() < 0.08 and sum(sp.live for sp in self.spaces) < 8
            target = None if anywhere else self._target()
            args = (target, self._size(target, wrap=True), rng.choice(_ALLOC_TYPES),
                    rng.choice(_PROTECTS))
            self._compare(f"VirtualAlloc{args}", lambda sd: self._alloc(sd, *args), target)
            if anywhere:
                self._open_handle(args[1])
        elif op == "free":
            target = self._target()
            kind = rng.choice(_FREE_TYPES)
            size = 0 if rng.random() < 0.5 else self._size(target)
            self._compare(f"VirtualFree{(target, size, kind)}", lambda sd: self._free(
                sd, target, size, kind), target)
        elif op == "protect":
            target = self._target()
            args = (target, self._size(target) if rng.random() < 0.95 else 0,
                    rng.choice(_PROTECTS), rng.random() < 0.97)
            self._compare(f"VirtualProtect{args}", lambda sd: self._protect(sd, *args), target)
        elif op == "query":
            target = self._target(absolute=False)
            length = rng.choice([ctypes.sizeof(s.MEMORY_BASIC_INFORMATION)] * 20 + [47, 0])
            self._compare(f"VirtualQuery{(target, length)}", lambda sd: sd.query(
                self.spaces, sd.address(self.spaces, target), length))
        elif op == "access":
            target, write, value = (self._target(absolute=False), rng.random() < 0.5,
                                    rng.randrange(256))
            self._compare(f"access{(target, write, value)}", lambda sd: sd.access(
                sd.address(self.spaces, target), write, value), target)
        else:
            code = rng.choice([0, 5, 87, 487, 0xDEAD])
            self._compare(f"SetLastError({code})", lambda sd: (
                sd.k.set_last_error(code), sd.k.get_last_error()))

    def _alloc(self, sd: Side, target, size, kind, protect) -> tuple:
        r = sd.k.VirtualAlloc(sd.address(self.spaces, target), size, kind, protect)
        return (sd.where(self.spaces, r), sd.k.get_last_error(), r)

    def _open_handle(self, size: int) -> None:
        got = self.last[0][2], self.last[1][2]
        if got[0] and got[1]:
            extent = (size + PAGE - 1) & ~(PAGE - 1)
            self.spaces.append(Space(got, extent))

    def _free(self, sd: Side, target, size, kind) -> tuple:
        a = sd.address(self.spaces, target)
        r = sd.k.VirtualFree(a, size, kind)
        if r and kind == s.MEM_RELEASE and target[0] > 0 and sd.wine:
            self.spaces[target[0]].live = False  # both sides agreed, or _compare fails first
        return (r, sd.k.get_last_error())

    def _protect(self, sd: Side, target, size, protect, out) -> tuple:
        old = ctypes.c_uint32(0xDEAD)
        r = sd.k.VirtualProtect(sd.address(self.spaces, target), size, protect,
                                ctypes.byref(old) if out else None)
        return (r, sd.k.get_last_error(), old.value if r else None)

    def _compare(self, call: str, run, target: tuple[int, int] | None = None) -> None:
        self.calls += 1
        self.log.append(call)
        got = [run(sd) for sd in self.sides]
        self.last = got
        a, b = (g[:2] if call.startswith("VirtualAlloc") else g for g in got)
        if a != b:
            recent = "\n  ".join(self.log[-25:])
            where = "" if target is None else "\nVirtualQuery of the target:" + "".join(
                f"\n  {sd.query(self.spaces, sd.address(self.spaces, target), 48)}"
                for sd in self.sides)
            raise AssertionError(
                f"call {self.calls} disagrees: {call}\n  stand-in: {a}\n  Wine:     {b}{where}\n"
                f"the calls up to it (seed {self.seed:#x}):\n  {recent}")

    def run(self, calls: int) -> None:
        while self.calls < calls:
            self.step()


def test_the_stand_in_agrees_with_wine_on_a_random_call_sequence(sk, wine):
    replay = Replay(sk, wine, SEED)
    replay.run(CALLS)
    assert replay.calls >= 10_000
    assert len(replay.spaces) > 1, "the sequence never allocated without an address"


class _ReleaseNotAtBaseIsParameter(s.Kernel32StandIn):
    """The stand-in as it was before Wine was asked: ERROR_INVALID_PARAMETER for a release
    inside a reservation but not at its base."""

    def VirtualFree(self, address, size, free_type):  # noqa: N802
        r = super().VirtualFree(address, size, free_type)
        if not r and self.get_last_error() == s.ERROR_INVALID_ADDRESS \
                and free_type == s.MEM_RELEASE:
            self.set_last_error(s.ERROR_INVALID_PARAMETER)
        return r


def test_the_replay_finds_a_wrong_error_code(wine):
    k = _ReleaseNotAtBaseIsParameter()
    try:
        with pytest.raises(AssertionError, match="disagrees: VirtualFree"):
            Replay(k, wine, SEED).run(CALLS)
    finally:
        k.close()
