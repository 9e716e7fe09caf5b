"""sdrpc-launch --detach / status / stop with real CPU rpc-servers on 127.0.0.1.

Every process is ended by PID at teardown (identity-checked), also when a test fails: the
detached supervisors are found through their state files and through their command lines,
which carry this test's unique temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import alive, free_port, port_bound

from sdrpc_build.launch.identity import LIVE, ProcessIdentity, signal_verified, system_table

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TABLE = system_table()


def wait_until(pred: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def pids_with_arg(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (this test's own tmp dir)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (d / "cmdline").read_bytes():
                found.append(int(d.name))
    return found


class Sdrpc:
    """Runs ``sdrpc-launch`` as a real subprocess with a private cache and log dir."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cache = tmp / "cache"
        self.logs = tmp / "logs"
        self.known: dict[int, ProcessIdentity] = {}

    def run(
        self, *args: str, timeout: float = 120.0, umask: int = -1
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "sdrpc_build.cli.launch", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "SDRPC_CACHE_DIR": str(self.cache)},
            umask=umask,
        )
        self.track()
        return proc

    def detach(self, *args: str, umask: int = -1) -> subprocess.CompletedProcess[str]:
        return self.run(*args, "--log-dir", str(self.logs), "--detach", "--json", umask=umask)

    def state_file(self, instance: str = "default") -> Path:
        return self.cache / "run" / f"{instance}.json"

    def state(self, instance: str = "default") -> dict[str, Any]:
        return dict(json.loads(self.state_file(instance).read_text()))

    def track(self) -> None:
        """Remember every process a state file names (to end it at teardown)."""
        for f in (self.cache / "run").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                obj = json.loads(f.read_text())
                for p in [obj["supervisor"]] + [s["process"] for s in obj["servers"]]:
                    if p:
                        ident = ProcessIdentity(p["pid"], p["start"], p["method"])
                        self.known.setdefault(ident.pid, ident)

    def cleanup(self) -> None:
        self.track()
        for ident in self.known.values():
            signal_verified(TABLE, ident, signal.SIGKILL)
        for pid in pids_with_arg(str(self.tmp)):
            signal_verified(TABLE, TABLE.identify(pid), signal.SIGKILL)
        wait_until(lambda: not any(TABLE.verify(i) in LIVE for i in self.known.values()), 10)


@pytest.fixture
def sdrpc(tmp_path: Path) -> Iterator[Sdrpc]:
    s = Sdrpc(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="module")
def binary(server_binary: Callable[[str, int], Path]) -> Path:
    return server_binary("0.3.35", 160)


def two_servers(tmp: Path, binary: Path) -> tuple[Path, list[int]]:
    ports = [free_port(), free_port()]
    cfg = tmp / "servers.toml"
    cfg.write_text(
        "".join(
            f'[[server]]\nname = "s{i}"\nbinary = "{binary}"\nport = {p}\nthreads = 1\n\n'
            for i, p in enumerate(ports)
        )
    )
    return cfg, ports


def test_detach_status_busy_idle_stop(sdrpc: Sdrpc, binary: Path, tmp_path: Path) -> None:
    cfg, ports = two_servers(tmp_path, binary)
    res = sdrpc.detach("--config", str(cfg))
    assert res.returncode == 0, res.stderr
    started = json.loads(res.stdout)  # one object
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    assert started["ok"] is True
    assert started["rpc_servers"] == ",".join(endpoints)
    assert [(d["name"], d["endpoint"], d["device"]) for d in started["device_map"]] == [
        ("RPC0", endpoints[0], "CPU"),
        ("RPC1", endpoints[1], "CPU"),
    ]
    sup_pid = started["supervisor_pid"]
    server_pids = [s["pid"] for s in started["servers"]]
    assert all(alive(p) for p in [sup_pid, *server_pids])
    assert os.getsid(sup_pid) == sup_pid  # its own session
    assert sdrpc.state()["supervisor"]["pid"] == sup_pid

    res = sdrpc.run("status", "--json")
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["running"] is True and status["phase"] == "running"
    assert status["device_map"] == started["device_map"]
    assert [(s["name"], s["state"], s["pid"], s["activity"]) for s in status["servers"]] == [
        ("s0", "running", server_pids[0], "idle"),
        ("s1", "running", server_pids[1], "idle"),
    ]

    def activity_of_s0() -> str:
        out = sdrpc.run("status", "--json").stdout
        return str(json.loads(out)["servers"][0]["activity"])

    # a client connects: busy (read from the server's log, the port is never probed)
    with socket.create_connection(("127.0.0.1", ports[0]), timeout=5):
        assert wait_until(lambda: activity_of_s0() == "busy")
        human = sdrpc.run("status")
        assert human.returncode == 0
        assert "busy" in human.stdout and "RPC1" in human.stdout
    assert wait_until(lambda: activity_of_s0() == "idle")

    again = sdrpc.detach("--config", str(cfg))
    assert again.returncode == 28
    assert "already running" in again.stderr

    res = sdrpc.run("stop")
    assert res.returncode == 0, res.stderr
    assert "stopped" in res.stdout
    assert not any(alive(p) for p in [sup_pid, *server_pids])
    assert not any(port_bound(p) for p in ports)
    assert not sdrpc.state_file().exists()
    res = sdrpc.run("status")
    assert res.returncode == 27
    assert "not running" in res.stderr


def test_instances_run_side_by_side(sdrpc: Sdrpc, binary: Path) -> None:
    res_a = sdrpc.detach("--binary", str(binary), "-p", "0", "--instance", "a")
    res_b = sdrpc.detach("--binary", str(binary), "-p", "0", "--instance", "b")
    assert (res_a.returncode, res_b.returncode) == (0, 0), res_a.stderr + res_b.stderr
    a, b = json.loads(res_a.stdout), json.loads(res_b.stdout)
    assert sdrpc.run("status", "--instance", "a").returncode == 0
    assert sdrpc.run("status").returncode == 27  # "default" was never started
    res = sdrpc.run("stop", "--instance", "a")
    assert res.returncode == 0, res.stderr
    assert not alive(a["supervisor_pid"])
    assert alive(b["supervisor_pid"])
    assert sdrpc.run("stop", "--instance", "b").returncode == 0
    assert not alive(b["supervisor_pid"])
    assert not any(alive(s["pid"]) for s in a["servers"] + b["servers"])


def test_state_and_logs_are_private_with_umask_000(sdrpc: Sdrpc, binary: Path) -> None:
    res = sdrpc.detach("--binary", str(binary), "-p", "0", "--name", "s0", umask=0)
    assert res.returncode == 0, res.stderr
    run = sdrpc.cache / "run"
    paths = [sdrpc.cache, run, *run.iterdir(), sdrpc.logs, *sdrpc.logs.iterdir()]
    modes = {p.relative_to(sdrpc.tmp).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes == {
        "cache": 0o700,
        "cache/run": 0o700,
        "cache/run/default.json": 0o600,
        "cache/run/default.lock": 0o600,
        "logs": 0o700,
        "logs/s0.log": 0o600,
        "logs/sdrpc-launch-default.log": 0o600,
    }
    assert sdrpc.run("status").returncode == 0  # its own files are trusted
    assert sdrpc.run("stop").returncode == 0


def test_killed_supervisor_leaves_a_stale_file_that_stop_cleans(sdrpc: Sdrpc, binary: Path) -> None:
    res = sdrpc.detach("--binary", str(binary), "-p", "0")
    assert res.returncode == 0, res.stderr
    started = json.loads(res.stdout)
    sup = sdrpc.known[started["supervisor_pid"]]
    server_pid = started["servers"][0]["pid"]
    port = int(started["rpc_servers"].rsplit(":", 1)[1])
    assert signal_verified(TABLE, sup, signal.SIGKILL) == "alive"
    assert wait_until(lambda: not alive(server_pid))  # parent-death signal
    res = sdrpc.run("status")
    assert res.returncode == 27
    assert "its supervisor is gone" in res.stderr
    res = sdrpc.run("stop")
    assert res.returncode == 27
    assert "removed its stale state file" in res.stderr
    assert not sdrpc.state_file().exists()
    assert not port_bound(port)


def test_stale_file_with_a_reused_pid_is_never_signalled(sdrpc: Sdrpc, binary: Path) -> None:
    """The recorded PID now belongs to an unrelated process: status/stop must leave it alone."""
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        res = sdrpc.detach("--binary", str(binary), "-p", "0")
        assert res.returncode == 0, res.stderr
        assert sdrpc.run("stop").returncode == 0
        # forge what a crash + PID reuse would leave: the old file, the stranger's PID
        sdrpc.state_file().write_text(json.dumps(forged_state(sdrpc, stranger.pid)))
        res = sdrpc.run("status")
        assert res.returncode == 27
        assert "its PID now names another process" in res.stderr
        res = sdrpc.run("stop", "--timeout", "1")
        assert res.returncode == 27
        assert "removed its stale state file" in res.stderr
        assert not sdrpc.state_file().exists()
        time.sleep(0.3)
        assert stranger.poll() is None  # never signalled

        # a dead PID in a stale file does not block a new --detach
        done = subprocess.Popen(["true"])
        done.wait(timeout=10)
        sdrpc.state_file().write_text(json.dumps(forged_state(sdrpc, done.pid)))
        res = sdrpc.detach("--binary", str(binary), "-p", "0")
        assert res.returncode == 0, res.stderr
        assert "removed a stale state file" in res.stderr
        assert sdrpc.run("stop").returncode == 0
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


def forged_state(sdrpc: Sdrpc, pid: int) -> dict[str, Any]:
    """A state file naming ``pid`` with a start time that is not its own."""
    fake = {"pid": pid, "start": "1@not-this-boot", "method": TABLE.method}
    return {
        "format": 1,
        "instance": "default",
        "phase": "running",
        "supervisor": fake,
        "started_at": time.time() - 100,
        "log_dir": str(sdrpc.logs),
        "supervisor_log": str(sdrpc.logs / "sdrpc-launch-default.log"),
        "stop_timeout": 1.0,
        "rpc_servers": "127.0.0.1:1",
        "devices": [],
        "servers": [
            {
                "name": "s0",
                "endpoint": "127.0.0.1:1",
                "log": str(sdrpc.logs / "s0.log"),
                "phase": "ready",
                "process": fake,
                "ready_at": time.time() - 90,
                "log_offset": 0,
                "restarts": 0,
            }
        ],
    }


def test_port_in_use_fails_and_leaves_nothing(sdrpc: Sdrpc, binary: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = sdrpc.detach("--binary", str(binary), "-p", str(port))
    assert res.returncode == 22
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in res.stderr
    failed = json.loads(res.stdout)
    assert failed["ok"] is False and failed["exit_code"] == 22
    assert not alive(failed["supervisor_pid"])
    assert not sdrpc.state_file().exists()
    assert pids_with_arg(str(sdrpc.tmp)) == []


@pytest.mark.parametrize("delay", [0, 2])
def test_one_bad_server_tears_the_whole_start_down(
    sdrpc: Sdrpc, binary: Path, tmp_path: Path, delay: int
) -> None:
    """delay 2: the good server is READY before the bad one fails (its FATAL then completes
    an "all ready" of the servers left, which must not reach the waiting --detach)."""
    wrapper = tmp_path / "bad-server"
    wrapper.write_text(f'#!/bin/sh\nsleep {delay}\nexec "{binary}" --bogus-flag "$@"\n')
    wrapper.chmod(0o755)
    good, bad = free_port(), free_port()
    cfg = tmp_path / "mixed.toml"
    cfg.write_text(
        f'[[server]]\nname = "good"\nbinary = "{binary}"\nport = {good}\n\n'
        f'[[server]]\nname = "bad"\nbinary = "{wrapper}"\nport = {bad}\n'
    )
    res = sdrpc.detach("--config", str(cfg))
    assert res.returncode == 20
    assert "bad ended before it was ready" in res.stderr
    assert "| error: unknown argument: --bogus-flag" in res.stderr  # the server's own lines
    failed = json.loads(res.stdout)
    assert not alive(failed["supervisor_pid"])
    assert not sdrpc.state_file().exists()
    assert wait_until(lambda: pids_with_arg(f"{good}\0") == [], 5)
    assert not port_bound(good)
    log = (sdrpc.logs / "sdrpc-launch-default.log").read_text()
    assert '"event": "fatal", "server": "bad"' in log  # --json: the log holds JSON events too
    assert "sdrpc-launch: error: bad ended before it was ready" in log


def test_a_flooding_server_fails_a_detached_start_with_a_short_tail(
    sdrpc: Sdrpc, tmp_path: Path
) -> None:
    flood = tmp_path / "flood-server"
    fake = ROOT / "tests" / "fakes" / "flood_server.py"
    flood.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" --size 8M --progress 0 "$@"\n')
    flood.chmod(0o755)
    res = sdrpc.detach("--binary", str(flood), "-p", "0")
    assert res.returncode == 20
    assert "ended before it was ready" in res.stderr
    assert "more characters" in res.stderr  # its 4 KiB pieces, shortened
    assert len(res.stdout) + len(res.stderr) < 10_000  # not the 8 MB line
    assert not sdrpc.state_file().exists()
