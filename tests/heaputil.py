"""Helpers shared by the test files: read and write heap words."""

from __future__ import annotations

import ctypes

U64 = ctypes.c_uint64


def poke(addr: int, value: int) -> None:
    U64.from_address(addr).value = value


def peek(addr: int) -> int:
    return U64.from_address(addr).value
