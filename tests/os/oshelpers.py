"""Helpers for the OS-layer suite: backends, a reservation ledger, memory views, resident-memory
and /proc/self/maps readings, and child processes for the touches that must fault."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import gcalloc.os as gos
from gcalloc.errors import SysMemoryError
from gcalloc.os import _kernel32_standin as standin
from gcalloc.os.windows import WindowsMemory

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
BACKENDS = ["native", "windows-standin"]
STANDIN_SKIP = "the kernel32 stand-in needs POSIX mmap; on Windows the native run uses kernel32"

_CHILD_BACKEND = {
    "native": "import gcalloc.os as B\n",
    "windows-standin": (
        "from gcalloc.os._kernel32_standin import Kernel32StandIn\n"
        "from gcalloc.os.windows import WindowsMemory\n"
        "_k = Kernel32StandIn()\n"
        "B = WindowsMemory(_k, _k.get_last_error)\n"
    ),
}

# No core files and no crash dialogs from children that are meant to crash.
_CHILD_PREAMBLE = """\
import ctypes, sys
if sys.platform == "win32":
    ctypes.windll.kernel32.SetErrorMode(0x8003)  # no GP-fault / critical-error boxes
else:
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
"""


def make_backend(name: str) -> Any:
    if name == "native":
        return gos
    k = standin.Kernel32StandIn()
    return WindowsMemory(k, k.get_last_error)


class Mem:
    """A backend plus a ledger of the reservations a test holds (base -> size)."""

    def __init__(self, name: str, backend: Any) -> None:
        self.name = name
        self.b = backend
        self.live: dict[int, int] = {}

    def __getattr__(self, attr: str) -> Any:  # sys_map, sys_used, phys_page_size, ...
        return getattr(self.b, attr)

    def reserve(self, hint: int | None, n: int) -> int | None:
        p = self.b.sys_reserve(hint, n)
        if p is not None:
            self.live[p] = n
        return p

    def reserve_aligned(self, hint: int | None, n: int, align: int) -> tuple[int | None, int]:
        p, size = self.b.sys_reserve_aligned(hint, n, align)
        if p is not None:
            self.live[p] = size
        return p, size

    def alloc(self, n: int, stat: gos.SysMemStat | None = None) -> int | None:
        p = self.b.sys_alloc(n, stat)
        if p is not None:
            self.live[p] = n
        return p

    def free(self, p: int, stat: gos.SysMemStat | None = None) -> None:
        n = self.live.pop(p)
        self.b.sys_free(p, n, stat)

    def free_hint(self, n: int) -> int:
        """An address where ``n`` bytes are free right now (reserve anywhere, then free)."""
        p = self.b.sys_reserve(None, n)
        assert p is not None
        self.b.sys_free(p, n, None)
        return p

    def close(self) -> None:
        for p, n in list(self.live.items()):
            try:
                self.b.sys_free(p, n, None)
            except SysMemoryError:
                pass
        self.live.clear()
        k = getattr(self.b, "k", None)
        if isinstance(k, standin.Kernel32StandIn):
            leaked = k.reservations()
            k.close()
            assert not leaked, f"reservations left behind: {leaked}"


# --- memory views and measurements ------------------------------------------------------------

def view(p: int, n: int) -> np.ndarray:
    """A writable uint8 numpy view of [p, p+n)."""
    return np.frombuffer((ctypes.c_char * n).from_address(p), dtype=np.uint8)


class _RusageInfoV0(ctypes.Structure):  # <sys/resource.h>, macOS
    _fields_ = [("ri_uuid", ctypes.c_uint8 * 16)] + [
        (f, ctypes.c_uint64) for f in (
            "ri_user_time", "ri_system_time", "ri_pkg_idle_wkups", "ri_interrupt_wkups",
            "ri_pageins", "ri_wired_size", "ri_resident_size", "ri_phys_footprint",
            "ri_proc_start_abstime", "ri_proc_exit_abstime")
    ]


def _darwin_footprint() -> int:
    try:
        rusage = ctypes.CDLL(None, use_errno=True).proc_pid_rusage
    except AttributeError:
        rusage = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True).proc_pid_rusage
    rusage.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    rusage.restype = ctypes.c_int
    info = _RusageInfoV0()
    if rusage(os.getpid(), 0, ctypes.byref(info)) != 0:  # flavor RUSAGE_INFO_V0
        raise OSError(ctypes.get_errno(), "proc_pid_rusage failed")
    return info.ri_phys_footprint


def resident_bytes() -> int:
    """Memory this process holds: the RSS (working set on Windows), or on macOS the physical
    footprint, because MADV_FREE_REUSABLE takes pages out of the footprint at once but leaves
    them in the RSS until the kernel reclaims them (see gcalloc/os/darwin.py)."""
    if sys.platform == "darwin":
        return _darwin_footprint()
    return psutil.Process().memory_info().rss


def anon_none_intervals() -> list[tuple[int, int]]:
    """Linux: the merged address ranges of inaccessible (---p) mappings, from /proc/self/maps.

    Reservations are such mappings; the heap's Python neighbours (pymalloc arenas, numpy
    buffers) are read/write, so they cannot be mistaken for a leaked piece of a reservation.
    """
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if fields[1] == "---p":
                lo, hi = fields[0].split("-")
                spans.append((int(lo, 16), int(hi, 16)))
    return merge(spans)


def merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def clip(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if a < hi and lo < b]


def subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of merged intervals ``a`` not covered by merged intervals ``b``."""
    out = []
    for lo, hi in a:
        cur = lo
        for blo, bhi in b:
            if bhi <= cur or blo >= hi:
                continue
            if blo > cur:
                out.append((cur, blo))
            cur = max(cur, bhi)
        if cur < hi:
            out.append((cur, hi))
    return out


# --- child processes ---------------------------------------------------------------------------

def run_child(backend_name: str, body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh Python with the backend bound to ``B``."""
    code = _CHILD_PREAMBLE + _CHILD_BACKEND[backend_name] + textwrap.dedent(body)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONFAULTHANDLER", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def died_of_fault(proc: subprocess.CompletedProcess) -> bool:
    """Whether the child was killed by a memory fault (SIGSEGV/SIGBUS; access violation)."""
    rc = proc.returncode
    if sys.platform == "win32":
        return rc in (0xC0000005, -0x3FFFFFFB)  # STATUS_ACCESS_VIOLATION, either sign
    return rc in (-signal.SIGSEGV, -signal.SIGBUS)
