"""macOS constants for the POSIX backend.

Values from Apple's xnu ``bsd/sys/mman.h`` (apple-oss-distributions/xnu): MAP_PRIVATE 0x0002,
MAP_FIXED 0x0010, MAP_NORESERVE 0x0040, MAP_ANON 0x1000; MADV_FREE_REUSABLE 7, MADV_FREE_REUSE 8.

Advice, as in Go's ``runtime/mem_darwin.go``:
- sys_unused uses MADV_FREE_REUSABLE, not MADV_FREE (5): like MADV_FREE the contents are
  forfeit and the pages may be reclaimed lazily, but the kernel also takes them out of the
  task's memory accounting at once (``phys_footprint``, which Activity Monitor and the memory
  pressure machinery use). The resident size (``rss``) may stay high until the pages are
  reclaimed: on macOS, watch the footprint, not the RSS.
- sys_used uses MADV_FREE_REUSE, which puts reused pages back into that accounting (a no-op on
  pages that were never MADV_FREE_REUSABLE'd). Skipping it would make the footprint undercount.
- macOS has no transparent huge pages: the huge-page advice is None and sys_huge_page is a
  no-op. MAP_NORESERVE is accepted and has no effect on macOS; it is passed for symmetry.
"""

from __future__ import annotations

from gcalloc.os.posix import PosixConstants, PosixMemory

DARWIN = PosixConstants(
    name="darwin",
    MAP_PRIVATE=0x0002,
    MAP_FIXED=0x0010,
    MAP_ANON=0x1000,
    MAP_NORESERVE=0x0040,
    MADV_UNUSED=7,            # MADV_FREE_REUSABLE
    MADV_REUSE=8,             # MADV_FREE_REUSE
    MADV_HUGEPAGE=None,
    MADV_NOHUGEPAGE=None,
    huge_page_size_path=None,
)


def backend() -> PosixMemory:
    return PosixMemory(DARWIN)
