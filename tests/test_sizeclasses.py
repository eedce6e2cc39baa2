"""Tests for gcalloc/sizeclasses.py and its generator tools/mksizeclasses.py.

Expected values are Go 1.16's src/runtime/sizeclasses.go (68 classes, the first release with
the 24-byte class and the last one with the (shift, shift2, mul, baseMask) division magic).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from gcalloc import sizeclasses as sc

ROOT = Path(__file__).resolve().parent.parent

# Go 1.16 class_to_size, class_to_allocnpages and class_to_divmagic, verbatim.
GO116_SIZES = (
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792, 2048,
    2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728, 10240,
    10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672, 32768,
)  # fmt: skip
GO116_NPAGES = (
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 2, 1, 2, 1, 2, 1, 3, 2, 3, 1, 3, 2, 3, 4, 5, 6, 1, 7, 6, 5, 4, 3, 5, 7, 2, 9, 7, 5, 8,
    3, 10, 7, 4,
)  # fmt: skip
GO116_DIVMAGIC = (
    (0, 0, 0, 0), (3, 0, 1, 65528), (4, 0, 1, 65520), (3, 11, 683, 0), (5, 0, 1, 65504),
    (4, 11, 683, 0), (6, 0, 1, 65472), (4, 10, 205, 0), (5, 9, 171, 0), (4, 11, 293, 0),
    (7, 0, 1, 65408), (4, 13, 911, 0), (5, 10, 205, 0), (4, 12, 373, 0), (6, 9, 171, 0),
    (4, 13, 631, 0), (5, 11, 293, 0), (4, 13, 547, 0), (8, 0, 1, 65280), (5, 9, 57, 0),
    (6, 9, 103, 0), (5, 12, 373, 0), (7, 7, 43, 0), (5, 10, 79, 0), (6, 10, 147, 0),
    (5, 11, 137, 0), (9, 0, 1, 65024), (6, 9, 57, 0), (7, 9, 103, 0), (6, 11, 187, 0),
    (8, 7, 43, 0), (7, 8, 37, 0), (10, 0, 1, 64512), (7, 9, 57, 0), (8, 6, 13, 0), (7, 11, 187, 0),
    (9, 5, 11, 0), (8, 8, 37, 0), (11, 0, 1, 63488), (8, 9, 57, 0), (7, 10, 49, 0), (10, 5, 11, 0),
    (7, 10, 41, 0), (7, 9, 19, 0), (12, 0, 1, 61440), (8, 9, 27, 0), (8, 10, 49, 0), (11, 5, 11, 0),
    (7, 13, 161, 0), (7, 13, 155, 0), (8, 9, 19, 0), (13, 0, 1, 57344), (8, 12, 111, 0),
    (9, 9, 27, 0), (11, 6, 13, 0), (7, 14, 193, 0), (12, 3, 3, 0), (8, 13, 155, 0), (11, 8, 37, 0),
    (14, 0, 1, 49152), (11, 8, 29, 0), (7, 13, 55, 0), (12, 5, 7, 0), (8, 14, 193, 0),
    (13, 3, 3, 0), (7, 14, 77, 0), (12, 7, 19, 0), (15, 0, 1, 32768),
)  # fmt: skip

# A few rows of Go 1.16's header comment, with Go's "//" turned into "#".
GO116_COMMENT_ROWS = (
    "# class  bytes/obj  bytes/span  objects  tail waste  max waste",
    "#     1          8        8192     1024           0     87.50%",
    "#     3         24        8192      341           8     29.24%",
    "#    35       1408       16384       11         896     14.00%",
    "#    45       4864       24576        5         256     16.65%",
    "#    52       9472       57344        6         512     14.28%",
    "#    65      27264       81920        3         128     10.00%",
    "#    67      32768       32768        1           0     12.50%",
)

U64_MAX = (1 << 64) - 1


def is_table_row(line: str) -> bool:
    """Whether `line` is a data row of the generated comment table."""
    return line.startswith("#    ") and line.endswith("%")


def load_generator():
    path = ROOT / "tools" / "mksizeclasses.py"
    spec = importlib.util.spec_from_file_location("mksizeclasses", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules, so register before running.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def span_bytes(c: int) -> int:
    return sc.class_to_allocnpages[c] * sc.PAGE_SIZE


# --- generation -------------------------------------------------------------------------------


def test_regenerating_gives_committed_module():
    committed = (ROOT / "gcalloc" / "sizeclasses.py").read_text()
    assert load_generator().generate() == committed


def test_stdout_flag_prints_module(capsys):
    gen = load_generator()
    assert gen.main(["--stdout"]) == 0
    assert capsys.readouterr().out == gen.generate()


# --- Go 1.16 values ---------------------------------------------------------------------------


def test_constants():
    assert (sc.PAGE_SHIFT, sc.PAGE_SIZE, sc.MAX_SMALL_SIZE) == (13, 8192, 32768)
    assert (sc.SMALL_SIZE_DIV, sc.SMALL_SIZE_MAX, sc.LARGE_SIZE_DIV) == (8, 1024, 128)
    assert (sc.NUM_SIZE_CLASSES, sc.NUM_SPAN_CLASSES) == (68, 136)
    assert (sc.TINY_SIZE, sc.TINY_SIZE_CLASS) == (16, 2)
    assert sc.class_to_size[sc.TINY_SIZE_CLASS] == sc.TINY_SIZE


def test_tables_match_go_1_16():
    assert sc.class_to_size == GO116_SIZES
    assert sc.class_to_allocnpages == GO116_NPAGES
    assert sc.class_to_divmagic == GO116_DIVMAGIC
    assert len(sc.class_to_size) == sc.NUM_SIZE_CLASSES == 68


def test_comment_table_matches_go_1_16_rows():
    lines = (ROOT / "gcalloc" / "sizeclasses.py").read_text().splitlines()
    for row in GO116_COMMENT_ROWS:
        assert row in lines
    assert sum(1 for line in lines if is_table_row(line)) == 67


def test_docs_show_the_generated_table():
    lines = (ROOT / "gcalloc" / "sizeclasses.py").read_text().splitlines()
    table = [line[2:] for line in lines if line.startswith("# class") or is_table_row(line)]
    assert len(table) == 68
    assert "\n".join(table) in (ROOT / "docs" / "sizeclasses.md").read_text()


def test_tables_are_plain_int_tuples():
    for table in (sc.class_to_size, sc.class_to_allocnpages, sc.class_to_nelems):
        assert type(table) is tuple and all(type(v) is int for v in table)
    assert len(sc.size_to_class8) == sc.SMALL_SIZE_MAX // sc.SMALL_SIZE_DIV + 1
    assert len(sc.size_to_class128) == (sc.MAX_SMALL_SIZE - sc.SMALL_SIZE_MAX) // 128 + 1


def test_nelems_is_objects_per_span():
    assert sc.class_to_nelems[0] == 0
    for c in range(1, sc.NUM_SIZE_CLASSES):
        assert sc.class_to_nelems[c] == span_bytes(c) // sc.class_to_size[c]
    assert sc.class_to_nelems[1] == 1024 and sc.class_to_nelems[3] == 341


# --- size -> class ----------------------------------------------------------------------------


def test_every_small_size_maps_to_smallest_fitting_class():
    sizes = sc.class_to_size
    for size in range(1, sc.MAX_SMALL_SIZE + 1):
        c = sc.size_to_class(size)
        assert sizes[c] >= size and sizes[c - 1] < size, size
        assert sc.round_up_size(size) == sizes[c]


def test_class_sizes_keep_lookup_table_granularity():
    # size_to_class8/128 are only exact if each class size is a multiple of the table step.
    for size in sc.class_to_size:
        assert size % (sc.SMALL_SIZE_DIV if size <= sc.SMALL_SIZE_MAX else sc.LARGE_SIZE_DIV) == 0
    assert list(sc.class_to_size) == sorted(set(sc.class_to_size))


@pytest.mark.parametrize("size", [0, -1, sc.MAX_SMALL_SIZE + 1, 1 << 40])
def test_size_to_class_rejects_non_small_sizes(size):
    with pytest.raises(ValueError):
        sc.size_to_class(size)


def test_size_to_class_boundaries():
    assert [sc.size_to_class(s) for s in (1, 8, 9, 16, 17, 24, 25, 32, 33)] == [
        1, 1, 2, 2, 3, 3, 4, 4, 5,
    ]  # fmt: skip
    assert sc.size_to_class(896) == 31 and sc.size_to_class(897) == 32
    assert sc.size_to_class(1024) == 32 and sc.size_to_class(1025) == 33
    assert sc.size_to_class(32767) == sc.size_to_class(32768) == 67


# --- division magic ---------------------------------------------------------------------------


def test_divmagic_is_exact_for_every_byte_offset_in_every_span():
    for c in range(1, sc.NUM_SIZE_CLASSES):
        size = sc.class_to_size[c]
        shift, shift2, mul, base_mask = sc.class_to_divmagic[c]
        for off in range(span_bytes(c) + 1):
            assert ((off >> shift) * mul) >> shift2 == off // size, (c, off)
        # obj_index takes the shift-only path for powers of two; check it on object starts
        # and on each object's last byte.
        for i in range(sc.class_to_nelems[c]):
            assert sc.obj_index(c, i * size) == i
            assert sc.obj_index(c, i * size + size - 1) == i


def test_divmagic_fits_go_1_16_field_widths():
    for c in range(1, sc.NUM_SIZE_CLASSES):
        size = sc.class_to_size[c]
        shift, shift2, mul, base_mask = sc.class_to_divmagic[c]
        assert shift < 256 and shift2 < 256 and 0 < mul < 1 << 16 and base_mask < 1 << 16
        assert mul * (span_bytes(c) >> shift) < 1 << 32  # 32-bit multiply suffices
        if size & (size - 1) == 0:
            assert base_mask == (1 << 16) - size and 1 << shift == size
        else:
            assert base_mask == 0


# --- waste bounds -----------------------------------------------------------------------------


def test_tail_waste_at_most_one_eighth_of_span():
    for c in range(1, sc.NUM_SIZE_CLASSES):
        span = span_bytes(c)
        assert span % sc.class_to_size[c] <= span // 8, c


def test_max_waste_within_go_stated_bounds():
    # Go: round-up waste and tail waste are each <= 12.5%, so together at most 1.125**2
    # overhead; below 128 bytes the 8/16-byte alignment step dominates instead.
    for c in range(2, sc.NUM_SIZE_CLASSES):
        size, prev = sc.class_to_size[c], sc.class_to_size[c - 1]
        span = span_bytes(c)
        objects = span // size
        if size < 128:
            assert size - prev <= (8 if size <= 32 else 16), c
            continue
        max_waste = ((size - prev - 1) * objects + span - size * objects) / span
        assert 1 / (1 - max_waste) <= 1.125**2, c


# --- span classes -----------------------------------------------------------------------------


def test_span_class_round_trip_for_all_136():
    seen = set()
    for sizeclass in range(sc.NUM_SIZE_CLASSES):
        for noscan in (False, True):
            spc = sc.make_span_class(sizeclass, noscan)
            assert isinstance(spc, sc.SpanClass) and isinstance(spc, int)
            assert spc == sizeclass << 1 | noscan
            assert (spc.sizeclass, spc.noscan) == (sizeclass, noscan)
            assert sc.span_class_sizeclass(spc) == sizeclass
            assert sc.span_class_noscan(spc) is noscan
            seen.add(int(spc))
    assert seen == set(range(sc.NUM_SPAN_CLASSES))
    # Still a plain int index, e.g. into mcache.alloc.
    assert list(range(sc.NUM_SPAN_CLASSES))[sc.make_span_class(67, True)] == 135


@pytest.mark.parametrize("sizeclass", [-1, sc.NUM_SIZE_CLASSES])
def test_make_span_class_rejects_bad_class(sizeclass):
    with pytest.raises(ValueError):
        sc.make_span_class(sizeclass, False)


# --- round_up_size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "want"),
    [
        (0, 0),
        (1, 8),
        (17, 24),
        (33, 48),
        (1000, 1024),
        (1017, 1024),
        (1025, 1152),
        (8193, 9472),
        (32767, 32768),
        (32768, 32768),
        (32769, 40960),
        (40960, 40960),
        (40961, 49152),
        (1 << 30, 1 << 30),
        ((1 << 30) + 1, (1 << 30) + 8192),
        (2**64 - 8193, 2**64 - 8192),  # last size whose round-up does not overflow
        (2**64 - 8192, 2**64 - 8192),  # overflow guard hit, but already page aligned
        (2**64 - 8191, 2**64 - 8191),  # would overflow: returned unchanged, as in Go
        (U64_MAX, U64_MAX),
    ],
)
def test_round_up_size(size, want):
    assert sc.round_up_size(size) == want


@pytest.mark.parametrize("size", [-1, U64_MAX + 1])
def test_round_up_size_rejects_non_uintptr(size):
    with pytest.raises(ValueError):
        sc.round_up_size(size)
