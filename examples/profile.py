"""A sampled heap profile: allocate from a few call sites, write the profile as gzipped pprof,
read it back and summarise it (and show ``go tool pprof -top`` when Go is installed).

    python examples/profile.py [out.pb.gz]

Without a path, the profile goes to a temporary folder that is deleted at the end.

``heap.mem_profile_rate`` is the average number of bytes between samples (Go's
MemProfileRate, 512 KiB by default; 1 samples every allocation). The profile describes the heap
as of the last completed collection, so the example collects before reading it.
``heap.memprofile()`` returns the raw records; ``heap.write_heap_profile(path)`` writes the
profile.proto that pprof reads, with counts scaled up to estimates of the true ones.

The summary below decodes that file with a few lines of protobuf reading, to show what is in
it: sample types, and per function the estimated bytes in use (inuse_space).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict

import gcalloc
from gcalloc.gc.pprof import read_fields, read_packed

KIB = 1024


# --- the workload: three allocation sites ------------------------------------------------------

def make_buffers(heap: gcalloc.Heap, n: int) -> list[gcalloc.Handle]:
    return [heap.handle(heap.alloc(8 * KIB, noscan=True)) for _ in range(n)]


def make_records(heap: gcalloc.Heap, n: int) -> list[gcalloc.Handle]:
    return [heap.handle(heap.alloc(96)) for _ in range(n)]


def make_garbage(heap: gcalloc.Heap, n: int) -> None:
    for _ in range(n):
        heap.alloc(2 * KIB, noscan=True)          # dropped at once: freed by the next cycle


# --- reading profile.proto (just enough of the protobuf wire format) ---------------------------

def read_profile(path: str) -> dict:
    """The parts of a pprof Profile the summary needs."""
    with open(path, "rb") as f:
        top = read_fields(gzip.decompress(f.read()))
    strings = [v.decode() for n, v in top if n == 6]
    types = [[strings[v] for _, v in read_fields(m)] for n, m in top if n == 1]
    functions = {}
    for _, m in (f for f in top if f[0] == 5):
        d = dict(read_fields(m))
        functions[d[1]] = strings[d.get(2, 0)]
    locations = {}
    for _, m in (f for f in top if f[0] == 4):
        d = read_fields(m)
        lid = dict(d)[1]
        line = dict(read_fields(next(v for n, v in d if n == 4)))
        locations[lid] = functions[line[1]]
    samples = []
    for _, m in (f for f in top if f[0] == 2):
        d = read_fields(m)
        locs = [x for n, v in d if n == 1 for x in read_packed(v)]
        values = [x for n, v in d if n == 2 for x in read_packed(v)]
        samples.append(([locations[x] for x in locs], values))
    period = dict((n, v) for n, v in top if n == 12).get(12, 0)
    return {"types": types, "samples": samples, "period": period}


def summarise(profile: dict) -> list[tuple[str, int, int]]:
    """Per innermost function: (function, estimated objects in use, estimated bytes in use)."""
    names = [t for t, _ in profile["types"]]
    io, ib = names.index("inuse_objects"), names.index("inuse_space")
    per = defaultdict(lambda: [0, 0])
    for stack, values in profile["samples"]:
        row = per[stack[0] if stack else "?"]
        row[0] += values[io]
        row[1] += values[ib]
    return sorted(((f, o, b) for f, (o, b) in per.items() if b), key=lambda r: -r[2])


def main() -> int:
    if len(sys.argv) > 1:
        return report(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="gcalloc-profile-") as tmp:
        return report(os.path.join(tmp, "heap.pb.gz"))


def report(out: str) -> int:
    """Write the profile to ``out``, summarise it, and show ``go tool pprof -top`` on it."""
    with gcalloc.Heap(debug="") as heap:
        heap.mem_profile_rate = 4 * KIB         # sample often: the example is small
        buffers = make_buffers(heap, 400)       # ~3.2 MiB in use
        records = make_records(heap, 4000)      # ~0.4 MiB in use
        make_garbage(heap, 2000)                # ~4 MiB allocated, none in use
        heap.collect()
        raw = heap.memprofile()
        heap.write_heap_profile(out)
        del buffers, records

    print(f"{len(raw)} profile records (raw sampled counts); wrote {out} "
          f"({os.path.getsize(out)} bytes)")
    profile = read_profile(out)
    print("sample types: " + ", ".join(f"{t}/{u}" for t, u in profile["types"])
          + f"; period {profile['period']} bytes")
    print(f"{'function':<40} {'inuse objects':>14} {'inuse bytes':>12}")
    for function, objects, nbytes in summarise(profile):
        print(f"{function:<40} {objects:>14,} {nbytes:>12,}")

    go = shutil.which("go")
    if go is None:
        print("go not found: skipping `go tool pprof -top`")
    else:
        result = subprocess.run([go, "tool", "pprof", "-top", out], capture_output=True,
                                text=True, timeout=120)
        print(f"go tool pprof -top (exit {result.returncode}):")
        print(result.stdout or result.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
