"""memclrNoHeapPointers: clearing memory by address from Python.

Go clears memory with memclrNoHeapPointers (an assembly loop); from Python the cheapest way to
clear a few KiB is a slice assignment on a memoryview of the address space: a ctypes call to
memset spends most of its time in the foreign-call machinery. Clears bigger than ZERO_CHUNK
call memset once.
"""

from __future__ import annotations

import ctypes

from gcalloc.addrspace import ADDRESS_SPACE_BASE, ADDRESS_SPACE_END, MEM_BYTES

# Clears up to this size copy from a zero buffer; bigger ones call memset once.
ZERO_CHUNK = 128 << 10
_ZEROS = memoryview(bytes(ZERO_CHUNK))
_memset = ctypes.memset


def memclr(p: int, n: int) -> None:
    """Zero the n bytes at address p (mapped, writable)."""
    assert ADDRESS_SPACE_BASE <= p and 0 <= n and p + n <= ADDRESS_SPACE_END, (p, n)
    if n <= ZERO_CHUNK:
        i = p - ADDRESS_SPACE_BASE
        MEM_BYTES[i:i + n] = _ZEROS[:n]
    else:
        _memset(p, 0, n)
