"""Generate the size-class tables of gcalloc/include/gcalloc.h from gcalloc/sizeclasses.py.

The header's inline fast path maps a size to its span class with the same Go 1.16 tables the
Python allocator uses; as ``static const`` arrays in the header, a constant size folds to a
constant bucket index. The block between ``BEGIN GENERATED`` and ``END GENERATED`` is
rewritten from the Python tables, with a checksum that the Python side also writes into each
heap's ``gcalloc_api`` (``tables_check``): a header built from other tables refuses to run.

Usage:
    python tools/mkcapitables.py            # rewrites the block in gcalloc/include/gcalloc.h
    python tools/mkcapitables.py --check    # exit 1 if the header's block is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gcalloc.capi import tables_check  # noqa: E402  (after the path insert)
from gcalloc.sizeclasses import class_to_size, size_to_class8, size_to_class128  # noqa: E402

HEADER = ROOT / "gcalloc" / "include" / "gcalloc.h"
BEGIN = "/* BEGIN GENERATED: python tools/mkcapitables.py */\n"
END = "/* END GENERATED */\n"


def _array(ctype: str, name: str, values: tuple[int, ...]) -> str:
    lines, line = [], "   "
    for v in values:
        item = f" {v},"
        if len(line) + len(item) > 95:
            lines.append(line)
            line = "   "
        line += item
    lines.append(line)
    return f"static const {ctype} {name}[{len(values)}] = {{\n" + "\n".join(lines) + "\n};\n"


def generated_block() -> str:
    return (BEGIN
            + _array("uint16_t", "gcalloc__class_to_size", tuple(class_to_size))
            + _array("uint8_t", "gcalloc__size_to_class8", tuple(size_to_class8))
            + _array("uint8_t", "gcalloc__size_to_class128", tuple(size_to_class128))
            + f"#define GCALLOC__TABLES_CHECK {tables_check():#018x}ULL\n"
            + END)


def rewrite(text: str) -> str:
    start = text.index(BEGIN)
    end = text.index(END) + len(END)
    return text[:start] + generated_block() + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = HEADER.read_text()
    new = rewrite(text)
    if args.check:
        if new != text:
            print(f"{HEADER} is out of date: run python tools/mkcapitables.py")
            return 1
        return 0
    HEADER.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
