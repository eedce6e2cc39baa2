"""Bad input and failures that used to give a wrong answer or crash, each pinned by what
the fix promises (the exception alone is checked by tests/test_bad_input.py; these check
the state around it)."""

from __future__ import annotations

import ctypes
import gzip
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gcalloc
from gcalloc import errors
from gcalloc.gc.types import type_of

ROOT = Path(__file__).resolve().parent.parent


class Node(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("value", ctypes.c_int64)]


class Base(ctypes.Structure):
    _fields_ = [("p", ctypes.c_void_p)]


class Derived(Base):
    # ctypes lays Base's fields out first: p at 0, then q at 8 and a scalar "p" at 16.
    _fields_ = [("q", ctypes.c_void_p), ("p", ctypes.c_int64)]


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GCALLOC_DEBUG", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


# --- types --------------------------------------------------------------------------------

@pytest.mark.parametrize("zero_type", [
    type("Empty", (ctypes.Structure,), {"_fields_": []}), ctypes.c_char * 0, gcalloc.Type(0)],
    ids=["empty-structure", "c_char*0", "Type(0)"])
def test_zero_size_type_allocates_only_size_zero(heap, zero_type):
    before = heap.read_memstats().mallocs
    with pytest.raises(errors.InvalidSize):
        heap.alloc(64, type=zero_type)
    assert heap.read_memstats().mallocs == before
    assert heap.alloc(0, type=zero_type) == heap._alloc.zerobase
    heap.verify()


def test_subclassed_structure_keeps_its_base_fields_pointers(heap):
    assert type_of(Derived).pointer_words() == [0, 1]
    obj = heap.new(Derived)
    target = heap.alloc(64)
    ctypes.c_void_p.from_address(obj.addr).value = target   # Base's p, at offset 0
    heap.collect()
    assert heap.lookup(target) == (target, 64)
    heap.verify()


def test_structure_without_fields_is_an_invalid_type(heap):
    class Incomplete(ctypes.Structure):
        pass

    with pytest.raises(errors.InvalidType):
        heap.new(Incomplete)
    Incomplete._fields_ = [("p", ctypes.c_void_p)]   # completed later: now it has a layout
    assert type_of(Incomplete).pointer_words() == [0]


# --- Handles ------------------------------------------------------------------------------

def test_handle_refuses_a_view_larger_than_the_object(heap):
    p = heap.alloc(16)
    neighbour = heap.alloc(16)
    ctypes.c_uint64.from_address(neighbour).value = 7
    with pytest.raises(errors.InvalidSize):
        heap.handle(p, ctypes.c_uint64 * 4)
    with pytest.raises(errors.InvalidArgument):
        heap.handle(p, "str")
    h = heap.handle(p, ctypes.c_uint64 * 2)            # exactly the object: fine
    h.view[1] = 5
    assert ctypes.c_uint64.from_address(neighbour).value == 7
    assert heap._gc.roots.handles_live == 1
    heap.verify()


def test_new_with_a_gcalloc_type_views_its_bytes(heap):
    t = gcalloc.Type(24, 0b011)
    h = heap.new(t)
    assert len(h.view) == 24 and bytes(h.view) == bytes(24)
    target = heap.alloc(64)
    ctypes.c_void_p.from_address(h.addr + 8).value = target
    heap.collect()
    assert heap.lookup(target) is not None
    arr = heap.new(t, 3)
    assert len(arr.view) == 3 and len(arr.view[2]) == 24


# --- root ranges ------------------------------------------------------------------------

def test_root_range_at_address_zero_is_refused_and_collect_survives():
    """Used to be accepted, and the next collection died by SIGSEGV."""
    proc = _run("""
        import ctypes, gcalloc
        from gcalloc import errors
        h = gcalloc.Heap(-1, debug="")
        h.alloc(16)
        for args in [(0, 64), (-4096, 64)]:
            try:
                h.add_root_range(*args)
            except errors.InvalidRootRange:
                pass
        try:
            h.add_root_range(0, 16, conservative=False, type=ctypes.c_void_p * 2)
        except errors.InvalidRootRange:
            pass
        h.collect()
        h.verify()
        print("survived", len(h._gc.roots.ranges))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["survived", "0"]


def test_root_range_over_readable_memory_still_roots(heap):
    buf = (ctypes.c_uint64 * 4)()
    p = heap.alloc(64)
    buf[2] = p
    token = heap.add_root_range(ctypes.addressof(buf), ctypes.sizeof(buf))
    heap.collect()
    assert heap.lookup(p) is not None
    heap.remove_root_range(token)
    heap.collect()
    assert heap.lookup(p) is None


# --- the heap profile ---------------------------------------------------------------------

def test_write_heap_profile_refuses_a_file_descriptor(heap):
    r, w = os.pipe()
    try:
        with pytest.raises(errors.InvalidArgument):
            heap.write_heap_profile(w)
        os.write(w, b"x")                         # still open
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
        os.close(w)


def test_write_heap_profile_to_a_binary_file_object(heap, tmp_path):
    heap.mem_profile_rate = 1
    heap.alloc(4096)
    out = io.BytesIO()
    heap.write_heap_profile(out)
    assert not out.closed
    data = gzip.decompress(out.getvalue())
    path = tmp_path / "heap.pb.gz"
    heap.write_heap_profile(path)
    assert len(gzip.decompress(path.read_bytes())) == len(data)
    with open(tmp_path / "f.pb.gz", "wb") as f:
        heap.write_heap_profile(f)
    assert gzip.decompress((tmp_path / "f.pb.gz").read_bytes())


# --- arguments checked before anything changes -------------------------------------------

def test_heap_arguments_are_checked_before_memory_is_taken():
    import gcalloc.malloc as malloc
    made = []
    real = malloc.Allocator.__init__

    def spy(self, *args, **kwargs):
        made.append(self)
        real(self, *args, **kwargs)

    malloc.Allocator.__init__ = spy
    try:
        for kwargs in [dict(gc_percent="x"), dict(scavenger="yes"), dict(debug=123)]:
            with pytest.raises(errors.InvalidArgument):
                gcalloc.Heap(**kwargs)
    finally:
        malloc.Allocator.__init__ = real
    assert made == []


def test_calls_on_a_closed_heap_raise_heap_closed():
    h = gcalloc.Heap(-1, debug="")
    h.close()
    with pytest.raises(errors.HeapClosed):
        h.remove_root_range(1)
    with pytest.raises(errors.HeapClosed):
        h.set_gc_percent(50)
    with pytest.raises(errors.HeapClosed):
        h.mem_profile_rate = 1
    with pytest.raises(errors.HeapClosed), h.no_gc():
        pass
    assert h.gc_percent == -1 and h.mem_profile_rate > 1     # reading still works
