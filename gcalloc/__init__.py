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


def get_include() -> str:
    """The directory holding gcalloc.h, the header-only C ABI (as numpy.get_include()):
    ``cc -I$(python -c 'import gcalloc; print(gcalloc.get_include())')``."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


__all__ = ["Heap", "Handle", "MemStats", "Type", "Pointer", "GcallocError", "errors",
           "WeakPointer", "Cleanup", "MemLimitStats", "get_include", "__version__"]
