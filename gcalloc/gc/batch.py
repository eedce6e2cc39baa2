"""The collector's half of batch allocation (Heap.alloc_many; the allocator's half is
gcalloc/batch.py): the returned array as a root, and typed objects' heap bits in bulk.

The array is a root range (conservative) over its own buffer, registered while the caller
holds the collector's lock and removed by a ``weakref.finalize`` on the buffer's owner: every
view of the array keeps the owner (numpy collapses ``base`` to it), so the range lives exactly
as long as some array shows those words; the caller gets a view, which cannot be resized
(it does not own the buffer), so the range never points at freed memory. Copies are not
roots.

Invariant: a registered range covers the live buffer of an array the heap handed out.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING

import numpy as np

from gcalloc.errors import GcallocError
from gcalloc.gc import bitmap
from gcalloc.gc.types import Type
from gcalloc.sizeclasses import PAGE_SHIFT

if TYPE_CHECKING:
    from gcalloc.arena import Arenas
    from gcalloc.gc.roots import RootSet
    from gcalloc.mspan import MSpan


def rooted_array(roots: RootSet, addrs: np.ndarray) -> np.ndarray:
    """A root range over an array's own buffer, removed when Python frees the buffer. The
    caller gets a view: views of views keep the owner (their ``base``) alive, and a view
    cannot be resized out from under the range."""
    owner = addrs if addrs.flags.owndata and addrs.dtype == np.uint64 else \
        np.array(addrs, dtype=np.uint64)
    token = roots.add_range(owner.ctypes.data, owner.nbytes, None)
    weakref.finalize(owner, _unroot, roots, token)
    return owner[:]


def _unroot(roots: RootSet, token: int) -> None:
    with contextlib.suppress(GcallocError):   # the heap may have closed first
        roots.remove_range(token)


def type_batch(arenas: Arenas, spans: list[MSpan], elemsize: int, t: Type, size: int) -> None:
    """The precise bits of a batch's typed objects, one write per span: the slot's pointer
    mask (bitmap.object_bits) repeated over the span's used slots by bitmap.set_object_type.
    Words after an object's last pointer keep their scan bit when another object follows
    (precise pointer bits, a longer scan: never a lost pointer)."""
    if spans[0].sizeclass == 0:         # a span per object: each its own object
        for s in spans:
            bitmap.set_object_type(arenas, s.base, s.npages << PAGE_SHIFT, t, size)
            s.typed = True
        return
    slot = Type(elemsize, bitmap.object_bits(t, size, elemsize)[0])
    for s in spans:
        used = s.allocCount * elemsize
        bitmap.set_object_type(arenas, s.base, used, slot, used)
        s.typed = True
