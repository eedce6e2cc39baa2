"""Types: which words of an object may hold pointers (Go's _type.ptrdata and gcdata).

A ``Type`` is a size and a pointer mask, one bit per 8-byte word. It comes either from the
caller (``gcalloc.Type(size, ptrmask)``) or from a ctypes type, walked once and cached:

- pointer words: ``c_void_p``, ``c_char_p``, ``c_wchar_p``, ``POINTER(T)``, function pointers
  (``CFUNCTYPE``), and gcalloc's own ``Pointer`` marker;
- Structures and Unions are walked field by field (unions OR their members), arrays repeat
  their element's mask; everything else (integers, floats, chars, bit fields) is scalar. A
  Structure subclassing another Structure starts with its base's fields (ctypes lays them
  out first), so every class of the MRO that declares ``_fields_`` is walked;
- a Structure or Union that never got ``_fields_`` is incomplete (ctypes lets ``_fields_`` be
  set later, which would change its layout): an error;
- a pointer field whose offset is not a multiple of 8 is an error: the collector reads whole
  aligned words, so such a pointer would be invisible to it.

Invariants: ``ptrmask`` has bit i set iff word i may hold a pointer; ``ptrdata`` is the byte
offset just past the last pointer word (0 for pointer-free types), so ``noscan`` is
``ptrdata == 0``.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterable
from typing import cast

from gcalloc.errors import InvalidArgument, InvalidType

PTR_SIZE = 8


class Type:
    """An object layout for precise scanning: ``Type(size, ptrmask, name="")``.

    ``ptrmask`` is an int bitmask (bit i: word i is a pointer) or an iterable of booleans, one
    per word. Raises InvalidType for a mask longer than the size or a negative size.
    """

    __slots__ = ("size", "ptrmask", "ptrdata", "name", "__weakref__")

    def __init__(self, size: int, ptrmask: int | Iterable[object] = 0, name: str = "") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidType(f"type size must be an int >= 0, got {size!r}")
        if not isinstance(ptrmask, int):
            ptrmask = sum(1 << i for i, bit in enumerate(ptrmask) if bit)
        if ptrmask < 0 or ptrmask.bit_length() > (size + PTR_SIZE - 1) // PTR_SIZE:
            raise InvalidType(f"pointer mask {ptrmask:#x} does not fit a {size}-byte type")
        if ptrmask and size % PTR_SIZE and ptrmask >> (size // PTR_SIZE):
            raise InvalidType("a pointer word must lie wholly inside the type")
        self.size = size
        self.ptrmask = ptrmask
        self.ptrdata = ptrmask.bit_length() * PTR_SIZE
        self.name = name

    @property
    def noscan(self) -> bool:
        return self.ptrdata == 0

    @property
    def nwords(self) -> int:
        return (self.size + PTR_SIZE - 1) // PTR_SIZE

    def pointer_words(self) -> list[int]:
        """Indexes of the pointer words."""
        m = self.ptrmask
        return [i for i in range(m.bit_length()) if m >> i & 1]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Type) and other.size == self.size
                and other.ptrmask == self.ptrmask)

    def __hash__(self) -> int:
        return hash((self.size, self.ptrmask))

    def __repr__(self) -> str:
        label = f" {self.name}" if self.name else ""
        return f"<gcalloc.Type{label} size={self.size} ptrmask={self.ptrmask:#b}>"


def check_array(t: Type, nbytes: int) -> None:
    """Refuse an array of ``t`` (``nbytes`` long) whose later elements' pointers would not be
    8-byte aligned: the collector reads aligned words only. Raises InvalidType."""
    if nbytes > t.size and t.size % PTR_SIZE and not t.noscan:
        raise InvalidType(f"an array of {t.size}-byte {t.name or 'objects'} puts the "
                          f"pointers of later elements off 8-byte alignment")


class Pointer(ctypes.c_void_p):
    """A ctypes field type that holds a gcalloc heap pointer (scanned as a pointer)."""


_POINTER_BASES = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_wchar_p, ctypes._Pointer,
                  ctypes._CFuncPtr)  # type: ignore[attr-defined]
_cache: dict[type, Type] = {}
_cache_lock = threading.Lock()


def ctype_size(ctype: object) -> int:
    """sizeof of a ctypes type (not an instance, not a gcalloc.Type: callers need a type
    with ``from_address``). Raises InvalidArgument otherwise, InvalidType for an incomplete
    Structure or Union."""
    if isinstance(ctype, Type):
        raise InvalidArgument(f"a ctypes type is needed here, not a gcalloc.Type: {ctype!r}")
    try:
        size = ctypes.sizeof(ctype)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"not a ctypes type or gcalloc.Type: {ctype!r}") from None
    if not isinstance(ctype, type):
        raise InvalidArgument(f"a ctypes type is needed, not an instance: {ctype!r}")
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)) and not hasattr(ctype, "_fields_"):
        raise InvalidType(f"{ctype.__name__} has no _fields_: an incomplete type has no "
                          f"layout to allocate")
    return size


def type_of(ctype: object) -> Type:
    """The Type of a ctypes type (or a gcalloc.Type, returned as is). Raises InvalidArgument
    for something that is neither, InvalidType for an unaligned pointer field or an
    incomplete Structure or Union."""
    if isinstance(ctype, Type):
        return ctype
    found = _cache.get(ctype) if isinstance(ctype, type) else None
    if found is not None:
        return found
    size = ctype_size(ctype)
    mask = _mask_of(ctype, 0)  # type: ignore[arg-type]
    t = Type(size, mask, getattr(ctype, "__name__", ""))
    with _cache_lock:
        _cache[ctype] = t  # type: ignore[index]
    return t


def _mask_of(ctype: type, offset: int) -> int:
    """Pointer mask (relative to the object) of a ctype placed at byte ``offset``."""
    if issubclass(ctype, _POINTER_BASES):
        if offset % PTR_SIZE:
            raise InvalidType(f"pointer field at offset {offset} is not 8-byte aligned")
        return 1 << (offset // PTR_SIZE)
    if issubclass(ctype, ctypes.Array):
        # typeshed declares _type_/_length_ as instance properties; on the class they are
        # the element type and the length
        elem = cast(type, ctype._type_)
        esize = ctypes.sizeof(elem)
        mask = 0
        for i in range(cast(int, ctype._length_)):
            m = _mask_of(elem, offset + i * esize)
            if not m:
                break  # no pointers in the element: none in any of them
            mask |= m
        return mask
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        mask = 0
        # Base classes' fields too; each class's own descriptor, since a subclass may reuse
        # a base's field name for a field at another offset.
        for cls in ctype.__mro__:
            for field in cls.__dict__.get("_fields_", ()):
                name, ftype = field[0], field[1]
                if len(field) > 2:
                    continue  # bit field: scalar
                mask |= _mask_of(ftype, offset + cls.__dict__[name].offset)
        return mask
    return 0
