"""GCHooks: everything the allocator calls in the layer above it, in one object.

The allocator (malloc.py, free.py), the page heap (mheap.py) and the centrals (mcentral.py)
know nothing of the collector; where they need it, they call a field of the ``GCHooks`` they
were given at construction. ``Heap`` builds the one instance and passes it down; nothing
assigns a hook afterwards, so "who calls sweep_span?" is answered by this file's fields and
a grep for ``hooks.<name>``.

Every hook runs off the allocation fast path (in a slow path, free, or the page heap's
growth), inside the calling thread's safepoint region unless its field says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gcalloc.mspan import MSpan


@dataclass(slots=True, frozen=True)
class GCHooks:
    # mcentral met an unswept span (sweepgen == h.sweepgen - 2, claimed by the caller):
    # sweep it; ``preserve`` keeps it out of the page heap even if empty (Go's sweep with
    # preserve=true). Returns True if the span went back to the page heap.
    sweep_span: Callable[[MSpan, bool], bool]
    # free is about to read span s's bits: sweep it first if it still needs it.
    ensure_swept: Callable[[MSpan], None]
    # A refill or large span charged n bytes to the pacer (negative: a refund); True once the
    # heap reached its goal, and only then does the slow path call ``gc_poll``.
    charge_live: Callable[[int], bool]
    # The heap reached its goal: maybe collect, with p (the object just allocated) a root.
    # Called after the safepoint region ended.
    gc_poll: Callable[[int], None]
    # The heap-profile countdown hit zero at object p of ``size`` bytes: record it.
    on_sample: Callable[[int, int], None]
    # Explicit free of slot idx of span s (0 for a large span), after every check passed and
    # before the slot is free again: specials, heap bits, and ``refund`` bytes back to the
    # pacer (0 for a slot that stays charged: see gc/pacer.py).
    on_free: Callable[[MSpan, int, int], None]
    # ``alloc(size, type=T)`` off the typed fast path: check T against size, allocate, log
    # (small) or write (large) T's pointer bits, fill the allocator's ``typed_fast`` entry.
    alloc_typed: Callable[[int, object, bool, bool], int]
    # The collector's MemStats fields (next_gc, num_gc, pause_ns, ...) as a dict.
    gc_memstats: Callable[[], dict[str, Any]]
    # Page heap, under no lock: sweep before growing by npages (Go's reclaim).
    reclaim: Callable[[int], None]
    # Page heap: new in-use spans (one batch, adjacent) before they are handed out.
    on_new_spans: Callable[[list[MSpan]], None]
