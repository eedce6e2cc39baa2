"""gcBits arenas: bitmaps handed out are aligned, zero, disjoint, never straddle a chunk, and
chunks come back only two epochs after they were last carved."""

from __future__ import annotations

import random

import pytest

from gcalloc.gcbits import GC_BITS_CHUNK_BYTES, GCBits
from gcalloc.os import SysMemStat


@pytest.fixture
def gcbits():
    g = GCBits(1 << 28, SysMemStat())
    yield g
    g.release()


def _bytes(nelems: int) -> int:
    return ((nelems + 63) >> 6) << 3


def test_batches_and_singles_are_aligned_disjoint_and_inside_one_chunk(gcbits):
    rng = random.Random(3)
    spans = []
    for _ in range(150):
        counts = [rng.choice([1, 8, 64, 65, 512, 1024, rng.randrange(1, 3000)])
                  for _ in range(rng.randrange(0, 300))]
        spans += [(off, _bytes(n)) for off, n in zip(gcbits.new_bits_many(counts), counts)]
        n = rng.randrange(1, 1025)
        spans.append((gcbits.new_bits(n), _bytes(n)))
    spans.sort()
    for (a, na), (b, _) in zip(spans, spans[1:]):
        assert a + na <= b
    chunk0 = gcbits._next[0].off
    for off, n in spans:
        assert off % 8 == 0
        first_chunk, last_chunk = ((b - chunk0) // GC_BITS_CHUNK_BYTES for b in (off, off + n - 1))
        assert first_chunk == last_chunk
        assert not gcbits.bits8[off:off + n].any()


def test_a_batch_fills_the_current_chunk_before_taking_another(gcbits):
    first = gcbits.new_bits(64)
    offs = gcbits.new_bits_many([64] * (GC_BITS_CHUNK_BYTES // 8))   # one chunk's worth
    assert offs[0] == first + 8
    assert len(gcbits._next) == 2                  # the batch spilled into one new chunk
    assert offs[-1] == gcbits._next[1].off         # the last bitmap opens the new chunk


def test_chunks_are_recycled_zeroed_two_epochs_later(gcbits):
    off = gcbits.new_bits_many([1024])[0]
    gcbits.bits8[off:off + 128] = 0xFF            # the bitmap is used (mark bits set)
    gcbits.next_epoch()                            # next -> current
    assert gcbits.new_bits(1024) != off            # a fresh chunk: the old one is in use
    gcbits.next_epoch()                            # current -> previous
    gcbits.next_epoch()                            # previous -> free
    again = gcbits.new_bits_many([1024] * 4)
    assert off in again
    assert not gcbits.bits8[off:off + 128].any()


def test_a_batch_is_carved_exactly_as_single_calls_would_be(gcbits):
    """new_bits_many lays bitmaps out exactly as the same sequence of new_bits calls, chunk
    boundaries and epochs included (checked against a second GCBits)."""
    other = GCBits(1 << 28, SysMemStat())
    try:
        rng = random.Random(11)
        for step in range(60):
            counts = [rng.choice([1, 64, 170, 512, 1024, rng.randrange(1, 4000)])
                      for _ in range(rng.randrange(1, 250))]
            assert gcbits.new_bits_many(counts) == [other.new_bits(n) for n in counts]
            if step % 9 == 8:
                gcbits.next_epoch()
                other.next_epoch()
    finally:
        other.release()
