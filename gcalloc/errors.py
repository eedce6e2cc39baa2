"""The exceptions gcalloc raises on purpose.

Every one derives from GcallocError and, where one fits, from the built-in it refines, so a
caller can catch ``ValueError`` or ``MemoryError`` without knowing gcalloc. This module is a
leaf: every layer may import it, and it imports nothing of gcalloc.

Invariant: an exception raised through the public API leaves the heap as it was before the
call (the check comes before the change).
"""

from __future__ import annotations


class GcallocError(Exception):
    """Base class of every error gcalloc raises on purpose."""


# --- OS layer -------------------------------------------------------------------------------

class SysMemoryError(GcallocError, OSError):
    """An operating-system memory call (mmap, madvise, VirtualAlloc, ...) failed.

    ``errno`` / ``strerror`` carry the OS's reason where it gave one.
    """


class InjectedFailure(SysMemoryError):
    """A failure forced by ``gcalloc.os.inject_failure`` to test error paths."""


# --- allocator -------------------------------------------------------------------------------

class OutOfMemory(GcallocError, MemoryError):
    """The heap could not obtain memory from the OS for a request."""


class InvalidSize(GcallocError, ValueError):
    """A size or count argument is negative, too large, or overflows when multiplied."""


class InvalidArgument(GcallocError, TypeError):
    """An argument has the wrong type (an address that is not an integer, a type that is not
    a ctypes type or gcalloc.Type, a finalizer that is not callable)."""


class InvalidAlignment(GcallocError, ValueError):
    """An alignment is not a power of two or is larger than the allocator supports."""


class InvalidPointer(GcallocError, ValueError):
    """Base class for an address the heap cannot act on."""

    def __init__(self, message: str, addr: int | None = None) -> None:
        super().__init__(message)
        self.addr = addr


class NotHeapPointer(InvalidPointer):
    """The address does not point into an object allocated by this heap."""


class InteriorPointer(InvalidPointer):
    """The address points inside an object, not at its start."""


class DoubleFree(InvalidPointer):
    """The object at this address has already been freed."""


class TinyObjectFree(InvalidPointer):
    """The object lives in a shared 16-byte tiny block and cannot be freed on its own."""


class InvalidRootRange(InvalidPointer):
    """add_root_range over memory the collector cannot scan: outside the user address space,
    not mapped readable in this process, or overlapping this heap's own arenas."""


class HeapCorruption(GcallocError, RuntimeError):
    """An internal invariant is broken (Go's ``throw``); carries the details found."""


class HeapClosed(GcallocError, RuntimeError):
    """The heap was closed; its memory has been returned to the OS."""


# --- collector and configuration ---------------------------------------------------------

class ThreadSuspendTimeout(GcallocError, TimeoutError):
    """A collection could not stop a registered C thread in time (it kept declining the
    suspend signal, or has it blocked): the collection was abandoned, every thread resumed."""


class NotARoot(GcallocError, ValueError):
    """remove_root / remove_root_range of something that is not a root."""


class InvalidType(GcallocError, TypeError):
    """A type cannot be described to the collector (unaligned pointer, bad mask, ...)."""


class FinalizerAlreadySet(GcallocError, ValueError):
    """set_finalizer on an object that already has one (clear it with None first)."""


class FinalizerNotCallable(InvalidArgument):
    """The finalizer given to set_finalizer is neither callable nor None."""


class CleanupNotCallable(InvalidArgument):
    """The function given to add_cleanup is not callable."""


class CleanupArgIsObject(GcallocError, ValueError):
    """add_cleanup's arg is the object itself (an address inside it, or a Handle to it): the
    cleanup would keep it alive for ever or receive its dead address (Go panics alike)."""


class ConfigError(GcallocError, ValueError):
    """A GCALLOC_DEBUG, GCALLOC_GOGC or GCALLOC_MEMLIMIT value cannot be parsed."""
