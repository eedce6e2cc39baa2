"""ctypes Structures living in gcalloc's heap: a linked list and a binary tree, held through
Handles, with finalizers.

    python examples/ctypes_structs.py

``heap.new(Struct)`` allocates a zeroed object with Struct's layout (the collector scans its
pointer fields precisely: POINTER, c_void_p, c_char_p and gcalloc.Pointer fields are
pointers, everything else is not) and returns a Handle: the object stays alive while the
Handle lives, and ``handle.view`` is ``Struct.from_address(handle.addr)``. Objects reachable
from a rooted object need no Handle of their own.

Finalizers follow Go's rules: when a collection finds an object with a finalizer unreachable,
it keeps the object (and everything it points to) for one more cycle and runs ``fn(addr)`` on
the finalizer thread. So the leaves of a dropped tree are finalized together, and a chain of
finalizable objects is finalized one link per cycle.
"""

from __future__ import annotations

import ctypes
import threading

import gcalloc


class ListNode(ctypes.Structure):
    pass


ListNode._fields_ = [("next", ctypes.POINTER(ListNode)), ("value", ctypes.c_int64)]


class TreeNode(ctypes.Structure):
    pass


TreeNode._fields_ = [("left", ctypes.POINTER(TreeNode)), ("right", ctypes.POINTER(TreeNode)),
                     ("key", ctypes.c_int64), ("label", ctypes.c_char_p)]


def build_list(heap: gcalloc.Heap, n: int) -> gcalloc.Handle:
    """A list n-1, ..., 1, 0 built by pushing at the head; only the head needs a Handle."""
    head = heap.new(ListNode)
    for value in range(1, n):
        node = heap.new(ListNode)          # rooted by its own Handle until linked
        node.view.value = value
        node.view.next = ctypes.pointer(head.view)
        head = node                        # the old head is reachable from the new one
    return head


def walk_list(head: gcalloc.Handle) -> list[int]:
    values, p = [], ctypes.pointer(head.view)
    while p:
        values.append(p.contents.value)
        p = p.contents.next
    return values


def insert(heap: gcalloc.Heap, root: gcalloc.Handle, key: int) -> TreeNode:
    """Insert ``key`` into the binary search tree under root; returns the new node."""
    node = heap.new(TreeNode)
    node.view.key = key
    label = heap.alloc(16, noscan=True)    # a C string, pointed to by the node
    ctypes.memmove(label, f"k{key}".encode() + b"\0", len(str(key)) + 2)
    node.view.label = ctypes.cast(label, ctypes.c_char_p)
    t = root.view
    while True:
        side = "left" if key < t.key else "right"
        child = getattr(t, side)
        if not child:
            setattr(t, side, ctypes.pointer(node.view))
            return node.view
        t = child.contents


def in_order(node: ctypes.POINTER(TreeNode)) -> list[int]:
    out, stack = [], []
    while stack or node:
        while node:
            stack.append(node)
            node = node.contents.left
        node = stack.pop()
        out.append(node.contents.key)
        node = node.contents.right
    return out


class Finalized:
    """Finalizer bookkeeping: fn(addr) runs on the heap's finalizer thread."""

    def __init__(self) -> None:
        self.addrs: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, addr: int) -> None:
        with self.lock:
            self.addrs.append(addr)


def main() -> int:
    keys = [(i * 37) % 101 for i in range(101)]        # 0..100 in a scrambled order
    with gcalloc.Heap(debug="") as heap:
        head = build_list(heap, 1000)
        values = walk_list(head)
        assert values == list(range(999, -1, -1)), "list damaged"
        print(f"list: {len(values)} nodes, sum {sum(values)}")

        root = heap.new(TreeNode)
        root.view.key = 50
        leaves = [insert(heap, root, k) for k in keys if k != 50]
        heap.collect()                                  # everything is reachable: no change
        found = in_order(ctypes.pointer(root.view))
        assert found == sorted(keys), "tree damaged"
        label = ctypes.pointer(root.view).contents.right.contents.label
        print(f"tree: {len(found)} keys in order after a collection; a label: {label!r}")

        done = Finalized()
        leaf_addrs = [ctypes.addressof(n) for n in leaves if not n.left and not n.right]
        for addr in leaf_addrs:
            heap.set_finalizer(addr, done)
        heap.set_finalizer(head.addr, done)
        head_addr = head.addr
        before = heap.read_memstats().heap_objects
        del head, root, leaves, values, found, label
        heap.collect()
        heap.run_finalizers(timeout=30)
        assert sorted(done.addrs) == sorted(leaf_addrs + [head_addr]), "finalizers missing"
        print(f"finalizers ran: {len(done.addrs)} ({len(leaf_addrs)} tree leaves + list head)")
        heap.collect()                                  # the finalized objects are freed now
        after = heap.read_memstats().heap_objects
        heap.verify()
        print(f"heap_objects: {before} before the drop, {after} after two collections")
        assert after == 0, f"{after} objects still allocated"
    print("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
