"""``sdrpc-launch status`` / ``stop`` on state files (no process is started or signalled)."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sdrpc_build.cli import main as umbrella
from sdrpc_build.cli.launch import main
from sdrpc_build.cli.launch_ctl import format_duration
from sdrpc_build.launch.identity import ProcessIdentity, system_table
from sdrpc_build.launch.instance import (
    InstanceState,
    ServerRecord,
    read_state,
    state_path,
    supervisor_log,
    write_state,
)
from sdrpc_build.launch.supervisor import DeviceRow

NO_SUCH_PID = 2**30  # above any pid_max


@pytest.fixture(autouse=True)
def _no_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests point state files at this very process: nothing may be signalled."""

    def refuse(*a: object) -> None:
        raise AssertionError(f"a signal was sent: {a}")

    monkeypatch.setattr(os, "kill", refuse)
    monkeypatch.setattr(os, "killpg", refuse)
    if hasattr(signal, "pidfd_send_signal"):
        monkeypatch.setattr(signal, "pidfd_send_signal", refuse)


def make_state(
    tmp_path: Path, supervisor: ProcessIdentity, server: ProcessIdentity | None = None
) -> InstanceState:
    """A state file; server s0 is ``server`` (default: this process, so it reads "running")."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    s0_log = logs / "s0.log"
    s0_log.write_text("2025-01-01T00:00:00.000 Accepted client connection\n")  # our probe
    offset = s0_log.stat().st_size
    with s0_log.open("a") as f:
        f.write("2025-01-01T00:00:01.000 Accepted client connection\n")  # a real client
    me = server or system_table().identify(os.getpid())
    state = InstanceState(
        instance="default",
        supervisor=supervisor,
        started_at=time.time() - 125,
        log_dir=logs,
        supervisor_log=supervisor_log(logs, "default"),
        stop_timeout=0.2,
        phase="running",
        rpc_servers="127.0.0.1:50052,127.0.0.1:50053",
        devices=(DeviceRow(0, "s0", 0, 0, "127.0.0.1:50052", "CPU", "EPYC", 1 << 30, 1 << 29),),
        servers=(
            ServerRecord("s0", "127.0.0.1:50052", s0_log, "ready", me, time.time() - 65, offset),
            ServerRecord("s1", "127.0.0.1:50053", logs / "s1.log", "restarting", None, None, 0, 3),
        ),
    )
    write_state(state_path(tmp_path / "run", "default"), state)
    return state


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--cache-dir", str(Path.cwd())])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_status_without_an_instance_is_27(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    code, out, err = run(capsys, "status")
    assert code == 27
    assert "instance 'default' is not running (no state file)" in err
    code, out, _ = run(capsys, "status", "--json", "--instance", "gpu")
    assert code == 27
    assert json.loads(out) == {
        "instance": "gpu",
        "running": False,
        "reason": "no state file",
        "state_file": str(in_tmp / "run" / "gpu.json"),
    }


def test_status_of_a_running_instance(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    me = system_table().identify(os.getpid())
    make_state(in_tmp, me)
    code, out, err = run(capsys, "status")
    assert code == 0, err
    assert "instance 'default' running" in out
    assert "up 2m" in out
    s0 = next(ln for ln in out.splitlines() if ln.strip().startswith("s0"))
    assert "running" in s0 and str(os.getpid()) in s0 and "busy" in s0 and "1m" in s0
    s1 = next(ln for ln in out.splitlines() if ln.strip().startswith("s1"))
    assert "starting" in s1 and "(restarting)" in s1 and "restarts: 3" in s1
    assert "--rpc-servers 127.0.0.1:50052,127.0.0.1:50053" in out
    assert "RPC0" in out

    code, out, _ = run(capsys, "status", "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["running"] is True
    assert obj["supervisor"]["identity"] == "alive"
    assert [(s["name"], s["state"], s["activity"]) for s in obj["servers"]] == [
        ("s0", "running", "busy"),
        ("s1", "starting", "unknown"),  # its supervisor restarts it
    ]
    assert obj["servers"][0]["activity_since"] == "2025-01-01T00:00:01"
    assert obj["device_map"][0]["name"] == "RPC0"


def test_status_and_stop_of_a_stale_file_with_a_reused_pid(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    """Our own PID with another start time: a reused PID. Reported stale, never signalled."""
    me = system_table().identify(os.getpid())
    reused = ProcessIdentity(me.pid, "1@another-boot", me.method)
    make_state(in_tmp, reused, server=reused)
    code, out, err = run(capsys, "status")
    assert code == 27
    assert "not running" in out
    assert "its PID now names another process" in err
    code, out, _ = run(capsys, "status", "--json")
    assert json.loads(out)["phase"] == "stale"

    path = state_path(in_tmp / "run", "default")
    code, out, err = run(capsys, "stop")
    assert code == 27
    assert "was not running" in err and "now names another process" in err
    assert "removed its stale state file" in err
    assert not path.exists()


def test_stop_of_a_dead_supervisor_removes_the_file(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    dead = ProcessIdentity(NO_SUCH_PID, "1@b", "proc")
    make_state(in_tmp, dead, server=dead)
    code, _, err = run(capsys, "status")
    assert code == 27
    assert "its supervisor is gone" in err
    code, _, err = run(capsys, "stop", "--json")
    assert code == 27
    assert read_state(state_path(in_tmp / "run", "default")) is None
    code, _, err = run(capsys, "stop")
    assert code == 27
    assert "is not running" in err


def test_corrupt_state_file(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    path = state_path(in_tmp / "run", "default")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    code, _, err = run(capsys, "status")
    assert code == 27
    assert "not JSON" in err and "sdrpc-launch stop' removes" in err
    code, _, err = run(capsys, "stop")
    assert code == 27
    assert "removed an unreadable state file" in err
    assert not path.exists()


def test_stop_never_signals_what_a_writable_state_file_names(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    """With umask 000 an older sdrpc left files anyone could edit: refused, not signalled."""
    make_state(in_tmp, system_table().identify(os.getpid()))  # names this live process
    path = state_path(in_tmp / "run", "default")
    path.chmod(0o666)
    code, _, err = run(capsys, "stop")  # the autouse fixture fails on any signal
    assert code == 27
    assert "writable by others" in err
    assert not path.exists()


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "1e999"])
def test_stop_timeout_is_checked(
    capsys: pytest.CaptureFixture[str], in_tmp: Path, value: str
) -> None:
    code, _, err = run(capsys, "stop", "--timeout", value)
    assert code == 2
    assert "--timeout must be a number of seconds" in err
    assert "hint:" in err


@pytest.mark.parametrize("command", ["status", "stop"])
def test_a_cache_dir_that_is_a_file_is_not_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    for cache in (afile, tmp_path / ("x" * 100_000)):
        code = main([command, "--cache-dir", str(cache)])
        err = capsys.readouterr().err
        assert code == 27, err
        assert "Traceback" not in err and "internal error" not in err
        assert len(err) < 1000
    assert afile.read_text() == ""


def test_not_running_hint_lists_live_instances(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    me = system_table().identify(os.getpid())
    state = make_state(in_tmp, me)
    write_state(state_path(in_tmp / "run", "gpu"), replace(state, instance="gpu"))
    state_path(in_tmp / "run", "default").unlink()
    code, _, err = run(capsys, "status")
    assert code == 27
    assert "running instances: gpu" in err


def test_bad_instance_name_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    code, _, err = run(capsys, "stop", "--instance", "../x")
    assert code == 2
    assert "invalid instance name" in err


def test_umbrella_dispatches_status(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    assert umbrella.main(["launch", "status", "--cache-dir", str(in_tmp)]) == 27
    assert "is not running" in capsys.readouterr().err


def test_instance_without_detach_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--instance", "x", "--binary", "/nonexistent"]) == 2
    assert "--instance needs --detach" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.9, "42s"), (185, "3m 5s"), (7260, "2h 1m"), (3 * 86400 + 4 * 3600, "3d 4h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
