"""FreeBSD constants for the POSIX backend.

Values from FreeBSD's ``sys/sys/mman.h`` (freebsd/freebsd-src): MAP_PRIVATE 0x0002,
MAP_FIXED 0x0010, MAP_ANON 0x1000, MADV_FREE 5.

- FreeBSD has no MAP_NORESERVE: bit 0x0040 is ``MAP_RESERVED0040 /* previously unimplemented
  MAP_NORESERVE */`` since FreeBSD 11, so the flag is 0 here. Reservations are PROT_NONE and
  cost no swap either way.
- sys_unused uses MADV_FREE, as Go's ``runtime/mem_bsd.go`` does: the contents are forfeit and
  the kernel reclaims the pages when it needs them, so the RSS falls lazily (under memory
  pressure), not at the call. Nothing undoes it: sys_used has no advice to give.
- Superpages are automatic on FreeBSD and take no advice: the huge-page advice is None.
"""

from __future__ import annotations

from gcalloc.os.posix import PosixConstants, PosixMemory

FREEBSD = PosixConstants(
    name="freebsd",
    MAP_PRIVATE=0x0002,
    MAP_FIXED=0x0010,
    MAP_ANON=0x1000,
    MAP_NORESERVE=0,          # no such flag (0x0040 is MAP_RESERVED0040)
    MADV_UNUSED=5,            # MADV_FREE
    MADV_REUSE=None,
    MADV_HUGEPAGE=None,
    MADV_NOHUGEPAGE=None,
    huge_page_size_path=None,
)


def backend() -> PosixMemory:
    return PosixMemory(FREEBSD)
