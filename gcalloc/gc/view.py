"""AllocatorView: what the collector needs of the allocator it collects for.

The collector (mgc.py, sweep.py, finalizer.py) holds the allocator through this protocol and
reaches nothing else of it; gcalloc.malloc.Allocator implements it. Naming it keeps the
dependency one-way and visible: the allocator calls up only through its GCHooks
(gcalloc/hooks.py), the collector calls down only through these names.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gcalloc.gc.mark import Marker
    from gcalloc.mcache import MCache
    from gcalloc.mcentral import MCentral
    from gcalloc.mheap import MHeap
    from gcalloc.mspan import MSpan
    from gcalloc.mstats import HeapStats


class AllocatorView(Protocol):
    mheap: MHeap                  # the page heap: spans, sweepgen, arenas, gcbits
    central: list[MCentral]       # one per span class: sweeping files spans back here
    stats: HeapStats              # sweep counts freed slots in small_free_count
    mcaches: set[MCache]          # the thread caches: their tiny blocks are roots
    in_flight: list[int]          # each run's last slot at the last flush: roots too
    marking: Marker | None        # set while marking (the allocator allocates black)
    efence: bool                  # efence spans are faulted when freed: never marked
    zerobase: int                 # the address of every size-0 object

    def stop_the_world(self) -> None: ...
    def start_the_world(self) -> None: ...
    def flush_mcaches(self, started_by: Sequence[int] = ...) -> None: ...
    def release_large_span(self, s: MSpan) -> None: ...
    def find_object(self, p: int) -> tuple[MSpan, int] | None: ...
    def inside(self) -> contextlib.AbstractContextManager[None]: ...
    def check_open(self) -> None: ...
    def check_addr(self, p: object) -> int: ...
