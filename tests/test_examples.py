"""Every example runs, as a user would run it (``python examples/x.py``), prints what it
promises and leaves no file behind. The C extension example may skip only when no C compiler
exists, and the profile example may skip only its ``go tool pprof`` step when Go is missing.
The README's links and the docs' code are checked here too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(relpath: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run an example from an empty folder with an empty TMPDIR; it must leave both empty."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("GCALLOC_DEBUG", None)
    env.pop("GCALLOC_GOGC", None)
    with tempfile.TemporaryDirectory() as cwd, tempfile.TemporaryDirectory() as tmp:
        env["TMPDIR"] = tmp
        result = subprocess.run([sys.executable, str(EXAMPLES / relpath), *args], cwd=cwd,
                                env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{relpath} failed:\n{result.stdout}\n{result.stderr}"
        assert os.listdir(cwd) == [] and os.listdir(tmp) == [], (os.listdir(cwd),
                                                                  os.listdir(tmp))
    return result


def test_every_example_is_tested():
    scripts = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py")}
    assert scripts == {"binary_trees.py", "ctypes_structs.py", "rss_observe.py", "profile.py",
                       "c_extension/run.py", "c_extension/run_cffi.py",
                       "c_extension/run_extension.py"}


def test_binary_trees():
    r = run_example("binary_trees.py")
    assert "Stretching memory with a binary tree of depth 14" in r.stdout
    for depth in (4, 6, 8, 10, 12, 14):
        assert f"trees of depth {depth}\n" in r.stdout
    m = re.search(r"long-lived tree intact: (\d+) nodes; num_gc=(\d+)", r.stdout)
    assert m and int(m.group(1)) == (1 << 15) - 1
    assert int(m.group(2)) >= 2
    gctrace = [line for line in r.stderr.splitlines() if line.startswith("gc ")]
    assert len(gctrace) == int(m.group(2))          # gctrace: one line per cycle
    assert all(re.match(r"gc \d+ @[\d.]+s \d+%: .* MB goal, \d P", line) for line in gctrace)
    assert "verify ok" in r.stdout


def test_ctypes_structs():
    r = run_example("ctypes_structs.py")
    assert "list: 1000 nodes, sum 499500" in r.stdout
    assert "tree: 101 keys in order after a collection" in r.stdout
    m = re.search(r"finalizers ran: (\d+) \((\d+) tree leaves \+ list head\)", r.stdout)
    assert m and int(m.group(1)) == int(m.group(2)) + 1 and int(m.group(2)) > 0
    assert re.search(r"heap_objects: \d+ before the drop, 0 after two collections", r.stdout)
    assert r.stdout.rstrip().endswith("ok")


@pytest.mark.parametrize("script, how", [("run.py", "(ctypes)"), ("run_cffi.py", "with cffi"),
                                         ("run_extension.py", "(a CPython extension)")])
def test_c_extension(script, how):
    """The C extension on the packaged ABI (gcalloc.get_include()), three ways in."""
    r = run_example(f"c_extension/{script}", "--records", "3000")
    compiler = any(shutil.which(c) for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c)
    if not compiler:
        assert r.stdout.startswith("skipped: no C compiler found")
        return
    assert re.search(rf"compiled records(_ext)?\.c .*{re.escape(how)}", r.stdout), r.stdout
    assert "C built 3000 records in the heap; Python walked them all" in r.stdout
    assert "last (8994001, b'item-2999')" in r.stdout
    assert "root dropped: 3000 C finalizers ran; heap_objects=0" in r.stdout
    assert r.stdout.rstrip().endswith("ok")
    assert not r.stderr.strip(), r.stderr      # no callback raised, no compiler warning


def test_rss_observe():
    r = run_example("rss_observe.py", "--mib", "64")
    grew = re.search(r"RSS rose ([\d.]+) MiB for 64 MiB written", r.stdout)
    fell = re.search(r"RSS fell ([\d.]+) MiB when the scavenger released ([\d.]+) MiB", r.stdout)
    assert grew and fell, r.stdout
    assert float(grew.group(1)) >= 0.9 * 64
    assert float(fell.group(2)) >= 64
    assert float(fell.group(1)) >= 0.9 * float(fell.group(2))
    phases = [line.split()[0] for line in r.stdout.splitlines()[1:6]]
    assert phases == ["start", "grow", "collect", "scavenge", "close"]


def test_profile(tmp_path):
    out = tmp_path / "heap.pb.gz"
    r = run_example("profile.py", str(out))
    assert out.stat().st_size > 0
    assert ("sample types: alloc_objects/count, alloc_space/bytes, inuse_objects/count, "
            "inuse_space/bytes; period 4096 bytes") in r.stdout
    rows = {m.group(1).split(".")[1]: int(m.group(3).replace(",", "")) for m in re.finditer(
        r"^(__main__\.\S+)\s+([\d,]+)\s+([\d,]+)$", r.stdout, re.M)}
    # make_buffers keeps ~3.2 MiB, make_records ~0.4 MiB, make_garbage nothing: estimates
    # from samples, so the bounds are loose but the order is not.
    assert set(rows) == {"make_buffers", "make_records"}, r.stdout
    assert 2_000_000 < rows["make_buffers"] < 5_000_000
    assert 150_000 < rows["make_records"] < rows["make_buffers"]
    if shutil.which("go"):
        assert "go tool pprof -top (exit 0)" in r.stdout
        assert "make_buffers" in r.stdout.split("go tool pprof -top")[1]
    else:
        assert "go not found: skipping `go tool pprof -top`" in r.stdout


def test_profile_without_a_path_writes_to_a_temporary_folder():
    r = run_example("profile.py")            # run_example checks nothing is left behind
    assert re.search(r"wrote \S+heap\.pb\.gz \(\d+ bytes\)", r.stdout), r.stdout


def test_readme_quick_start_and_tour(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "python -m pip install . && gcalloc demo\n" in readme
    assert "python -m pip install '.[test]' && python -m pytest\n" in readme
    tour = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    assert len(tour.strip().splitlines()) <= 20
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", tour], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.match(r"finalized 0x[0-9a-f]+\n\d+ 1 \d+\n$", r.stdout), r.stdout
    assert (tmp_path / "heap.pb.gz").stat().st_size > 0


def test_readme_links_are_absolute_and_reach_every_doc():
    """An index page shows the README without the repository: relative links are dead there."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", readme)
    home = "https://github.com/gcalloc/gcalloc/blob/main/"
    assert links and all(link.startswith(home) for link in links), links
    targets = {link[len(home):] for link in links}
    assert all((ROOT / t).is_file() for t in targets), targets
    docs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert docs <= targets, docs - targets


def test_observation_rssmonitor_example_runs_as_written(tmp_path):
    doc = (ROOT / "docs" / "observation.md").read_text()
    code = re.search(r"## RSSMonitor\n\n```python\n(.*?)```", doc, re.S).group(1)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", code + "assert samples[-1].heap_inuse is None\n"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_docs_and_code_cite_go_not_the_projects_history():
    """Readers have Go's sources, not this project's tracker or its working notes."""
    pattern = re.compile(r"issue [0-9]|session|seed 00", re.I)
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "gcalloc").rglob("*.py")]
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}" for f in files
            for n, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
