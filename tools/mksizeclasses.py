"""Generate gcalloc/sizeclasses.py: the Go 1.16 small-object size-class tables.

Design: a Python re-implementation of the algorithm in Go 1.16's src/runtime/mksizeclasses.go.

1. Walk candidate sizes upward in steps of an alignment that grows with the size
   (8, then 16 from 32 bytes, then size/8 from 128 bytes, then 256 from 2048 bytes).
2. For each candidate pick the smallest span (whole pages) whose tail waste is at most 1/8.
3. A candidate that needs the same pages and yields the same objects per span as the previous
   class replaces it (the larger size costs nothing extra).
4. Grow each class to the largest multiple of 128 bytes that still fits the same count.
5. Compute Go 1.16's division magic (shift, shift2, mul, base_mask) per class.

The whole target module (tables and the small helpers that read them) is emitted from this file,
so regenerating and comparing with the committed text checks everything at once.

Usage:
    python tools/mksizeclasses.py            # writes gcalloc/sizeclasses.py
    python tools/mksizeclasses.py --stdout   # prints it instead
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

# Constants shared with the runtime (same names and values as Go 1.16).
PAGE_SHIFT = 13
PAGE_SIZE = 1 << PAGE_SHIFT
MAX_SMALL_SIZE = 32 << 10
SMALL_SIZE_DIV = 8
SMALL_SIZE_MAX = 1024
LARGE_SIZE_DIV = 128
NUM_SIZE_CLASSES = 68  # Go 1.16 panics if the algorithm ever yields a different count.
TINY_SIZE = 16
TINY_SIZE_CLASS = 2

OUTPUT = Path(__file__).resolve().parent.parent / "gcalloc" / "sizeclasses.py"
LINE_LENGTH = 100


@dataclass
class SizeClass:
    size: int  # largest object size served by the class (bytes)
    npages: int  # pages per span


def is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def alignment_step(size: int, align: int) -> int:
    """Return the candidate step to use from `size` on; it only changes at powers of two."""
    if not is_power_of_two(size):
        return align
    if size >= 2048:
        return 256
    if size >= 128:
        return size // 8  # keeps the round-up waste of the next step at 12.5%
    if size >= 32:
        return 16  # heap bitmaps assume 16-byte alignment for objects >= 32 bytes
    return align


def span_pages(size: int) -> int:
    """Smallest number of pages whose leftover after cutting `size` objects is <= 1/8."""
    span = PAGE_SIZE
    while span % size > span // 8:
        span += PAGE_SIZE
    return span // PAGE_SIZE


def candidate_classes() -> list[SizeClass]:
    """Steps 1-3: walk aligned sizes, merging candidates that add nothing."""
    classes = [SizeClass(0, 0)]  # class 0 is reserved for large objects
    align = 8
    size = align
    while size <= MAX_SMALL_SIZE:
        align = alignment_step(size, align)
        npages = span_pages(size)
        prev = classes[-1]
        span = npages * PAGE_SIZE
        if len(classes) > 1 and npages == prev.npages and span // size == span // prev.size:
            prev.size = size
        else:
            classes.append(SizeClass(size, npages))
        size += align
    return classes


def grow_to_fill_span(classes: list[SizeClass]) -> None:
    """Step 4: enlarge objects while the count per span stays the same.

    The new size is rounded down to LARGE_SIZE_DIV so that size_to_class128 stays exact.
    """
    for c in classes[1:]:
        span = c.npages * PAGE_SIZE
        grown = (span // (span // c.size)) & ~(LARGE_SIZE_DIV - 1)
        c.size = max(c.size, grown)


def make_classes() -> list[SizeClass]:
    classes = candidate_classes()
    grow_to_fill_span(classes)
    if len(classes) != NUM_SIZE_CLASSES:
        raise AssertionError(f"number of size classes changed: {len(classes)}")
    return classes


def quotient_is_exact(mul: int, k: int, d: int, limit: int) -> bool:
    """Whether (n * mul) >> k == n // d for every 0 <= n <= limit, with mul = ceil(2**k / d).

    Since mul >= 2**k / d the product never undershoots, and within one quotient bucket
    [q*d, q*d + d - 1] it only grows with n, so checking each bucket's last n suffices.
    """
    for q in range(limit // d + 1):
        n = min(q * d + d - 1, limit)
        if (n * mul) >> k != q:
            return False
    return True


def div_magic(size: int, npages: int) -> tuple[int, int, int, int]:
    """Go 1.16's divMagic: off // size == ((off >> shift) * mul) >> shift2 for 0 <= off <= span.

    base_mask is non-zero only for power-of-two sizes, where masking finds an object's base.
    The smallest k is chosen so that mul fits 16 bits and the product fits 32 bits.
    """
    if size == 0:
        return (0, 0, 0, 0)
    limit = npages * PAGE_SIZE
    base_mask = 0
    if is_power_of_two(size):
        if limit >= 1 << 16:
            raise AssertionError("span too big for a 16-bit base mask")
        base_mask = (1 << 16) - size
    shift = 0
    d = size
    while d % 2 == 0:  # factor powers of two out as a cheap pre-shift
        shift += 1
        d >>= 1
        limit >>= 1
    k = 0
    while True:
        mul = -(-(1 << k) // d)  # ceil(2**k / d)
        if quotient_is_exact(mul, k, d, limit):
            break
        k += 1
    if mul >= 1 << 16 or mul * limit >= 1 << 32:
        raise AssertionError(f"div magic too big for size {size}")
    return (shift, k, mul, base_mask)


def smallest_class_table(classes: list[SizeClass], first: int, step: int, count: int) -> list[int]:
    """Entry i is the smallest class whose size is >= first + i*step."""
    table = []
    for i in range(count):
        want = first + i * step
        table.append(next(j for j, c in enumerate(classes) if c.size >= want))
    return table


def comment_table(classes: list[SizeClass]) -> list[str]:
    """The human-readable table in the shape of Go 1.16's sizeclasses.go header."""
    fields = ("class", "bytes/obj", "bytes/span", "objects", "tail waste", "max waste")
    lines = ["# {:<5}  {:<9}  {:<10}  {:<7}  {:<10}  {:<9}".format(*fields)]
    prev_size = 0
    for i, c in enumerate(classes[1:], start=1):
        span = c.npages * PAGE_SIZE
        objects = span // c.size
        tail = span - c.size * objects
        # Worst case: every object is one byte bigger than the previous class.
        max_waste = ((c.size - prev_size - 1) * objects + tail) / span
        prev_size = c.size
        pct = 100 * max_waste
        lines.append(f"# {i:5d}  {c.size:9d}  {span:10d}  {objects:7d}  {tail:10d}  {pct:8.2f}%")
    return [line.rstrip() for line in lines]


def format_tuple(name: str, items: list[str]) -> list[str]:
    """`name = (a, b, ...)` wrapped to LINE_LENGTH with four-space continuation lines."""
    lines = [f"{name} = ("]
    line = "   "
    for item in items:
        piece = f" {item},"
        if len(line) + len(piece) > LINE_LENGTH:
            lines.append(line)
            line = "   "
        line += piece
    lines.append(line)
    lines.append(")")
    return lines


HEADER = '''\
# Code generated by tools/mksizeclasses.py; DO NOT EDIT.
"""Go 1.16 small-object size classes: tables, size->class lookup, span classes.

This module owns the mapping from an allocation size to a size class, the span shape of each
class (pages, objects) and the division magic that turns a byte offset in a span into an
object index. It is generated by tools/mksizeclasses.py (run `python tools/mksizeclasses.py`
to regenerate) and must not be edited by hand. See docs/sizeclasses.md.

Tables are plain tuples of ints because they are indexed on the allocation fast path.
"""

from __future__ import annotations
'''

HELPERS = '''\
def size_to_class(size: int) -> int:
    """Size class for a small allocation of `size` bytes (1 <= size <= MAX_SMALL_SIZE)."""
    if not 0 < size <= MAX_SMALL_SIZE:
        raise ValueError(f"size {size} is not a small allocation size")
    if size <= SMALL_SIZE_MAX - 8:
        return size_to_class8[(size + SMALL_SIZE_DIV - 1) // SMALL_SIZE_DIV]
    return size_to_class128[(size - SMALL_SIZE_MAX + LARGE_SIZE_DIV - 1) // LARGE_SIZE_DIV]


def round_up_size(size: int) -> int:
    """Bytes actually allocated for a request of `size` bytes (Go's roundupsize).

    Small sizes round up to their class size, larger ones to a whole number of pages. As in
    Go, a size whose page round-up would overflow a uint64 is returned unchanged (the caller
    then fails the allocation as too large). Sizes outside 0..2**64-1 raise ValueError.
    """
    if not 0 <= size <= _UINT64_MAX:
        raise ValueError(f"size {size} is not a uintptr")
    if size < MAX_SMALL_SIZE:
        if size <= SMALL_SIZE_MAX - 8:
            return class_to_size[size_to_class8[(size + SMALL_SIZE_DIV - 1) // SMALL_SIZE_DIV]]
        index = (size - SMALL_SIZE_MAX + LARGE_SIZE_DIV - 1) // LARGE_SIZE_DIV
        return class_to_size[size_to_class128[index]]
    if size + PAGE_SIZE > _UINT64_MAX:
        return size
    return (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def obj_index(sizeclass: int, offset: int) -> int:
    """offset // class_to_size[sizeclass] via the division magic (Go 1.16 mspan.objIndex).

    `offset` is a byte offset from the span base, 0 <= offset <= span bytes.
    """
    shift, shift2, mul, base_mask = class_to_divmagic[sizeclass]
    if base_mask:
        return offset >> shift
    return ((offset >> shift) * mul) >> shift2


class SpanClass(int):
    """A span class as a plain int index (sizeclass << 1 | noscan) with named views."""

    __slots__ = ()

    @property
    def sizeclass(self) -> int:
        return int(self) >> 1

    @property
    def noscan(self) -> bool:
        return bool(int(self) & 1)

    def __repr__(self) -> str:
        return f"SpanClass(sizeclass={self.sizeclass}, noscan={self.noscan})"


# Interned so make_span_class is a tuple lookup, not an object allocation.
_SPAN_CLASSES = tuple(SpanClass(i) for i in range(NUM_SPAN_CLASSES))


def make_span_class(sizeclass: int, noscan: bool) -> SpanClass:
    """Span class for objects of `sizeclass`; noscan spans hold no pointers."""
    if not 0 <= sizeclass < NUM_SIZE_CLASSES:
        raise ValueError(f"size class {sizeclass} out of range")
    return _SPAN_CLASSES[sizeclass << 1 | bool(noscan)]


def span_class_sizeclass(spc: int) -> int:
    return spc >> 1


def span_class_noscan(spc: int) -> bool:
    return bool(spc & 1)
'''


def generate() -> str:
    """Return the full text of gcalloc/sizeclasses.py."""
    classes = make_classes()
    magics = [div_magic(c.size, c.npages) for c in classes]
    small = smallest_class_table(classes, 0, SMALL_SIZE_DIV, SMALL_SIZE_MAX // SMALL_SIZE_DIV + 1)
    large_count = (MAX_SMALL_SIZE - SMALL_SIZE_MAX) // LARGE_SIZE_DIV + 1
    large = smallest_class_table(classes, SMALL_SIZE_MAX, LARGE_SIZE_DIV, large_count)
    nelems = [c.npages * PAGE_SIZE // c.size if c.size else 0 for c in classes]

    out = [HEADER]
    out += comment_table(classes)
    out += [
        "",
        f"PAGE_SHIFT = {PAGE_SHIFT}",
        f"PAGE_SIZE = {PAGE_SIZE}",
        f"MAX_SMALL_SIZE = {MAX_SMALL_SIZE}",
        f"SMALL_SIZE_DIV = {SMALL_SIZE_DIV}",
        f"SMALL_SIZE_MAX = {SMALL_SIZE_MAX}",
        f"LARGE_SIZE_DIV = {LARGE_SIZE_DIV}",
        f"NUM_SIZE_CLASSES = {len(classes)}",
        f"NUM_SPAN_CLASSES = {len(classes) << 1}",
        f"TINY_SIZE = {TINY_SIZE}",
        f"TINY_SIZE_CLASS = {TINY_SIZE_CLASS}",
        "",
        "_UINT64_MAX = (1 << 64) - 1",
        "",
        "# fmt: off",
        "# Indexed by size class; class 0 (large objects) is a placeholder.",
    ]
    out += format_tuple("class_to_size", [str(c.size) for c in classes])
    out += format_tuple("class_to_allocnpages", [str(c.npages) for c in classes])
    out += format_tuple("class_to_nelems", [str(n) for n in nelems])
    out += ["# (shift, shift2, mul, base_mask); see obj_index and docs/sizeclasses.md."]
    out += format_tuple("class_to_divmagic", [f"({a}, {b}, {c}, {d})" for a, b, c, d in magics])
    out += ["# Index (size + 7) >> 3 for size <= SMALL_SIZE_MAX."]
    out += format_tuple("size_to_class8", [str(v) for v in small])
    out += ["# Index (size - SMALL_SIZE_MAX + 127) >> 7 for 1024 < size <= MAX_SMALL_SIZE."]
    out += format_tuple("size_to_class128", [str(v) for v in large])
    out += ["# fmt: on", "", ""]
    out.append(HELPERS)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdout", action="store_true", help="print instead of writing the file")
    args = parser.parse_args(argv)
    text = generate()
    if args.stdout:
        sys.stdout.write(text)
    else:
        OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
