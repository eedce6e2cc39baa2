"""MSpan.take_run against a model: the first free slot at or after freeindex and the free
slots right after it, at most ``limit``; allocCache agreeing with allocBits afterwards."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gcalloc.mspan import MASK64, MSpan, SpanTable


def make_span(taken: list[bool], freeindex: int, elemsize: int = 16) -> tuple[MSpan, np.ndarray]:
    """A span over an exactly sized bitmap (no spare word to hide a read past its end).
    Slots below freeindex count as allocated whatever their bits say, as in Go."""
    nelems = len(taken)
    words = np.zeros((nelems + 63) // 64, np.uint64)
    for i, t in enumerate(taken):
        if t:
            words[i >> 6] |= np.uint64(1 << (i & 63))
    s = MSpan(1)
    s.init(0x10000, 1)
    s.elemsize, s.nelems = elemsize, nelems
    s.allocBits = 0                     # byte offset of the bits in ``words``
    s.freeindex = freeindex
    s.allocCount = freeindex + sum(taken[freeindex:])
    if freeindex < nelems:
        s.reset_alloc_cache(words)
    return s, words


def cache_model(taken: list[bool], freeindex: int) -> int:
    """The complement of allocBits from freeindex to the end of its word."""
    word_end = (freeindex & ~63) + 64
    return sum(1 << (i - freeindex) for i in range(freeindex, word_end)
               if i >= len(taken) or not taken[i]) & MASK64


# Alloc bits as stretches of taken/free slots, long enough to cross 64-bit words.
_stretches = st.lists(st.tuples(st.booleans(), st.integers(1, 140)), min_size=1, max_size=6)


@settings(max_examples=400, deadline=None)
@given(_stretches, st.data())
def test_take_run_matches_model(stretches, data):
    """Runs taken one after another from one span, each checked against the model."""
    taken = [t for t, n in stretches for _ in range(n)]
    nelems = len(taken)
    freeindex = data.draw(st.integers(0, nelems))
    s, words = make_span(taken, freeindex)
    free = [i for i in range(freeindex, nelems) if not taken[i]]
    while True:
        limit = data.draw(st.integers(1, 400))
        count0 = s.allocCount
        run = s.take_run(words, limit)
        if not free:
            assert len(run) == 0 and s.freeindex == nelems and s.allocCount == count0
            return
        first = free[0]
        n = 1
        while n < limit and first + n < nelems and not taken[first + n]:
            n += 1
        assert list(run) == [s.base + i * s.elemsize for i in range(first, first + n)]
        assert s.freeindex == first + n
        assert s.run_end == s.base + (first + n) * s.elemsize
        assert s.allocCount == count0 + n
        if s.freeindex < nelems:
            # allocCache agrees with allocBits at the new freeindex (bits past nelems: any)
            valid = min(64 - (s.freeindex & 63), nelems - s.freeindex)
            mask = (1 << valid) - 1
            assert s.allocCache & mask == cache_model(taken, s.freeindex) & mask
        free = [i for i in free if i >= first + n]


def test_take_run_on_a_full_span_is_empty():
    s, words = make_span([True] * 70, 3)
    assert len(s.take_run(words, 100)) == 0
    assert s.freeindex == 70


def test_fresh_span_is_one_run_across_words():
    s, words = make_span([False] * 200, 0)
    run = s.take_run(words, 1000)
    assert len(run) == 200 and s.freeindex == 200 and s.allocCount == 200


def _random_span(rng, sid: int) -> MSpan:
    s = MSpan(sid)
    s.init(0x10000 * sid, rng.randrange(1, 9))
    s.state = rng.randrange(4)
    s.noscan = rng.random() < 0.5
    s.elemsize, s.nelems = rng.choice([(16, 512), (48, 170), (8192, 1)])
    s.allocBits, s.gcmarkBits = rng.randrange(1 << 30), rng.randrange(1 << 30)
    return s


@pytest.mark.parametrize("count", [1, SpanTable.BULK_SYNC - 1, SpanTable.BULK_SYNC, 300])
def test_span_table_rows_mirror_spans_after_sync(count):
    """Both ways sync writes rows (one by one, or a column at a time for many dirty spans)
    leave every dirty span's row equal to its fields, and a span marked twice is written
    with its latest fields."""
    rng = random.Random(count)
    table = SpanTable(capacity=4)
    spans = [_random_span(rng, sid) for sid in range(1, count + 1)]
    for s in spans:
        table.ensure(s.id)
        table.mark_dirty(s)
    spans[0].state = 3
    table.mark_dirty(spans[0])
    table.sync()
    assert table.dirty == []
    for s in spans:
        row = {column: getattr(table, column)[s.id] for column, _, _ in SpanTable.FIELDS}
        assert row == {column: getattr(s, attr) for column, _, attr in SpanTable.FIELDS}
