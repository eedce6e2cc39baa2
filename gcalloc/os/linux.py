"""Linux constants for the POSIX backend (values from <asm-generic/mman-common.h>).

sys_unused uses MADV_DONTNEED, not MADV_FREE: the pages leave the RSS at once, which is what
users watching RSS (and Go's default since 1.16, GODEBUG=madvdontneed=1) expect.
"""

from __future__ import annotations

from gcalloc.os.posix import PosixConstants, PosixMemory

LINUX = PosixConstants(
    name="linux",
    MAP_PRIVATE=0x02,
    MAP_FIXED=0x10,
    MAP_ANON=0x20,
    MAP_NORESERVE=0x4000,
    MADV_UNUSED=4,            # MADV_DONTNEED
    MADV_REUSE=None,          # touched pages fault back in zeroed; nothing to undo
    MADV_HUGEPAGE=14,
    MADV_NOHUGEPAGE=15,
    huge_page_size_path="/sys/kernel/mm/transparent_hugepage/hpage_pmd_size",
)


def backend() -> PosixMemory:
    return PosixMemory(LINUX)
