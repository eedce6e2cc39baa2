"""kernel32 under Wine, for the OS-layer suite: the bridge program (wine/kernel32_bridge.c) built
with mingw and run under Wine, and ``Kernel32Bridge``, which forwards each kernel32 call to it.

``Kernel32Bridge`` has the call surface of ``ctypes.WinDLL('kernel32', use_last_error=True)`` as
gcalloc/os/windows.py uses it: addresses and sizes as ints (None for NULL), out-parameters as
``ctypes.pointer``/``ctypes.byref``, the last error through ``get_last_error``/``set_last_error``
(ctypes' private copy, which the bridge keeps the same way: see the C file). So the Windows
backend runs unchanged on Wine's kernel32, with its addresses in the Wine process. Beyond
kernel32 it reads and writes that process's memory (``read_byte``, ``fill``, ``histogram``),
says whether an access faults (``faults``, answered by performing it under an exception
handler), and gives the process's pid for psutil.

Finding the tools: the mingw compiler on PATH; the Wine launcher on PATH (wine64, wine,
wine-stable), then where distributions install it off PATH (Debian's wine64 package puts it in
/usr/lib/wine/). ``unavailable_reason`` says what is missing.

Invariant: one bridge process per ``Kernel32Bridge``, in a WINEPREFIX of its own, and ``close``
leaves no Wine process of that prefix running (the bridge exits, then ``wineserver -k``; a
process that outlives that is killed and reported) and deletes the prefix.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

from gcalloc.os import _kernel32_standin as standin

SOURCE = Path(__file__).resolve().parent / "wine" / "kernel32_bridge.c"
MINGW = "x86_64-w64-mingw32-gcc"
_WINE_NAMES = ("wine64", "wine", "wine-stable")
_WINE_DIRS = ("/usr/lib/wine", "/usr/lib/x86_64-linux-gnu/wine", "/usr/lib64/wine",
              "/opt/wine-stable/bin", "/opt/wine-devel/bin", "/usr/local/bin")
_SERVER_NAMES = ("wineserver", "wineserver64", "wineserver-stable")
_START_TIMEOUT = 120.0  # the first start creates the prefix (wineboot): seconds, not minutes
_MBI_FIELDS = ("BaseAddress", "AllocationBase", "AllocationProtect", "RegionSize", "State",
               "Protect", "Type")  # in the order the bridge prints them
_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1


class BridgeError(RuntimeError):
    """The bridge process could not be built or started, or stopped answering."""


def _word(x: Any, mask: int = _M64) -> int:
    """An argument as ctypes would pass it: None is NULL, ctypes numbers by value, wrapped."""
    return int(getattr(x, "value", x) or 0) & mask


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_wine() -> str | None:
    """The Wine launcher that runs 64-bit programs, or None."""
    for name in _WINE_NAMES:
        found = shutil.which(name)
        if found:
            return found
    for d in _WINE_DIRS:
        for name in _WINE_NAMES:
            path = os.path.join(d, name)
            if _executable(path):
                return path
    return None


def find_wineserver(wine: str) -> str | None:
    """The wineserver that goes with ``wine`` (its directory first, then PATH)."""
    d = os.path.dirname(os.path.realpath(wine))
    for name in _SERVER_NAMES:
        path = os.path.join(d, name)
        if _executable(path):
            return path
    for name in _SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable_reason() -> str | None:
    """Why the bridge cannot run here (None when it can)."""
    missing = []
    if shutil.which(MINGW) is None:
        missing.append(f"{MINGW} (Debian: gcc-mingw-w64-x86-64)")
    wine = find_wine()
    if wine is None:
        missing.append("a Wine launcher (Debian: wine64; looked on PATH and in "
                       + ", ".join(_WINE_DIRS) + ")")
    elif find_wineserver(wine) is None:
        missing.append("wineserver")
    if not missing:
        return None
    return "kernel32 under Wine needs " + " and ".join(missing)


def build(out_dir: Path) -> Path:
    exe = out_dir / "kernel32_bridge.exe"
    proc = subprocess.run([MINGW, "-O2", "-Wall", "-o", str(exe), str(SOURCE)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BridgeError(f"{MINGW} failed:\n{proc.stderr}")
    return exe


class Kernel32Bridge:
    """kernel32's virtual-memory calls, performed by the bridge program under Wine."""

    def __init__(self, work_dir: Path) -> None:
        reason = unavailable_reason()
        if reason:
            raise BridgeError(reason)
        self._wine = find_wine()
        self._server = find_wineserver(self._wine)
        work_dir.mkdir(parents=True, exist_ok=True)
        exe = build(work_dir)
        self.env = dict(os.environ, WINEPREFIX=str(work_dir / "prefix"), WINEDEBUG="-all",
                        WINEDLLOVERRIDES="mscoree,mshtml=")  # no Mono/Gecko install prompts
        self.env.pop("DISPLAY", None)
        self._stderr = open(work_dir / "bridge.stderr", "w+")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen([self._wine, str(exe)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=self.env, cwd=work_dir, text=True, bufsize=1)
        self._last_error = 0
        self._mine: set[int] = set()  # bases VirtualAlloc returned: see reservations()
        try:
            ready = self._readline(_START_TIMEOUT)
            if ready != "ready":
                raise BridgeError(f"the bridge said {ready!r} instead of 'ready'")
            info = self._ask("S")
            self.page_size = info[1]
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        """The Unix pid of the Wine process that holds the bridge's address space."""
        return self._proc.pid

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    # --- the pipe ----------------------------------------------------------------------------

    def _readline(self, timeout: float | None = None) -> str:
        out = self._proc.stdout
        assert out is not None
        if timeout is not None and not select.select([out], [], [], timeout)[0]:
            raise BridgeError(f"the bridge did not start within {timeout:.0f} s{self._tail()}")
        line = out.readline()
        if not line:
            raise BridgeError(f"the bridge exited (rc {self._proc.poll()}){self._tail()}")
        return line.strip()

    def _tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read()[-2000:]
        return f"; its stderr:\n{text}" if text else ""

    def _ask(self, op: str, *args: int) -> list[int]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(" ".join([op] + [f"{a:x}" for a in args]) + "\n")
        self._proc.stdin.flush()
        line = self._readline()
        if line.startswith("?"):
            raise BridgeError(f"the bridge did not understand {op!r}: {line}")
        return [int(x, 16) if not x.startswith("-") else int(x) for x in line.split()]

    def _call(self, op: str, *args: int) -> list[int]:
        """A kernel32 call: its reply ends with the last error, which becomes ours."""
        *values, self._last_error = self._ask(op, *args)
        return values

    # --- kernel32 ----------------------------------------------------------------------------

    def VirtualAlloc(self, address: int | None, size: int, allocation_type: int,  # noqa: N802
                     protect: int) -> int | None:
        (r,) = self._call("A", _word(address), _word(size), _word(allocation_type, _M32),
                          _word(protect, _M32))
        if r and (allocation_type & standin.MEM_RESERVE or not address):
            self._mine.add(r)
        return r or None  # a c_void_p restype gives None for NULL

    def VirtualFree(self, address: int | None, size: int, free_type: int) -> int:  # noqa: N802
        (r,) = self._call("F", _word(address), _word(size), _word(free_type, _M32))
        return r

    def VirtualProtect(self, address: int | None, size: int, new_protect: int,  # noqa: N802
                       old_protect: Any) -> int:
        target = standin.out_target(old_protect)
        r, old = self._call("P", _word(address), _word(size), _word(new_protect, _M32),
                            target is not None)
        if target is not None and r:
            target.value = old
        return r

    def VirtualQuery(self, address: int | None, buffer: Any, length: int) -> int:  # noqa: N802
        mbi = standin.out_target(buffer)
        if mbi is None:
            raise TypeError("VirtualQuery needs a MEMORY_BASIC_INFORMATION out-parameter")
        r, *fields = self._call("Q", _word(address), _word(length))
        if r:
            for name, value in zip(_MBI_FIELDS, fields):
                setattr(mbi, name, value)
        return r

    def GetSystemInfo(self, info: Any) -> None:  # noqa: N802
        si = standin.out_target(info)
        fields = [f for f, _ in si._fields_ if f != "wReserved"]
        for name, value in zip(fields, self._call("S")):
            setattr(si, name, value)

    def GetLastError(self) -> int:  # noqa: N802
        (r,) = self._ask("E")
        self._last_error = r
        return r

    def SetLastError(self, code: int) -> None:  # noqa: N802
        self.set_last_error(code)

    def get_last_error(self) -> int:
        """Like ``ctypes.get_last_error``: the error the last kernel32 call left."""
        return self._last_error

    def set_last_error(self, code: int) -> int:
        """Like ``ctypes.set_last_error``: the next call starts with this error; the old one."""
        old = self._last_error
        self._last_error = _word(code, _M32)
        self._ask("e", self._last_error)
        return old

    # --- the Wine process's memory -----------------------------------------------------------

    def read_byte(self, address: int) -> int | None:
        """The byte at ``address``, or None where reading it faults."""
        (r,) = self._ask("R", address)
        return None if r < 0 else r

    def write_byte(self, address: int, value: int) -> bool:
        """Write one byte; False where that faults (nothing is written)."""
        (r,) = self._ask("W", address, value & 0xFF)
        return r == 0

    def faults(self, address: int, write: bool = False) -> bool:
        """Whether reading (or writing back what is there) at ``address`` faults."""
        if write:
            value = self.read_byte(address)
            return value is None or not self.write_byte(address, value)
        return self.read_byte(address) is None

    def fill(self, address: int, size: int, value: int, step: int = 1) -> None:
        """Write ``value`` at address, address + step, ... below address + size."""
        (r,) = self._ask("L", address, size, value & 0xFF, step)
        if r < 0:
            raise BridgeError(f"fill({address:#x}, {size:#x}) faulted")

    def histogram(self, address: int, size: int) -> list[int]:
        """How many bytes of [address, address + size) hold each value 0..255."""
        counts = self._ask("H", address, size)
        if counts == [-1]:
            raise BridgeError(f"reading [{address:#x}, {address + size:#x}) faulted")
        return counts

    # --- what the stand-in's introspection gives, read back through VirtualQuery --------------

    def query(self, address: int) -> standin.MEMORY_BASIC_INFORMATION | None:
        mbi = standin.MEMORY_BASIC_INFORMATION()
        if not self.VirtualQuery(address, ctypes.byref(mbi), ctypes.sizeof(mbi)):
            return None
        return mbi

    def reservation_size(self, base: int) -> int:
        """The size of the reservation whose base is ``base`` (0 if there is none)."""
        end = base
        while (m := self.query(end)) is not None and m.AllocationBase == base \
                and m.State != standin.MEM_FREE:
            end = (m.BaseAddress or 0) + m.RegionSize
        return end - base

    def reservations(self) -> list[tuple[int, int]]:
        """(base, size) of every live reservation that this object's VirtualAlloc made."""
        live = []
        for base in sorted(self._mine):
            size = self.reservation_size(base)
            if size:
                live.append((base, size))
            else:
                self._mine.discard(base)
        return live

    def committed(self, address: int, size: int) -> bool:
        """Whether every page of [address, address + size) is committed."""
        a, end = address, address + size
        while a < end:
            m = self.query(a)
            if m is None or m.State != standin.MEM_COMMIT:
                return False
            a = (m.BaseAddress or 0) + m.RegionSize
        return True

    def spans_in_use(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The merged ranges of [lo, hi) that are reserved or committed (not MEM_FREE)."""
        out: list[tuple[int, int]] = []
        a = lo
        while a < hi and (m := self.query(a)) is not None:
            end = min((m.BaseAddress or 0) + m.RegionSize, hi)
            if m.State != standin.MEM_FREE:
                if out and out[-1][1] == max(a, m.BaseAddress or 0):
                    out[-1] = (out[-1][0], end)
                else:
                    out.append((max(a, m.BaseAddress or 0), end))
            a = end
        return out

    def release_mine(self) -> None:
        """Release every reservation this object made that is still there."""
        for base, _ in self.reservations():
            self.VirtualFree(base, 0, standin.MEM_RELEASE)

    def close(self) -> None:
        """Stop the bridge and every Wine process of its prefix."""
        proc = self._proc
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write("X\n")
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        subprocess.run([self._server, "-k"], env=self.env, capture_output=True, timeout=30)
        subprocess.run([self._server, "-w"], env=self.env, capture_output=True, timeout=30)
        self._stderr.close()
        left = processes_of(self.env["WINEPREFIX"])
        for p in left:
            p.kill()
        # A prefix is some 700 MB of Windows files: no session keeps one.
        shutil.rmtree(self.env["WINEPREFIX"], ignore_errors=True)
        if left:
            raise BridgeError(f"Wine processes outlived wineserver -k: {left}")


def processes_of(prefix: str) -> list[psutil.Process]:
    """The running processes (this user's) whose WINEPREFIX is ``prefix``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("WINEPREFIX") == prefix:
                found.append(p)
        except psutil.Error:
            continue
    return found
