"""pprof heap profiles: the hand-written profile.proto encoder, checked by a small
decoder here and by the real reader, ``go tool pprof -top`` (Debian's golang-go; the test
that needs it is skipped, saying so, where ``go`` is not installed).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import subprocess

import pytest

import gcalloc
from gcalloc.gc.mprof import Frame, MemProfileRecord
from gcalloc.gc.pprof import (
    SAMPLE_TYPES,
    encode_heap_profile,
    read_fields,
    read_packed,
    scale_heap_sample,
    varint,
)

# --- a minimal protobuf reader (the test's own, to check the encoder independently) --------


def decode(profile: bytes) -> dict:
    top = read_fields(profile)
    strings = [v.decode() for n, v in top if n == 6]

    def vt(data: bytes) -> tuple[str, str]:
        d = dict(read_fields(data))
        return strings[d.get(1, 0)], strings[d.get(2, 0)]

    functions = {}
    for n, v in top:
        if n == 5:
            d = dict(read_fields(v))
            functions[d[1]] = (strings[d[2]], strings[d[4]], d.get(5, 0))
    locations = {}
    for n, v in top:
        if n == 4:
            d = read_fields(v)
            lid = dict(d)[1]
            line = dict(read_fields(dict(d)[4]))
            locations[lid] = (functions[line[1]][0], line.get(2, 0))
    samples = []
    for n, v in top:
        if n == 2:
            d = read_fields(v)
            locs = read_packed(next(x for k, x in d if k == 1))
            values = read_packed(next(x for k, x in d if k == 2))
            labels = [dict(read_fields(x)) for k, x in d if k == 3]
            samples.append(([locations[i] for i in locs], values,
                             {strings[lb[1]]: lb[3] for lb in labels}))
    period_type = next(vt(v) for n, v in top if n == 11)
    return dict(strings=strings, sample_types=[vt(v) for n, v in top if n == 1],
                samples=samples, period=dict(top).get(12, 0), period_type=period_type,
                functions=functions)


# --- encoder ----------------------------------------------------------------------------------

def test_varint_encoding():
    assert varint(0) == b"\x00"
    assert varint(1) == b"\x01"
    assert varint(300) == b"\xac\x02"
    assert varint((1 << 63) - 1) == b"\xff" * 8 + b"\x7f"
    assert varint(-1) == b"\xff" * 9 + b"\x01"          # int64 -1: ten bytes


def test_scale_heap_sample_is_gos_formula():
    assert scale_heap_sample(0, 0, 512 * 1024) == (0, 0)
    assert scale_heap_sample(10, 640, 1) == (10, 640)      # every allocation sampled
    assert scale_heap_sample(10, 640, 0) == (10, 640)      # rate unknown: unscaled
    scale = 1 / (1 - math.exp(-64 / 4096))
    assert scale_heap_sample(10, 640, 4096) == (int(10 * scale), int(640 * scale))


def test_encoded_profile_structure():
    leaf = Frame("pkg.mod.leaf", "/src/pkg/mod.py", 42, 40)
    caller = Frame("pkg.main.run", "/src/pkg/main.py", 7, 1)
    records = [MemProfileRecord(4, 4 * 4096, 1, 4096, 3, 3 * 4096, (leaf, caller)),
               MemProfileRecord(2, 2 * 64, 2, 2 * 64, 0, 0, (caller,))]
    p = decode(encode_heap_profile(records, rate=1, time_nanos=123))
    assert p["strings"][0] == ""
    assert p["sample_types"] == list(SAMPLE_TYPES)
    assert p["period_type"] == ("space", "bytes") and p["period"] == 1
    (locs0, values0, labels0), (locs1, values1, labels1) = p["samples"]
    assert locs0 == [("pkg.mod.leaf", 42), ("pkg.main.run", 7)]       # leaf first
    assert values0 == [4, 4 * 4096, 3, 3 * 4096] and labels0 == {"bytes": 4096}
    assert locs1 == [("pkg.main.run", 7)] and values1 == [2, 128, 0, 0]
    assert sorted(p["functions"].values()) == [("pkg.main.run", "/src/pkg/main.py", 1),
                                               ("pkg.mod.leaf", "/src/pkg/mod.py", 40)]


def test_written_file_is_gzipped_and_scaled_by_the_rate(heap, tmp_path):
    heap._alloc._rand.seed(3)
    heap.mem_profile_rate = 4096
    site_small(heap, 2000, 512)
    heap.collect()
    path = tmp_path / "heap.pb.gz"
    heap.write_heap_profile(path)
    p = decode(gzip.decompress(path.read_bytes()))
    assert p["period"] == 4096
    [(locs, values, labels)] = [s for s in p["samples"] if s[0][0][0].endswith("site_small")]
    raw = [r for r in heap.memprofile() if r.stack[0].function.endswith("site_small")][0]
    assert values[:2] == list(scale_heap_sample(raw.alloc_objects, raw.alloc_bytes, 4096))
    assert values[0] > raw.alloc_objects and labels == {"bytes": 512}


# --- go tool pprof ----------------------------------------------------------------------------

def site_small(heap, n: int, size: int) -> None:
    for _ in range(n):
        heap.add_root(heap.alloc(size))


def site_large(heap, n: int, size: int) -> None:
    for _ in range(n):
        heap.add_root(heap.alloc(size))


_UNITS = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "": 1}
_ROW = re.compile(r"^\s*([\d.]+)(B|kB|MB|GB)?\s+[\d.]+%\s+[\d.]+%\s+([\d.]+)(B|kB|MB|GB)?"
                  r"\s+[\d.]+%\s+(\S.*?)\s*$")


def pprof_top(path, sample_index: str, tmp_path) -> dict[str, float]:
    """{function: flat value} from ``go tool pprof -top``."""
    go = shutil.which("go")
    env = dict(os.environ, HOME=str(tmp_path), PPROF_TMPDIR=str(tmp_path),
               GOCACHE=str(tmp_path / "gocache"))
    out = subprocess.run([go, "tool", "pprof", "-top", f"-sample_index={sample_index}",
                          str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        m = _ROW.match(line)
        if m:
            rows[m.group(5)] = float(m.group(1)) * _UNITS[m.group(2) or ""]
    assert rows, out.stdout
    return rows


@pytest.mark.skipif(shutil.which("go") is None,
                    reason="Go toolchain not installed (apt-get install golang-go): "
                           "go tool pprof is needed to read the profile")
def test_go_tool_pprof_reads_our_profile(tmp_path):
    with gcalloc.Heap(-1, scavenger=False, debug="") as heap:
        heap.mem_profile_rate = 1                 # every allocation: exact values
        site_small(heap, 200, 4096)
        site_large(heap, 3, 100_000)              # 13 pages each: 106496 bytes
        heap.collect()
        path = tmp_path / "heap.pb.gz"
        heap.write_heap_profile(path)
    small, large = f"{__name__}.site_small", f"{__name__}.site_large"
    space = pprof_top(path, "inuse_space", tmp_path)
    assert space[small] == pytest.approx(200 * 4096, rel=0.01)
    assert space[large] == pytest.approx(3 * 106496, rel=0.01)
    objects = pprof_top(path, "alloc_objects", tmp_path)
    assert objects[small] == 200 and objects[large] == 3
