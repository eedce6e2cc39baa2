"""GCBench (Hans Boehm's binary-trees benchmark, as in Go's test/bench/garbage) on gcalloc's
managed heap, with gctrace on: one line per collection on stderr.

    python examples/binary_trees.py [--depth N]

A node is a 32-byte object: left, right, i, j. It is allocated without a type, so the collector
scans it conservatively (every word may be a pointer); a ``Node`` ctypes Structure reads and
writes it in place. The benchmark builds a long-lived tree and array, then many temporary trees
top-down (Populate) and bottom-up (MakeTree), and drops each one.

Roots: Python ints holding addresses are invisible to the collector. The temporary tree's root
and MakeTree's half-built subtrees wait in a *shadow stack* — a ctypes array registered with
``heap.add_root_range`` — the way a C runtime keeps pointers on its stack; the long-lived
objects are held by Handles.
"""

from __future__ import annotations

import argparse
import ctypes
import time

import gcalloc


class Node(ctypes.Structure):
    _fields_ = [("left", ctypes.c_uint64), ("right", ctypes.c_uint64),
                ("i", ctypes.c_int64), ("j", ctypes.c_int64)]


NODE_SIZE = ctypes.sizeof(Node)


def tree_size(depth: int) -> int:
    """Nodes in a complete binary tree of the given depth (one node: depth 0)."""
    return (1 << (depth + 1)) - 1


class Bench:
    def __init__(self, heap: gcalloc.Heap, stretch_depth: int) -> None:
        self.heap = heap
        self.stretch_depth = stretch_depth
        self.stack = (ctypes.c_uint64 * (2 * stretch_depth + 4))()   # the shadow stack
        self.token = heap.add_root_range(ctypes.addressof(self.stack), ctypes.sizeof(self.stack))

    def new_node(self, left: int = 0, right: int = 0) -> int:
        p = self.heap.alloc(NODE_SIZE)
        if left:
            node = Node.from_address(p)
            node.left, node.right = left, right
        return p

    def populate(self, depth: int, node: int) -> None:
        """Top-down: link each child into the (reachable) parent before the next allocation."""
        if depth <= 0:
            return
        depth -= 1
        n = Node.from_address(node)
        n.left = self.new_node()
        n.right = self.new_node()
        self.populate(depth, n.left)
        self.populate(depth, n.right)

    def make_tree(self, depth: int) -> int:
        """Bottom-up: the two subtrees sit in the shadow stack until their parent exists."""
        if depth <= 0:
            return self.new_node()
        self.stack[2 * depth] = left = self.make_tree(depth - 1)
        self.stack[2 * depth + 1] = right = self.make_tree(depth - 1)
        p = self.new_node(left, right)
        self.stack[2 * depth] = self.stack[2 * depth + 1] = 0
        return p

    def time_construction(self, depth: int) -> None:
        iters = max(1, 2 * tree_size(self.stretch_depth) // tree_size(depth))
        print(f"Creating {iters} trees of depth {depth}")
        t0 = time.perf_counter()
        for _ in range(iters):
            self.stack[0] = root = self.new_node()
            self.populate(depth, root)
            self.stack[0] = 0
        t1 = time.perf_counter()
        for _ in range(iters):
            self.stack[0] = self.make_tree(depth)
            self.stack[0] = 0
        t2 = time.perf_counter()
        print(f"\tTop down construction took {(t1 - t0) * 1000:.0f} msec")
        print(f"\tBottom up construction took {(t2 - t1) * 1000:.0f} msec")


def count_nodes(root: int) -> int:
    n, todo = 0, [root]
    while todo:
        node = Node.from_address(todo.pop())
        n += 1
        todo.extend(c for c in (node.left, node.right) if c)
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=14, help="stretch/long-lived depth")
    args = parser.parse_args()
    stretch = long_lived_depth = args.depth
    array_len = 50_000
    with gcalloc.Heap(debug="gctrace=1") as heap:
        bench = Bench(heap, stretch)
        t0 = time.perf_counter()
        print(f"Stretching memory with a binary tree of depth {stretch}")
        bench.stack[0] = bench.make_tree(stretch)
        bench.stack[0] = 0

        print(f"Creating a long-lived binary tree of depth {long_lived_depth}")
        long_lived = heap.handle(bench.new_node())
        bench.populate(long_lived_depth, long_lived.addr)

        print(f"Creating a long-lived array of {array_len} doubles")
        array = heap.new(ctypes.c_double, array_len)
        for i in range(1, array_len // 2):
            array.view[i] = 1.0 / i

        for depth in range(4, args.depth + 1, 2):
            bench.time_construction(depth)

        alive = count_nodes(long_lived.addr)
        if alive != tree_size(long_lived_depth) or array.view[1000] != 1.0 / 1000:
            print(f"FAILED: long-lived tree has {alive} nodes")
            return 1
        ms = heap.read_memstats()
        heap.verify()
        print(f"Completed in {(time.perf_counter() - t0) * 1000:.0f} msec")
        print(f"long-lived tree intact: {alive} nodes; num_gc={ms.num_gc}; "
              f"total_alloc={ms.total_alloc >> 20} MiB; heap_inuse={ms.heap_inuse >> 20} MiB; "
              f"pause_total={ms.pause_total_ns / 1e6:.1f} ms; verify ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
