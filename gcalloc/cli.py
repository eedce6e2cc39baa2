"""The ``gcalloc`` command line (also ``python -m gcalloc``).

    gcalloc demo [--quick] [--plot out.png] [--json] [--profile out.pb.gz]
                                                        the whole lifecycle of a heap, observed
    gcalloc stats                                       the size-class table
    gcalloc version, gcalloc --version                  the version

``demo`` prints a table per phase (MemStats beside the process's RSS and USS) on stdout and the
gctrace lines on stderr; on a terminal, long phases draw a progress line on stderr. ``--json``
prints the phases and the RSSMonitor's samples as JSON on stdout (the tables move to stderr).
``--plot`` needs matplotlib: ``python -m pip install 'gcalloc[plot]'``; it is imported after
the measured run, so that its own memory is not in the RSS being plotted.

Conventions: bad arguments and an output path whose folder is missing are reported in one line
on stderr before any work (exit 2); a reader that closes the pipe early (``gcalloc demo | head``)
ends the command quietly with exit 1, as the Python documentation recommends for SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence

import gcalloc
from gcalloc.sizeclasses import (
    NUM_SIZE_CLASSES,
    PAGE_SIZE,
    class_to_allocnpages,
    class_to_nelems,
    class_to_size,
)

PLOT_HINT = ("python -m pip install 'gcalloc[plot]' (in a checkout: "
             "python -m pip install '.[plot]')")


class MissingExtra(Exception):
    """An optional dependency is not installed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcalloc", description=(
        "Go's memory allocator and a mark-sweep garbage collector over real OS memory."))
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the whole heap lifecycle on a real workload")
    demo.add_argument("--quick", action="store_true",
                      help="a smaller workload: trees of depth 12 instead of 16, a tenth "
                           "of the other objects")
    demo.add_argument("--plot", metavar="OUT.PNG",
                      help="draw heap_inuse, heap_released and RSS over time (matplotlib)")
    demo.add_argument("--json", action="store_true",
                      help="print the phases and samples as JSON on stdout")
    demo.add_argument("--profile", metavar="OUT.PB.GZ",
                      help="where to write the heap profile (default: a new temporary folder)")
    demo.add_argument("--interval", type=float, default=0.05, metavar="SECONDS",
                      help="RSS sampling interval (default 0.05)")
    sub.add_parser("stats", help="print the size-class table")
    sub.add_parser("version", help="print the version")
    return parser


def version_line() -> str:
    return f"gcalloc {gcalloc.__version__}"


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like ``parser.parse_args``, but an argument a subcommand does not know is reported with
    that subcommand's usage (argparse would print the top level's)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        subparsers = next(a for a in parser._actions
                          if isinstance(a, argparse._SubParsersAction))
        subparsers.choices.get(args.command, parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        status = run_command(parser, args)
        sys.stdout.flush()          # a closed pipe must fail here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (``| head``). Python's docs on SIGPIPE: point stdout at devnull
        # so the interpreter's final flush does not raise again, and exit 1.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "stats":
        print(size_class_table())
        return 0
    if args.command == "version":
        print(version_line())
        return 0
    parser.print_help()
    return 2


# --- demo ------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from gcalloc.demo import Progress, ProgressAwareStream, run_demo

    if args.plot and not have_matplotlib():
        print(f"gcalloc demo: {missing_matplotlib()}", file=sys.stderr)
        return 1
    if not args.interval > 0:
        print("gcalloc demo: --interval must be > 0", file=sys.stderr)
        return 2
    for option, path in (("--profile", args.profile), ("--plot", args.plot)):
        problem = path and unwritable(path)
        if problem:
            print(f"gcalloc demo: {option} {path}: {problem}", file=sys.stderr)
            return 2
    out = sys.stderr if args.json else sys.stdout
    progress = Progress(sys.stderr)
    try:
        with _progress_aware_stderr(progress, ProgressAwareStream):
            result = run_demo(quick=args.quick, out=out, progress=progress,
                              interval=args.interval, profile_path=args.profile)
    except BrokenPipeError:
        raise
    except OSError as e:                # the checks above passed, but writing still failed
        print(f"gcalloc demo: {e}", file=sys.stderr)
        return 1
    print(summary(result), file=out)
    if args.plot:
        plot_samples(result.samples, args.plot, [(p.name, p.before.t) for p in result.phases])
        print(f"plot written to {args.plot}", file=out)
    if args.json:
        json.dump({"version": gcalloc.__version__, "quick": args.quick,
                   "profile": result.profile_path,
                   "phases": [p.as_dict() for p in result.phases],
                   "samples": [s.as_dict() for s in result.samples]}, sys.stdout, indent=1)
        print()
    return 0


@contextlib.contextmanager
def _progress_aware_stderr(progress, wrapper) -> Iterator[None]:
    """While the demo runs on a terminal, writes to stderr (gctrace) erase the progress line."""
    if not progress.enabled:
        yield
        return
    saved = sys.stderr
    sys.stderr = wrapper(saved, progress)
    try:
        yield
    finally:
        sys.stderr = saved


def summary(result) -> str:
    """The closing lines: how RSS moved from the heap's peak to the end."""
    peak = max(result.samples, key=lambda s: s.rss)
    last = result.samples[-1]
    seconds = sum(p.seconds for p in result.phases)
    return (f"\ndone in {seconds:.1f} s, {len(result.samples)} samples; RSS peaked at "
            f"{peak.rss / (1 << 20):.1f} MiB ({peak.phase}) and ended at "
            f"{last.rss / (1 << 20):.1f} MiB")


def unwritable(path: str) -> str | None:
    """Why a file cannot be created at ``path``, or None: checked before a run so that a typo
    fails at once rather than after every phase."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "is a folder"
    if not os.path.isdir(folder):
        return f"folder {os.path.dirname(path) or folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"folder {os.path.dirname(path) or folder} is not writable"
    return None


def missing_matplotlib() -> str:
    return f"--plot needs matplotlib, which is not installed: {PLOT_HINT}"


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported, without importing it (its import would show in the
    RSS the demo measures)."""
    if "matplotlib" in sys.modules:
        return sys.modules["matplotlib"] is not None
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def require_matplotlib():
    """Import matplotlib with a headless backend; raise MissingExtra with the install hint."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise MissingExtra(missing_matplotlib()) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def plot_samples(samples: list, path: str,
                 phases: Sequence[tuple[str, float]] = ()) -> None:
    """Draw heap_inuse, heap_released and RSS (MiB) against time into ``path`` (PNG), with a
    dotted line at the start of each phase. Raises MissingExtra without matplotlib."""
    plt = require_matplotlib()
    fig = plot_figure(plt, samples, phases)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_figure(plt, samples: list, phases: Sequence[tuple[str, float]] = ()):
    """The figure ``plot_samples`` saves (``plt``: matplotlib.pyplot)."""
    t = [s.t for s in samples]
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, label in (("heap_inuse", "heap_inuse"), ("heap_released", "heap_released"),
                        ("rss", "RSS")):
        ys = [float("nan") if getattr(s, name) is None else getattr(s, name) / (1 << 20)
              for s in samples]
        ax.plot(t, ys, label=label)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    x0, x1 = ax.get_xlim()
    starts = [(start - x0) / (x1 - x0) for _, start in phases]
    # The last phases take milliseconds: their lines almost coincide. The labels stand above
    # the axes, spread to a label's width apart, each joined to its line by a leader.
    for (name, start), at in zip(phases, spread(starts, gap=0.03), strict=True):
        ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(name, xy=(start, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(at, 1.04), textcoords="axes fraction", rotation=90, ha="center",
                    va="bottom", fontsize=9,
                    arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6,
                                "shrinkA": 1, "shrinkB": 0})
    fig.suptitle("gcalloc demo: the heap as MemStats and as the OS sees it")
    fig.tight_layout()
    return fig


def spread(xs: Sequence[float], gap: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """Positions near the sorted ``xs``, at least ``gap`` apart and within [lo, hi] where they
    fit: pushed right from the left, then back left from ``hi``."""
    out = list(xs)
    for i in range(len(out)):
        out[i] = max(out[i], lo if i == 0 else out[i - 1] + gap)
    for i in reversed(range(len(out))):
        out[i] = min(out[i], hi if i == len(out) - 1 else out[i + 1] - gap)
    return out


# --- stats -----------------------------------------------------------------------------------

def size_class_table() -> str:
    """Go's sizeclasses.go header: class, bytes/obj, bytes/span, objects, tail waste, max
    waste (the worst case: every object one byte bigger than the previous class)."""
    lines = [f"{'class':>5}  {'bytes/obj':>9}  {'bytes/span':>10}  {'objects':>7}  "
             f"{'tail waste':>10}  {'max waste':>9}"]
    for c in range(1, NUM_SIZE_CLASSES):
        size = class_to_size[c]
        span = class_to_allocnpages[c] * PAGE_SIZE
        n = class_to_nelems[c]
        tail = span - n * size
        prev = class_to_size[c - 1]
        max_waste = ((size - prev - 1) * n + tail) / span
        lines.append(f"{c:>5}  {size:>9}  {span:>10}  {n:>7}  {tail:>10}  "
                     f"{max_waste:>9.2%}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
