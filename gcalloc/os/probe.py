"""Is [addr, addr+size) mapped readable in this process? A probe that never faults, for the
checks above the OS layer that must refuse memory before the collector reads it (a root range
over an unmapped page would kill the process with SIGSEGV at the next collection).

- POSIX (Linux, macOS, FreeBSD): ``write()`` the range into a pipe. The kernel copies from
  the caller's memory and reports a page it cannot read as EFAULT instead of a signal, the
  same on all three (``process_vm_readv`` is Linux-only; ``mincore``/``msync`` find unmapped
  pages but not PROT_NONE ones). The range goes through in pipe-sized chunks, each read back
  at once, so a write never blocks; the cost is one copy of the range, which the collector
  reads at every cycle anyway.
- Windows: ``VirtualQuery`` over the regions of the range: each must be committed with a
  readable protection and no guard page. (Not run on the machines this project's tests run
  on; written from the Win32 documentation.)

The answer holds when it is given: memory unmapped afterwards is the caller's race, as it is
for C code that hands the collector a pointer and then frees what it points at.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

_CHUNK = 1 << 16          # Linux's and macOS's largest default pipe buffer
_libc: ctypes.CDLL | None = None


def readable(addr: int, size: int) -> bool:
    """True if every byte of [addr, addr+size) can be read now; size 0 is always readable."""
    if size <= 0:
        return True
    if sys.platform == "win32":
        return _readable_windows(addr, size)
    return _readable_posix(addr, size)


def _write_fn():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.write.restype = ctypes.c_ssize_t
        libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        _libc = libc
    return _libc.write


def _readable_posix(addr: int, size: int) -> bool:
    write = _write_fn()
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        done = 0
        while done < size:
            n = write(w, addr + done, min(size - done, _CHUNK))
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.EFAULT:
                    return False
                if err in (errno.EINTR, errno.EAGAIN):
                    continue      # the pipe is drained after every write: EAGAIN is rare
                raise OSError(err, os.strerror(err))
            done += n
            while n:
                n -= len(os.read(r, n))
        return True
    finally:
        os.close(r)
        os.close(w)


_MEM_COMMIT = 0x1000
_PAGE_GUARD = 0x100
_READABLE = (0x02, 0x04, 0x08, 0x20, 0x40, 0x80)   # READONLY ... EXECUTE_WRITECOPY


class _MemoryBasicInformation(ctypes.Structure):
    _fields_ = [("BaseAddress", ctypes.c_void_p), ("AllocationBase", ctypes.c_void_p),
                ("AllocationProtect", ctypes.c_uint32), ("PartitionId", ctypes.c_uint16),
                ("RegionSize", ctypes.c_size_t), ("State", ctypes.c_uint32),
                ("Protect", ctypes.c_uint32), ("Type", ctypes.c_uint32)]


def _readable_windows(addr: int, size: int) -> bool:
    k = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    k.VirtualQuery.restype = ctypes.c_size_t
    k.VirtualQuery.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    info = _MemoryBasicInformation()
    p, end = addr, addr + size
    while p < end:
        if not k.VirtualQuery(p, ctypes.byref(info), ctypes.sizeof(info)):
            return False
        prot = info.Protect
        if (info.State != _MEM_COMMIT or prot & _PAGE_GUARD
                or (prot & 0xFF) not in _READABLE):
            return False
        p = (info.BaseAddress or 0) + info.RegionSize
    return True
