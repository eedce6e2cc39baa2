"""The process's user address space as Python buffers, for code that reads or writes heap and
root memory by address without a ctypes call per access.

Both the allocator (clearing slots, gcalloc.memclr) and the collector (gathering heap words,
reading root ranges) index these views; they live here, below both.

Invariant: the views are only ever touched at addresses the caller knows are mapped (a heap
span in use, a declared root range); touching anything else faults like any wild pointer.
"""

from __future__ import annotations

import ctypes
from typing import cast

import numpy as np

ADDRESS_SPACE_BASE = 0x1000
ADDRESS_SPACE_END = 1 << 47

MEM_RAW = (ctypes.c_uint8 * (ADDRESS_SPACE_END - ADDRESS_SPACE_BASE)).from_address(
    ADDRESS_SPACE_BASE)
"""The user address space [0x1000, 2**47) as one ctypes buffer."""

# ctypes arrays export the buffer protocol, which numpy's stubs do not list for frombuffer
MEM64 = np.frombuffer(cast(memoryview, MEM_RAW), dtype=np.uint8).view(np.uint64)
"""The same as uint64 words: the word at address a is ``MEM64[(a - 0x1000) >> 3]``."""

MEM_BYTES = memoryview(MEM_RAW).cast("B")
"""The same as a flat memoryview of bytes: byte a is ``MEM_BYTES[a - 0x1000]``."""


def word_index(addr: int) -> int:
    """Index of the word at addr in MEM64."""
    return (addr - ADDRESS_SPACE_BASE) >> 3
