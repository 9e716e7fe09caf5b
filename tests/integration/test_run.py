"""The one runner (sdrpc_build.run) with real processes: capture, timeouts, process groups."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from sdrpc_build.errors import SourceError
from sdrpc_build.run import run

PY = sys.executable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rpartition(")")[2].split()[0] == "Z")


def test_output_exit_status_and_the_logged_line(caplog: pytest.LogCaptureFixture) -> None:
    code = "import sys; print('out'); print('e1\\ne2', file=sys.stderr); sys.exit(3)"
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="sdrpc_build.run"):
        done = run([PY, "-c", code], timeout=30, log=seen.append, shown=["python", "SECRET"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "e1\ne2\n")
    assert not done.ok and done.why == "exit 3" and done.tail(1) == "e2"
    assert seen == ["+ python SECRET"] and "+ python SECRET" in caplog.text
    err = done.error(SourceError, "it failed", "try again", scrub=lambda t: t.replace("e", "*"))
    assert isinstance(err, SourceError) and err.exit_code == 5
    assert (err.message, err.hint, err.details) == ("it failed", "try again", "*1\n*2")


def test_a_command_that_cannot_start() -> None:
    done = run(["/nonexistent/tool", "--version"], timeout=5)
    assert done.returncode is None and not done.ok
    assert done.problem.startswith("cannot run /nonexistent/tool: ")
    assert done.tail() == done.problem


def test_timeout_stops_the_whole_group(tmp_path: Path) -> None:
    """The timeout bounds the command, and a grandchild it started goes too."""
    pidfile = tmp_path / "pid"
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    done = run([PY, "-c", code], timeout=3)
    took = time.monotonic() - t0
    assert done.returncode is None and done.problem == "no result within 3 s"
    assert done.stdout == "started\n"
    assert took < 3 * 1.2 + 5  # the timeout, then SIGTERM to the group (grace 2 s), bounded
    grandchild = int(pidfile.read_text())
    assert not _alive(grandchild)
