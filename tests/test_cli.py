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


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("GCALLOC_DEBUG", None)
    env.pop("GCALLOC_GOGC", None)
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 300, cwd: Path = ROOT,
            **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gcalloc", *args], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def run_cli_into_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """As ``gcalloc ... | head`` once head has exited: stdout is a pipe whose read end is
    already closed, so the first write fails with EPIPE (deterministically: it is closed
    before the command starts)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "gcalloc", *args], cwd=ROOT,
                              env=cli_env(), stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=300)
    finally:
        os.close(w)


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


def test_version_flag_prints_what_the_version_command_prints():
    flag, command = run_cli("--version"), run_cli("version")
    assert flag.returncode == 0, flag.stderr
    assert flag.stdout == command.stdout == f"gcalloc {gcalloc.__version__}\n"


# --- conventions: closed pipes, bad paths, usage -----------------------------------------------

@pytest.mark.parametrize("args", [("stats",), ("demo", "--quick"), ("demo", "--quick", "--json")])
def test_a_closed_pipe_ends_the_command_quietly(args):
    r = run_cli_into_closed_pipe(*args)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.returncode == 1
    if "--json" not in args:
        assert r.stderr == ""      # the demo stopped at its first line: no phase ran, no gctrace


@pytest.mark.parametrize("option", ["--profile", "--plot"])
def test_demo_output_in_a_missing_folder_fails_before_the_run(tmp_path, option):
    r = run_cli("demo", "--quick", option, "missing-dir/out", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""                                   # no phase ran
    assert r.stderr == f"gcalloc demo: {option} missing-dir/out: folder missing-dir does not " \
                       "exist\n"
    assert list(tmp_path.iterdir()) == []


def test_demo_profile_that_is_a_folder_fails_before_the_run(tmp_path):
    r = run_cli("demo", "--quick", "--profile", str(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"gcalloc demo: --profile {tmp_path}: is a folder\n"


def test_demo_without_profile_leaves_no_files_behind(tmp_path):
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    r = run_cli("demo", "--quick", "--json", cwd=cwd, TMPDIR=str(tmp))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["profile"] is None
    assert "deleted after the run (--profile OUT.PB.GZ keeps it)" in r.stderr
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == []


def test_unknown_demo_option_prints_demos_usage():
    r = run_cli("demo", "--bogus")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: gcalloc demo [-h] [--quick]"), r.stderr
    assert r.stderr.rstrip().endswith("gcalloc demo: error: unrecognized arguments: --bogus")


def test_demo_first_line_says_what_gctrace_is_and_how_to_turn_it_off(tmp_path):
    r = run_cli("demo", "--quick", "--profile", str(tmp_path / "p.pb.gz"))
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first == demo.GCTRACE_NOTE and "GCALLOC_DEBUG=gctrace=0" in first
    quiet = run_cli("demo", "--quick", "--profile", str(tmp_path / "q.pb.gz"),
                    GCALLOC_DEBUG="gctrace=0")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and "gctrace" not in quiet.stdout
    assert "[1/6] gcbench: " in quiet.stdout


PLOT_AFTER_RUN = """
import sys
from gcalloc import cli, demo
seen = []
real = demo.run_demo
def run_demo(**kw):
    seen.append("matplotlib" in sys.modules)
    result = real(**kw)
    seen.append("matplotlib" in sys.modules)
    return result
demo.run_demo = run_demo
status = cli.main(["demo", "--quick", "--plot", sys.argv[1], "--profile", sys.argv[2]])
print("matplotlib imported before/after the run:", seen, "status", status, file=sys.stderr)
"""


def test_plot_imports_matplotlib_only_after_the_measured_run(tmp_path):
    """matplotlib's import adds tens of MiB of RSS: it must not be in the samples plotted."""
    png = tmp_path / "out.png"
    r = subprocess.run([sys.executable, "-c", PLOT_AFTER_RUN, str(png), str(tmp_path / "p.gz")],
                       cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "before/after the run: [False, False] status 0" in r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_phase_labels_do_not_overlap():
    """The last three phases take milliseconds of a run of seconds: their lines nearly
    coincide, their labels must not."""
    plt = cli.require_matplotlib()
    from matplotlib.text import Text
    MiB = 1 << 20
    samples = [Sample(t=i * 0.05, phase="p", rss=(30 + i % 7) * MiB, uss=None, heap_alloc=MiB,
                      heap_inuse=(i % 9) * MiB, heap_idle=MiB, heap_released=MiB, heap_sys=MiB,
                      num_gc=i) for i in range(160)]
    phases = list(zip(PHASES, [0.0, 4.6, 6.8, 7.9, 7.93, 7.95], strict=True))
    fig = cli.plot_figure(plt, samples, phases)
    try:
        fig.canvas.draw()                 # places the annotations' texts
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t for t in ax.texts if t.get_text() in PHASES]
        assert [t.get_text() for t in labels] == PHASES
        # the text alone (an Annotation's own extent includes its leader line)
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        titles = [t.get_window_extent(renderer) for t in [ax.title, *fig.texts] if t.get_text()]
        assert titles
        others = [*titles, ax.get_legend().get_window_extent(renderer),
                  ax.get_window_extent(renderer)]
        for i, a in enumerate(boxes):
            assert fig.bbox.contains(a.x0, a.y0) and fig.bbox.contains(a.x1, a.y1)
            for b in boxes[i + 1:] + others:
                assert not a.overlaps(b), (labels[i].get_text(), a, b)
    finally:
        plt.close(fig)


def test_spread_keeps_positions_a_gap_apart_inside_the_bounds():
    assert cli.spread([0.0, 0.5, 0.98, 0.99, 1.0], gap=0.03) == pytest.approx(
        [0.0, 0.5, 0.94, 0.97, 1.0])
    assert cli.spread([0.1, 0.2], gap=0.03) == [0.1, 0.2]       # far apart: unchanged
