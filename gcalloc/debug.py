"""GCALLOC_DEBUG, GCALLOC_GOGC and GCALLOC_MEMLIMIT: the environment switches, parsed like
GODEBUG, GOGC and GOMEMLIMIT.

``GCALLOC_DEBUG=gctrace=1,scavenger=1,verify=1,efence=1`` (comma-separated name=value pairs;
unknown names are ignored as Go ignores unknown GODEBUG keys, malformed values are an error).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from gcalloc.errors import ConfigError, InvalidArgument

MAX_INT64 = (1 << 63) - 1        # Go's math.MaxInt64: no memory limit

_SUFFIXES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_LIMIT_RE = re.compile(r"(\d+)(B|KiB|MiB|GiB|TiB)?")


def parse_limit(text: str) -> int:
    """A GOMEMLIMIT value: a non-negative integer with an optional suffix B, KiB, MiB, GiB or
    TiB (Go 1.19 runtime/debug's parseByteCount), or "off" for none. Raises ConfigError."""
    text = text.strip()
    if text == "off":
        return MAX_INT64
    m = _LIMIT_RE.fullmatch(text)
    if m is None:
        raise ConfigError(f"GCALLOC_MEMLIMIT={text!r}: not an integer with an optional suffix "
                          f"B, KiB, MiB, GiB or TiB")
    n = int(m.group(1)) * _SUFFIXES[m.group(2) or "B"]
    if n > MAX_INT64:
        raise ConfigError(f"GCALLOC_MEMLIMIT={text!r} overflows an int64")
    return n


@dataclass(frozen=True)
class DebugFlags:
    gctrace: int = 0
    scavenger: int = 0
    verify: int = 0
    efence: int = 0


def parse_debug(text: str | None = None) -> DebugFlags:
    """Parse GCALLOC_DEBUG (or ``text``). Raises ConfigError for a malformed string,
    InvalidArgument for a ``text`` that is not a str."""
    if text is not None and not isinstance(text, str):
        raise InvalidArgument(f"debug must be a str like 'gctrace=1' or None, not "
                              f"{type(text).__name__}")
    text = os.environ.get("GCALLOC_DEBUG", "") if text is None else text
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"GCALLOC_DEBUG: {item!r} is not name=value")
        if name not in DebugFlags.__dataclass_fields__:
            continue
        try:
            values[name] = int(value)
        except ValueError:
            raise ConfigError(f"GCALLOC_DEBUG: {name}={value!r} is not an integer") from None
    return DebugFlags(**values)


def parse_gogc(default: int = 100) -> int:
    """GCALLOC_GOGC as Go reads GOGC: an integer percent, or "off" for -1."""
    text = os.environ.get("GCALLOC_GOGC", "").strip()
    if not text:
        return default
    if text.lower() == "off":
        return -1
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"GCALLOC_GOGC={text!r} is not an integer or 'off'") from None


def parse_memlimit() -> int:
    """GCALLOC_MEMLIMIT as Go reads GOMEMLIMIT: bytes with an optional suffix (B, KiB, MiB,
    GiB, TiB), or "off"; unset or empty is no limit (MAX_INT64). Raises ConfigError."""
    text = os.environ.get("GCALLOC_MEMLIMIT", "").strip()
    return parse_limit(text) if text else MAX_INT64
