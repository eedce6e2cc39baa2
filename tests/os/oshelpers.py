"""Helpers for the OS-layer suite: backends, a reservation ledger, memory views, resident-memory
and /proc/self/maps readings, and scenarios whose touches must fault (in a child process, or in
the Wine process through the kernel32 bridge).

A backend's memory is either this process's (``LOCAL``) or the Wine process's (the
``Kernel32Bridge``): both offer ``fill``, ``histogram``, ``read_byte``, ``write_byte`` and
``rss``, so a test reads and writes memory and the resident set the same way on every backend.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from winebridge import Kernel32Bridge, unavailable_reason

import gcalloc.os as gos
from gcalloc.errors import SysMemoryError
from gcalloc.os import _kernel32_standin as standin
from gcalloc.os.windows import WindowsMemory

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
WINE = "windows-wine"
BACKENDS = ["native", "windows-standin", WINE]
STANDIN_SKIP = "the kernel32 stand-in needs POSIX mmap; on Windows the native run uses kernel32"


def wine_missing() -> None:
    """Skip (locally) or fail (in CI on Linux, where Wine must be installed) for lack of Wine."""
    if sys.platform == "win32":
        pytest.skip("on Windows the native run uses real kernel32; Wine is not needed")
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true" and sys.platform.startswith("linux"):
        pytest.fail(f"{reason}; CI must run the Windows backend under Wine (.ci/run installs "
                    "wine64 and gcc-mingw-w64-x86-64)", pytrace=False)
    pytest.skip(reason)

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


class LocalMemory:
    """This process's memory, with the access methods Kernel32Bridge has for the Wine process."""

    def fill(self, p: int, n: int, value: int, step: int = 1) -> None:
        view(p, n)[::step] = value

    def histogram(self, p: int, n: int) -> list[int]:
        counts = np.zeros(256, dtype=np.int64)
        v = view(p, n)
        for i in range(0, n, MiB):  # bincount widens to intp: a MiB at a time
            counts += np.bincount(v[i:i + MiB], minlength=256)
        return counts.tolist()

    def read_byte(self, p: int) -> int:
        return ctypes.c_uint8.from_address(p).value

    def write_byte(self, p: int, value: int) -> bool:
        ctypes.c_uint8.from_address(p).value = value
        return True

    def rss(self) -> int:
        return resident_bytes()


LOCAL = LocalMemory()


def memory_of(k: Any) -> Any:
    """Where the memory of kernel32 ``k`` (or a backend over it) lives: LOCAL or the bridge."""
    k = getattr(k, "k", k)
    return k if isinstance(k, Kernel32Bridge) else LOCAL


def byte_values(mem: Any, p: int, n: int) -> set[int]:
    """The distinct byte values in [p, p+n)."""
    return {b for b, c in enumerate(mem.histogram(p, n)) if c}


def make_backend(name: str, bridge: Kernel32Bridge | None = None) -> Any:
    if name == "native":
        return gos
    if name == WINE:
        assert bridge is not None
        return WindowsMemory(bridge, bridge.get_last_error)
    k = standin.Kernel32StandIn()
    return WindowsMemory(k, k.get_last_error)


class Mem:
    """A backend plus a ledger of the reservations a test holds (base -> size), and the memory
    its addresses live in (``mem``: this process's, or the Wine process's)."""

    def __init__(self, name: str, backend: Any) -> None:
        self.name = name
        self.b = backend
        self.mem = memory_of(backend)
        self.remote = self.mem is not LOCAL
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

    sys_reserve = reserve  # scenarios call the backend's names; the ledger still sees them
    sys_reserve_aligned = reserve_aligned
    sys_alloc = alloc

    def fill(self, p: int, n: int, value: int, step: int = 1) -> None:
        self.mem.fill(p, n, value, step)

    def values(self, p: int, n: int) -> set[int]:
        return byte_values(self.mem, p, n)

    def reserved_spans(self) -> list[tuple[int, int]] | None:
        """The merged address ranges where reservations show: the Wine process's regions that
        are not free (nothing but the test allocates there between two readings), or on Linux
        this process's ---p mappings (see anon_none_intervals); None where neither is read."""
        if self.remote:
            return self.mem.spans_in_use(0, standin.MAX_APPLICATION_ADDRESS + 1)
        if sys.platform.startswith("linux"):
            return anon_none_intervals()
        return None

    def resident(self) -> int:
        """The resident memory of the process the backend's addresses live in."""
        return self.mem.rss()

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
        elif isinstance(k, Kernel32Bridge):
            leaked = k.reservations()
            k.release_mine()
            assert not leaked, f"reservations left behind in the Wine process: {leaked}"


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


# --- scenarios: code whose touches must fault ----------------------------------------------------

_SCENARIO_HELPERS = """\
import json
out = {}
def peek(a):
    return ctypes.c_uint8.from_address(a).value
def poke(a, value):
    ctypes.c_uint8.from_address(a).value = value
def touch(a):
    print("touching", flush=True)
    peek(a)
    print("survived", flush=True)
"""


@dataclass
class Outcome:
    out: dict  # what the scenario put in ``out``
    faulted: bool  # a touch() faulted
    detail: str  # for assertion messages


class _Faulted(Exception):
    pass


def run_scenario(m: Mem, body: str) -> Outcome:
    """Run ``body`` with the backend bound to ``B`` in a process of its own, with ``poke(a, v)``,
    ``peek(a)``, ``touch(a)`` (an access that may fault) and a dict ``out`` to return results.

    Local backends run it in a fresh Python (a fault kills it, so the child must die of the
    fault). The Wine backend runs it here against the bridge, whose process is the fresh one:
    ``touch`` asks the bridge to perform the access, and a fault ends the scenario there.
    """
    body = textwrap.dedent(body)
    if m.remote:
        def touch(a: int) -> None:
            if m.mem.faults(a):
                raise _Faulted

        def poke(a: int, value: int) -> None:
            assert m.mem.write_byte(a, value), f"writing {a:#x} faulted"

        def peek(a: int) -> int:
            value = m.mem.read_byte(a)
            assert value is not None, f"reading {a:#x} faulted"
            return value

        ns: dict[str, Any] = {"B": m, "out": {}, "touch": touch, "poke": poke, "peek": peek}
        try:
            exec(body, ns)
        except _Faulted:
            return Outcome(ns["out"], True, "the bridge's access faulted")
        return Outcome(ns["out"], False, "the bridge's accesses did not fault")
    proc = run_child(m.name, _SCENARIO_HELPERS + body + "\nprint('OUT', json.dumps(out))\n")
    detail = f"returncode {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    faulted = "touching" in proc.stdout and "survived" not in proc.stdout.split("touching")[-1]
    if faulted:
        assert died_of_fault(proc), detail
        return Outcome({}, True, detail)
    assert proc.returncode == 0, detail
    line = next(x for x in proc.stdout.splitlines() if x.startswith("OUT "))
    return Outcome(json.loads(line[4:]), False, detail)


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
