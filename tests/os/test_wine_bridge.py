"""The Wine bridge's own machinery: finding Wine off PATH, saying why it cannot run, skipping
locally but failing in CI without it, and leaving no Wine process behind."""

from __future__ import annotations

import sys

import oshelpers
import pytest
import winebridge
from oshelpers import wine_missing


def _executable(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(sys.platform == "win32", reason="distribution layouts of Wine: not Windows")
def test_wine_is_found_where_debian_puts_it_off_path(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(winebridge, "_WINE_DIRS", (str(tmp_path / "none"), str(tmp_path)))
    assert winebridge.find_wine() is None
    wine = _executable(tmp_path / "wine64")
    server = _executable(tmp_path / "wineserver")
    assert winebridge.find_wine() == wine
    assert winebridge.find_wineserver(wine) == server
    on_path = _executable(tmp_path / "bin" / "wine")
    assert winebridge.find_wine() == on_path  # PATH first


def test_the_reason_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(winebridge, "_WINE_DIRS", ())
    reason = winebridge.unavailable_reason()
    assert reason is not None
    assert winebridge.MINGW in reason and "wine64" in reason


@pytest.mark.skipif(sys.platform == "win32", reason="Windows runs real kernel32, never Wine")
def test_without_wine_the_suite_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(oshelpers, "unavailable_reason", lambda: "kernel32 under Wine needs x")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs x"):
        wine_missing()
    monkeypatch.setenv("CI", "true")
    expected = pytest.fail.Exception if sys.platform.startswith("linux") else \
        pytest.skip.Exception
    with pytest.raises(expected, match="needs x"):
        wine_missing()
    monkeypatch.setattr(oshelpers, "unavailable_reason", lambda: None)
    wine_missing()  # available: neither


def test_the_session_bridge_runs_in_a_wine_process_of_its_own_prefix(wine):
    procs = winebridge.processes_of(wine.env["WINEPREFIX"])
    assert wine.pid in [p.pid for p in procs]  # what close() checks for is visible
    assert any("wineserver" in " ".join(p.cmdline()) for p in procs)
