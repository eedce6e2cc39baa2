"""The command line: ``gcalloc demo`` (run as ``python -m gcalloc``, piped, as in CI), its
``--json`` and ``--plot`` outputs, the progress line, ``gcalloc stats`` and ``gcalloc version``.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gcalloc
from gcalloc import cli, demo
from gcalloc.observe import Sample

ROOT = Path(__file__).resolve().parent.parent
PHASES = ["gcbench", "churn", "finalizers", "profile", "release", "close"]
GCTRACE = re.compile(r"^gc \d+ @[\d.]+s \d+%: [\d.e+-]+\+[\d.e+-]+\+[\d.e+-]+ ms clock, .* "
                     r"\d+->\d+->\d+ MB, \d+ MB goal, \d P( \(forced\))?$")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("GCALLOC_DEBUG", None)
    env.pop("GCALLOC_GOGC", None)
    return subprocess.run([sys.executable, "-m", "gcalloc", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# --- demo ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_json(tmp_path_factory):
    """One quick demo run with --json (piped: no terminal)."""
    profile = tmp_path_factory.mktemp("demo") / "heap.pb.gz"
    r = run_cli("demo", "--quick", "--json", "--profile", str(profile))
    assert r.returncode == 0, r.stderr
    return r, json.loads(r.stdout)


def test_demo_piped_prints_a_table_per_phase_and_no_progress(tmp_path):
    r = run_cli("demo", "--quick", "--profile", str(tmp_path / "p.pb.gz"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for i, name in enumerate(PHASES, 1):
        assert f"[{i}/6] {name}: " in out
    header = "heap_alloc  heap_inuse  heap_idle  heap_released  num_gc"
    assert out.count(header) == len(PHASES)
    assert out.count("\n  before ") == out.count("\n  after ") == len(PHASES)
    assert re.search(r"RSS peaked at [\d.]+ MiB", out)
    assert "\r" not in out + r.stderr and "\x1b" not in out + r.stderr
    trace = r.stderr.splitlines()
    assert trace and all(GCTRACE.match(line) for line in trace), r.stderr[:2000]
    assert any(line.endswith("(forced)") for line in trace)


def test_demo_json_samples_and_phases(demo_json):
    r, data = demo_json
    assert data["version"] == gcalloc.__version__ and data["quick"] is True
    assert [p["name"] for p in data["phases"]] == PHASES
    samples = data["samples"]
    assert len(samples) >= 2 * len(PHASES)
    assert set(samples[0]) == {f.name for f in Sample.__dataclass_fields__.values()}
    ts = [s["t"] for s in samples]
    assert ts == sorted(ts)
    phases = {p["name"]: p for p in data["phases"]}
    assert phases["gcbench"]["after"]["num_gc"] >= 1
    assert phases["churn"]["after"]["num_gc"] > phases["churn"]["before"]["num_gc"]
    assert "finalizers ran" in " ".join(phases["finalizers"]["notes"])
    after = phases["release"]["after"]
    assert after["heap_released"] == after["heap_idle"] > 0     # every free page returned
    assert after["heap_alloc"] <= 16    # at most the thread's tiny block: a root (docs/gc.md)
    assert phases["release"]["after"]["rss"] < phases["release"]["before"]["rss"]
    assert all(phases["close"]["after"][k] is None for k in ("heap_inuse", "num_gc"))
    assert data["profile"].endswith("heap.pb.gz") and Path(data["profile"]).stat().st_size > 0
    # the human tables moved to stderr, next to gctrace
    assert "[6/6] close: " in r.stderr


def test_demo_plot_is_written(tmp_path):
    """Needs matplotlib (the plot extra), as a user of --plot does."""
    png = tmp_path / "out.png"
    r = run_cli("demo", "--quick", "--plot", str(png), "--profile", str(tmp_path / "p.pb.gz"))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    assert f"plot written to {png}" in r.stdout


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib fails
    out = tmp_path / "x.png"
    assert cli.main(["demo", "--quick", "--plot", str(out)]) == 1
    captured = capsys.readouterr()
    assert "matplotlib" in captured.err and "pip install 'gcalloc[plot]'" in captured.err
    assert captured.out == "" and not out.exists()            # failed before running


def test_demo_rejects_bad_interval(capsys):
    assert cli.main(["demo", "--interval", "0"]) == 2
    assert "--interval" in capsys.readouterr().err


# --- progress line ---------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_only():
    tty, pipe = FakeTerminal(), io.StringIO()
    for stream in (tty, pipe):
        p = demo.Progress(stream)
        p.update("churn", 5, 10)
        p.update("churn", 10, 10)
        p.finish()
    assert pipe.getvalue() == ""
    text = tty.getvalue()
    assert "\r\x1b[K  churn [############" in text
    assert "100%" in text and text.endswith("\r\x1b[K")


def test_progress_during_a_phase_and_other_output_erases_it():
    tty = FakeTerminal()
    progress = demo.Progress(tty)
    wrapped = demo.ProgressAwareStream(tty, progress)
    with gcalloc.Heap(-1, debug="") as heap:
        notes = demo.churn(heap, 300, 50, progress)
        progress.update("churn", 1, 2)
        wrapped.write("gc 1 @0.1s 1%: ...\n")
    assert "300 objects" in notes[0]
    text = tty.getvalue()
    assert "churn [" in text and "100%" in text
    assert text.endswith("\r\x1b[Kgc 1 @0.1s 1%: ...\n")   # line erased before the trace


# --- stats and version -----------------------------------------------------------------------

def test_stats_matches_gos_size_class_table(capsys):
    assert cli.main(["stats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["class", "bytes/obj", "bytes/span", "objects", "tail", "waste",
                                "max", "waste"]
    source = (ROOT / "gcalloc" / "sizeclasses.py").read_text()
    go_rows = re.findall(r"^#\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+%)$", source,
                         re.M)
    assert len(go_rows) == 67
    assert [tuple(line.split()) for line in lines[1:]] == go_rows


def test_version():
    r = run_cli("version")
    assert r.returncode == 0
    assert r.stdout == f"gcalloc {gcalloc.__version__}\n"


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert "demo" in out and "stats" in out and "version" in out


def test_console_script_points_at_main():
    assert 'gcalloc = "gcalloc.cli:main"' in (ROOT / "pyproject.toml").read_text()
    assert callable(cli.main)
