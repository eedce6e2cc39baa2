"""The process's address space as one Python buffer, and memclrNoHeapPointers over it.

Go clears memory with memclrNoHeapPointers (an assembly loop); from Python the cheapest way to
clear a few KiB is a slice assignment on a memoryview (~0.2 us) rather than a ctypes call to
memset (~0.6 us, most of it the foreign-call machinery). Both the allocator (zeroing slots
handed out from a span that may be dirty) and the collector (reading heap words and root
ranges) use the same view of the address space, so it lives here, below both.

Invariant: the views are only ever touched at addresses the caller knows are mapped (a heap
span in use, a declared root range); touching anything else faults like any wild pointer.
"""

from __future__ import annotations

import ctypes

import numpy as np

ADDRESS_SPACE_BASE = 0x1000
ADDRESS_SPACE_END = 1 << 47

MEM_RAW = (ctypes.c_uint8 * (ADDRESS_SPACE_END - ADDRESS_SPACE_BASE)).from_address(
    ADDRESS_SPACE_BASE)
"""The user address space [0x1000, 2**47) as one ctypes buffer."""

MEM64 = np.frombuffer(MEM_RAW, dtype=np.uint8).view(np.uint64)
"""The same as uint64 words: the word at address a is ``MEM64[(a - 0x1000) >> 3]``."""

_BYTES = memoryview(MEM_RAW).cast("B")
# Clears up to this size copy from a zero buffer; bigger ones call memset once.
ZERO_CHUNK = 128 << 10
_ZEROS = memoryview(bytes(ZERO_CHUNK))
_memset = ctypes.memset


def memclr(p: int, n: int) -> None:
    """Zero the n bytes at address p (mapped, writable)."""
    if n <= ZERO_CHUNK:
        i = p - ADDRESS_SPACE_BASE
        _BYTES[i:i + n] = _ZEROS[:n]
    else:
        _memset(p, 0, n)


def word_index(addr: int) -> int:
    """Index of the word at addr in MEM64."""
    return (addr - ADDRESS_SPACE_BASE) >> 3
