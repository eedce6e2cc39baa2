"""A hypothesis state machine for the collector: alloc, link, unlink, root, unroot,
handle, free and collect against a model of the object graph, with ``Heap.verify()`` (which
checks the sweepgen protocol among the allocator invariants) after every step.

The model holds every object the heap may still hold, its outgoing edges (slot -> target and
interior offset) and its roots. ``collect`` checks the heap against the model's reachability:
every reachable object is allocated with its contents, every other one is gone, and
heap_objects / heap_alloc are exact. A second machine adds automatic (unforced) cycles,
which leave sweeping to later allocations and explicit frees.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import hypothesis.strategies as st
from heaputil import peek, poke
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import gcalloc
from gcalloc.gc.roots import NotARoot
from gcalloc.gc.types import Type

U64 = ctypes.c_uint64
SIZES = [16, 24, 48, 64, 256, 1024, 40_000]
MAX_SLOTS = 4


@dataclass
class Obj:
    addr: int
    size: int          # requested size (the model writes and points only inside it)
    usable: int        # what lookup reports
    tag: int
    nslots: int        # pointer slots: words 1..nslots
    edges: dict[int, tuple[int, int]] = field(default_factory=dict)   # slot -> (id, offset)
    roots: int = 0
    handles: list = field(default_factory=list)


class GCMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.heap = gcalloc.Heap(-1, scavenger=False, debug="")
        self.objs: dict[int, Obj] = {}
        self.next_id = 1

    def teardown(self) -> None:
        for o in self.objs.values():
            o.handles.clear()
        self.heap.close()

    # --- helpers -----------------------------------------------------------------------

    def pick(self, data, pred=lambda o: True) -> int | None:
        ids = sorted(i for i, o in self.objs.items() if pred(o))
        return data.draw(st.sampled_from(ids)) if ids else None

    def reachable(self) -> set[int]:
        seen = {i for i, o in self.objs.items() if o.roots or o.handles}
        stack = list(seen)
        while stack:
            for j, _ in self.objs[stack.pop()].edges.values():
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    def referenced(self, i: int) -> bool:
        return any(j == i for o in self.objs.values() for j, _ in o.edges.values())

    def check_contents(self, i: int) -> None:
        o = self.objs[i]
        assert self.heap.lookup(o.addr) == (o.addr, o.usable), (i, o)
        assert peek(o.addr) == o.tag
        assert peek(o.addr + o.size - 8) == o.tag ^ 0xFFFF
        for slot in range(1, o.nslots + 1):
            want = 0
            if slot in o.edges:
                j, off = o.edges[slot]
                want = self.objs[j].addr + off
            assert peek(o.addr + 8 * slot) == want, (i, slot)

    def forget_unreachable(self) -> list[Obj]:
        live = self.reachable()
        dead = [o for i, o in self.objs.items() if i not in live]
        self.objs = {i: o for i, o in self.objs.items() if i in live}
        return dead

    # --- rules -------------------------------------------------------------------------

    @rule(size=st.sampled_from(SIZES), typed=st.booleans(), zero=st.booleans())
    def alloc(self, size: int, typed: bool, zero: bool) -> None:
        nslots = min(MAX_SLOTS, size // 8 - 2)
        if typed:
            t = Type(size, sum(1 << w for w in range(1, nslots + 1)))
            p = self.heap.alloc(size, type=t, zero=zero)
        else:
            p = self.heap.alloc(size, zero=zero)
        usable = self.heap.usable_size(p)
        tag = (self.next_id << 4) | 0x5               # small: never a heap address
        ctypes.memset(p, 0, size)
        poke(p, tag)
        poke(p + size - 8, tag ^ 0xFFFF)
        self.objs[self.next_id] = Obj(p, size, usable, tag, nslots)
        self.next_id += 1

    @rule(size=st.sampled_from(SIZES[:4]), count=st.integers(2, 6))
    def alloc_batch(self, size: int, count: int) -> None:
        for k in range(count):
            self.alloc(size, typed=k % 2 == 1, zero=True)

    @precondition(lambda self: self.objs)
    @rule(data=st.data(), interior=st.booleans())
    def link(self, data, interior: bool) -> None:
        src = self.pick(data, lambda o: o.nslots > 0)
        if src is None:
            return
        dst = self.pick(data)
        o, d = self.objs[src], self.objs[dst]
        slot = data.draw(st.integers(1, o.nslots))
        off = data.draw(st.integers(0, d.size - 1)) if interior else 0
        poke(o.addr + 8 * slot, d.addr + off)
        o.edges[slot] = (dst, off)

    @precondition(lambda self: any(o.edges for o in self.objs.values()))
    @rule(data=st.data())
    def unlink(self, data) -> None:
        src = self.pick(data, lambda o: bool(o.edges))
        o = self.objs[src]
        slot = data.draw(st.sampled_from(sorted(o.edges)))
        poke(o.addr + 8 * slot, 0)
        del o.edges[slot]

    @precondition(lambda self: self.objs)
    @rule(data=st.data(), interior=st.booleans())
    def root(self, data, interior: bool) -> None:
        i = self.pick(data)
        o = self.objs[i]
        self.heap.add_root(o.addr + (o.size - 1 if interior else 0))
        o.roots += 1

    @precondition(lambda self: any(o.roots for o in self.objs.values()))
    @rule(data=st.data())
    def unroot(self, data) -> None:
        o = self.objs[self.pick(data, lambda o: o.roots > 0)]
        self.heap.remove_root(o.addr)
        o.roots -= 1

    @precondition(lambda self: any(not o.roots for o in self.objs.values()))
    @rule(data=st.data())
    def unroot_non_root(self, data) -> None:
        o = self.objs[self.pick(data, lambda o: not o.roots)]
        try:
            self.heap.remove_root(o.addr)
        except NotARoot:
            return
        raise AssertionError("remove_root of a non-root did not raise NotARoot")

    @precondition(lambda self: self.objs)
    @rule(data=st.data())
    def handle(self, data) -> None:
        o = self.objs[self.pick(data)]
        o.handles.append(self.heap.handle(o.addr + o.size // 2))

    @precondition(lambda self: any(o.handles for o in self.objs.values()))
    @rule(data=st.data(), release=st.booleans())
    def drop_handle(self, data, release: bool) -> None:
        o = self.objs[self.pick(data, lambda o: bool(o.handles))]
        h = o.handles.pop()
        if release:
            h.release()
        del h                                          # refcounting drops the root now

    @precondition(lambda self: self.objs)
    @rule(data=st.data())
    def free(self, data) -> None:
        i = self.pick(data, lambda o: not o.roots and not o.handles)
        if i is None or self.referenced(i):
            return
        self.heap.free(self.objs.pop(i).addr)

    @rule()
    def collect(self) -> None:
        before = self.heap._alloc.mheap.sweepgen
        self.heap.collect()
        assert self.heap._alloc.mheap.sweepgen == before + 2
        dead = self.forget_unreachable()
        for o in dead:
            assert self.heap.lookup(o.addr) is None, o
        for i in self.objs:
            self.check_contents(i)
        ms = self.heap.read_memstats()
        assert ms.heap_objects == len(self.objs)
        assert ms.heap_alloc == sum(o.usable for o in self.objs.values())

    # --- after every step ----------------------------------------------------------------

    @invariant()
    def heap_is_consistent(self) -> None:
        self.heap.verify()


class GCMachineWithAutomaticCycles(GCMachine):
    """Adds unforced cycles: sweeping is left to allocation, free and the next cycle."""

    @rule()
    def automatic_cycle(self) -> None:
        # GOGC=0: the goal is what the last cycle marked. Explicit frees since then may have
        # taken heap_live below it, so allocate (large: always a slow path) until the pacer
        # starts a cycle; it must within the bytes that separate the heap from its goal.
        self.heap.set_gc_percent(0)
        stats = self.heap.read_memstats()
        before = stats.num_gc
        bound = max(0, stats.next_gc - stats.heap_alloc) // 40_960 + 2
        for _ in range(bound):
            p = self.heap.alloc(40_000)                # the last one triggered the cycle
            if self.heap.read_memstats().num_gc != before:
                break
        self.heap.set_gc_percent(-1)
        assert self.heap.read_memstats().num_gc == before + 1
        self.forget_unreachable()
        for i in self.objs:
            self.check_contents(i)
        usable = self.heap.usable_size(p)              # the triggering object survived
        tag = (self.next_id << 4) | 0x5
        poke(p, tag)
        poke(p + 40_000 - 8, tag ^ 0xFFFF)
        self.objs[self.next_id] = Obj(p, 40_000, usable, tag, MAX_SLOTS)
        self.next_id += 1


SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

TestGCStateMachine = GCMachine.TestCase
TestGCStateMachine.settings = SETTINGS
TestGCStateMachineWithAutomaticCycles = GCMachineWithAutomaticCycles.TestCase
TestGCStateMachineWithAutomaticCycles.settings = SETTINGS
