"""launch's trial run (readiness.trial_run) with real processes (shell scripts) and an
injected check: what build's verify starts its server with."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sdrpc_build.launch.procs import line_buffer_prefix
from sdrpc_build.launch.readiness import OUTPUT_HEAD, OUTPUT_TAIL, Readiness, trial_run

pytestmark = pytest.mark.integration


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "server.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return [str(path)]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("prefix", [True, False], ids=["stdbuf", "pty"])
def test_ready_after_a_few_retries_then_stopped(tmp_path: Path, prefix: bool) -> None:
    pid_file = tmp_path / "pid"
    argv = script(tmp_path, f'echo $$ > {pid_file}\necho "banner line"\nexec sleep 60\n')
    if prefix:
        stdbuf = line_buffer_prefix()
        if stdbuf is None:
            pytest.fail("GNU stdbuf is expected on the test machines")
        argv = [*stdbuf, *argv]
    answers = iter([Readiness("retry"), Readiness("retry"), Readiness("ready", protocol="3.0.0")])
    deadlines: list[float] = []

    def check(deadline: float) -> Readiness:
        if not pid_file.exists():  # not started yet: does not count
            return Readiness("retry")
        deadlines.append(deadline)
        return next(answers)

    t0 = time.monotonic()
    run = trial_run(argv, dict(os.environ), check, timeout=30.0, interval=0.01)
    assert run.ready and run.readiness is not None and run.readiness.protocol == "3.0.0"
    assert run.returncode is None
    assert len(deadlines) == 3 and all(t0 < d <= t0 + 31 for d in deadlines)
    assert "banner line" in run.output
    assert gone(int(pid_file.read_text()))  # stopped and reaped, always


def test_exit_before_ready_gives_the_status_and_the_output(tmp_path: Path) -> None:
    argv = script(tmp_path, 'echo "error: unknown argument"\nexit 3\n')
    run = trial_run(argv, {}, lambda d: Readiness("retry"), timeout=30.0, interval=0.01)
    assert not run.ready
    assert run.returncode == 3
    assert "error: unknown argument" in run.output
    assert run.seconds < 25  # it did not wait for the deadline


def test_the_deadline_bounds_the_whole_run(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = script(tmp_path, f"echo $$ > {pid_file}\nexec sleep 60\n")
    run = trial_run(argv, {}, lambda d: Readiness("retry"), timeout=1.0, stop_grace=2.0)
    assert not run.ready and run.returncode is None  # still running at the deadline: stopped
    assert 1.0 <= run.seconds < 1.0 * 1.2 + 2.0
    assert gone(int(pid_file.read_text()))


def test_a_failing_check_ends_the_run(tmp_path: Path) -> None:
    argv = script(tmp_path, "exec sleep 60\n")
    run = trial_run(argv, {}, lambda d: Readiness("fail", "GGML_MAX_NAME differs"), timeout=30.0)
    assert run.readiness == Readiness("fail", "GGML_MAX_NAME differs")
    assert not run.ready and run.seconds < 25


def test_a_server_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = script(tmp_path, f"trap '' TERM\necho $$ > {pid_file}\nwhile :; do sleep 0.1; done\n")

    def check(deadline: float) -> Readiness:
        return Readiness("ready" if pid_file.exists() else "retry")  # (the trap is set first)

    run = trial_run(argv, {}, check, timeout=30.0, interval=0.01, stop_grace=0.5)
    assert run.ready
    assert gone(int(pid_file.read_text()))


def test_output_is_bounded_head_and_tail(tmp_path: Path) -> None:
    total = OUTPUT_HEAD + 4 * OUTPUT_TAIL
    argv = script(
        tmp_path,
        f"echo FIRST\nhead -c {total} /dev/zero | tr '\\0' x\necho\necho LAST\nexec sleep 60\n",
    )
    seen = {"n": 0}

    def check(deadline: float) -> Readiness:
        seen["n"] += 1
        return Readiness("ready") if seen["n"] > 20 else Readiness("retry")

    run = trial_run(argv, {}, check, timeout=30.0, interval=0.05)
    assert run.output.startswith("FIRST")
    assert run.output.rstrip().endswith("LAST")
    assert "bytes not kept" in run.output
    assert len(run.output) < OUTPUT_HEAD + OUTPUT_TAIL + 100


def test_a_binary_that_cannot_start_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        trial_run([str(tmp_path / "missing")], {}, lambda d: Readiness("ready"), timeout=1.0)
