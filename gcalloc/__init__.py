"""gcalloc: the Go runtime's memory allocator and a mark-sweep garbage collector, in Python
over real operating-system memory. Public names only; see README.md and docs/."""

from gcalloc import errors
from gcalloc.errors import GcallocError
from gcalloc.gc.memlimit import MemLimitStats
from gcalloc.gc.roots import Handle
from gcalloc.gc.types import Pointer, Type
from gcalloc.gc.weak import Cleanup, WeakPointer
from gcalloc.heap import Heap
from gcalloc.mstats import MemStats

__version__ = "0.1.0"

__all__ = ["Heap", "Handle", "MemStats", "Type", "Pointer", "GcallocError", "errors",
           "WeakPointer", "Cleanup", "MemLimitStats", "__version__"]
