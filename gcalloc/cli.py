"""The ``gcalloc`` command line."""

from __future__ import annotations

import argparse
import sys

import gcalloc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gcalloc", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command in (None, "version"):
        print(f"gcalloc {gcalloc.__version__}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
