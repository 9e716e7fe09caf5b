"""SSH tunnels to real hosts (the lab): real sshd, real systemd units, real rpc-servers.

Each host runs a real CPU rpc-server (built by sdrpc-build from the 0.3.35 sdist, GGML_MAX_NAME
160) as an enabled systemd unit bound to the host's 127.0.0.1; the client reaches it only through
``open_tunnels``. Needs root and systemd-nspawn (``.ci/lab-setup``); skipped without them.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab import Lab, lab_unavailable_reason
from procs import alive, port_bound

from sdrpc_build.errors import PortInUseError
from sdrpc_build.fleet.tunnels import (
    HostStatus,
    TunnelSpec,
    TunnelState,
    close_tunnels,
    open_tunnels,
    rpc_servers,
    tunnel_file,
    tunnel_status,
)
from sdrpc_build.launch.control import stop_named
from sdrpc_build.launch.identity import system_table
from sdrpc_build.launch.instance import state_path
from sdrpc_build.paths import run_dir
from sdrpc_build.protocol.probe import probe

_REASON = lab_unavailable_reason()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

INSTANCE = "fleet-test"
REMOTE_PORT = 50052
SERVER = "/opt/sdrpc-test/rpc-server"
UNIT_NAME = "sdrpc-test-rpc.service"
# stdbuf: rpc-server's client lines reach the journal as they are printed
UNIT = f"""\
[Unit]
Description=sdrpc tunnel test server

[Service]
ExecStart=/usr/bin/stdbuf -oL {SERVER} -H 127.0.0.1 -p {REMOTE_PORT}
Restart=on-failure
RestartSec=100ms

[Install]
WantedBy=multi-user.target
"""
DROP_S = 10.0  # ssh notices a dead link after ServerAliveInterval 1 x CountMax 3 (~3-4 s)
BACK_S = 30.0  # a reconnect: the attempt in flight (ConnectTimeout 5) + backoff (<= 5 s)


def install_server(lab: Lab, host: str, binary: Path) -> None:
    """The server binary into the host's /opt (the client's /root is not visible in hosts),
    an enabled unit that survives the ssh session and reboots."""
    copy = f"mkdir -p {Path(SERVER).parent} && cat > {SERVER}.tmp && chmod 755 {SERVER}.tmp"
    subprocess.run(
        lab.ssh_argv(host, f"{copy} && mv {SERVER}.tmp {SERVER}"),
        input=binary.read_bytes(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    lab.ssh(host, f"cat > /etc/systemd/system/{UNIT_NAME}", input=UNIT, check=True)
    lab.ssh(host, f"systemctl daemon-reload && systemctl enable --now {UNIT_NAME}", check=True)


@dataclass
class Fleet:
    lab: Lab
    cache: Path

    def specs(self, hosts: list[str] | None = None) -> list[TunnelSpec]:
        return [
            TunnelSpec(h, h, (REMOTE_PORT,), config=self.lab.ssh_config_path)
            for h in hosts or self.lab.hosts
        ]

    def open(self, hosts: list[str] | None = None) -> TunnelState:
        return open_tunnels(
            self.specs(hosts), cache_root=self.cache, instance=INSTANCE, env=os.environ
        )

    def status(self) -> dict[str, HostStatus]:
        return {h.host: h for h in tunnel_status(INSTANCE, self.cache).hosts}

    def wait(
        self, pred: Callable[[dict[str, HostStatus]], bool], timeout: float, what: str
    ) -> float:
        t0 = time.monotonic()
        while not pred(self.status()):
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{what}: not within {timeout} s: {self.status()}")
            time.sleep(0.05)
        return time.monotonic() - t0


@pytest.fixture
def fleet(
    lab_factory: Callable[..., Lab],
    server_binary: Callable[[str, int], Path],
    tmp_path: Path,
) -> Iterator[Fleet]:
    """Three hosts, each with a real server on its 127.0.0.1:50052; the tunnels are closed at
    the end whatever happened (before the lab goes)."""
    binary = server_binary("0.3.35", 160)
    lab = lab_factory(3)
    for h in lab.hosts:
        install_server(lab, h, binary)
    f = Fleet(lab, tmp_path / "cache")
    try:
        yield f
    finally:
        close_tunnels(INSTANCE, f.cache)


def hello(endpoint: str) -> str:
    host, port = endpoint.rsplit(":", 1)
    return probe(host, int(port), timeout=3.0, detect_max_name=False).status


def accepted(lab: Lab, host: str) -> int:
    """How many connections the host's server has accepted (its journal)."""
    cp = lab.ssh(host, f"journalctl -q -o cat -u {UNIT_NAME} --no-pager", check=True)
    return cp.stdout.count("Accepted client connection")


def sdrpc_check(servers: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sdrpc_build.cli.check", "--expect-proto", "5.0.0"]
    argv += ["--expect-max-name", "160", "--json", servers]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_tunnels_reach_every_host_and_close_leaves_nothing(fleet: Fleet) -> None:
    t0 = time.monotonic()
    state = fleet.open()
    opened_s = time.monotonic() - t0
    assert state.failed == () and not state.reused
    servers = rpc_servers(state)
    ports = [int(ep.rsplit(":", 1)[1]) for ep in servers.split(",")]
    assert servers == ",".join(f"127.0.0.1:{p}" for p in ports) and len(set(ports)) == 3
    assert [t.spec.host for t in state.tunnels] == ["lab1", "lab2", "lab3"]  # fleet order

    # sdrpc-check through every tunnel: compatible with a 5.0.0 / 160 client
    check = sdrpc_check(servers)
    assert check.returncode == 0, check.stdout + check.stderr
    assert len(json.loads(check.stdout)["servers"]) == 3

    status = fleet.status()
    assert [h.phase for h in status.values()] == ["up", "up", "up"]
    pids = {h: s.pid for h, s in status.items()}
    assert all(pid is not None and alive(pid) for pid in pids.values())
    path = tunnel_file(fleet.cache, INSTANCE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    # ready was a HELLO through each tunnel, once: nothing probes a ready server's port
    before = {h: accepted(fleet.lab, h) for h in fleet.lab.hosts}
    assert all(n >= 2 for n in before.values())  # the readiness HELLO and sdrpc-check: seen
    time.sleep(3.0)
    assert {h: accepted(fleet.lab, h) for h in fleet.lab.hosts} == before

    # a second open changes nothing: same processes, same ports
    again = fleet.open()
    assert again.reused and rpc_servers(again) == servers
    assert {h: s.pid for h, s in fleet.status().items()} == pids
    print(f"\nopen of 3 tunnels: {opened_s:.2f} s")

    # other tunnels: the instance is replaced, the ports of unchanged servers stay
    fewer = fleet.open(["lab3", "lab1"])
    assert not fewer.reused
    assert rpc_servers(fewer) == f"127.0.0.1:{ports[2]},127.0.0.1:{ports[0]}"
    assert not any(alive(pid) for pid in pids.values() if pid is not None)
    assert [hello(ep) for ep in rpc_servers(fewer).split(",")] == ["ok", "ok"]

    pids = {h: s.pid for h, s in fleet.status().items()}
    supervisor = tunnel_status(INSTANCE, fleet.cache).supervisor_pid
    assert close_tunnels(INSTANCE, fleet.cache) is True
    assert supervisor is not None and not alive(supervisor)
    assert not any(alive(pid) for pid in pids.values() if pid is not None)
    assert not path.exists() and not path.with_suffix(".lock").exists()
    assert not state_path(run_dir(fleet.cache), INSTANCE).exists()
    assert not (run_dir(fleet.cache) / f"{INSTANCE}.lock").exists()
    assert not any(port_bound(p) for p in ports)
    assert tunnel_status(INSTANCE, fleet.cache).hosts == ()
    assert close_tunnels(INSTANCE, fleet.cache) is False


def test_a_dropped_link_backs_off_alone_and_comes_back_on_its_port(fleet: Fleet) -> None:
    state = fleet.open()
    servers = rpc_servers(state)
    endpoints = dict(zip(fleet.lab.hosts, servers.split(","), strict=True))
    pid = fleet.status()["lab2"].pid
    assert pid is not None

    fleet.lab.link_down("lab2")
    t0 = time.monotonic()
    while alive(pid):
        assert time.monotonic() - t0 < DROP_S, "ssh did not notice the dead link"
        time.sleep(0.05)
    print(f"\nssh exited {time.monotonic() - t0:.2f} s after the link went down")
    # it keeps trying (a failed connect, still not FATAL) while the others keep serving
    fleet.wait(lambda s: "port 22" in (s["lab2"].last_line or ""), BACK_S, "a failed reconnect")
    assert fleet.status()["lab2"].phase == "reconnecting"
    assert tunnel_status(INSTANCE, fleet.cache).running
    assert hello(endpoints["lab1"]) == "ok" and hello(endpoints["lab3"]) == "ok"

    fleet.lab.link_up("lab2")
    took = fleet.wait(lambda s: s["lab2"].phase == "up", BACK_S, "reconnect after link up")
    print(f"tunnel up again {took:.2f} s after the link came back")
    again = fleet.status()["lab2"]
    assert again.pid != pid and again.restarts >= 1
    assert rpc_servers(fleet.open()) == servers  # the same ports
    check = sdrpc_check(servers)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_rebooted_host_reconnects_on_the_same_port(fleet: Fleet) -> None:
    state = fleet.open()
    servers = rpc_servers(state)
    pid = fleet.status()["lab1"].pid
    took = fleet.lab.reboot("lab1")
    fleet.wait(lambda s: s["lab1"].pid not in (None, pid), BACK_S, "reconnect after reboot")
    assert pid is not None and not alive(pid)
    print(f"\nhost rebooted in {took:.2f} s; tunnel up again")
    assert rpc_servers(fleet.open()) == servers
    assert hello(servers.split(",")[0]) == "ok"  # its unit came back, reached through the tunnel


def test_a_host_down_at_open_does_not_hold_up_the_others(fleet: Fleet) -> None:
    fleet.lab.link_down("lab3")
    t0 = time.monotonic()
    state = fleet.open()
    took = time.monotonic() - t0
    assert state.failed == ("lab3",)
    endpoints = rpc_servers(state).split(",")
    assert [hello(ep) for ep in endpoints[:2]] == ["ok", "ok"]
    status = fleet.status()
    assert [status[h].phase for h in ("lab1", "lab2")] == ["up", "up"]
    assert status["lab3"].phase in ("starting", "reconnecting")
    print(f"\nopen with one host down returned in {took:.2f} s")

    fleet.lab.link_up("lab3")
    fleet.wait(lambda s: s["lab3"].phase == "up", BACK_S, "the late host")
    assert hello(endpoints[2]) == "ok"  # on the port chosen at open


def test_a_port_held_by_another_program_is_reported_not_taken(fleet: Fleet) -> None:
    """The supervisor is gone (e.g. this machine rebooted), the tunnel file keeps the ports:
    a program that took one meanwhile is named, nothing is started."""
    state = fleet.open(["lab1"])
    port = state.tunnels[0].forwards[0].local
    stop_named(run_dir(fleet.cache), INSTANCE, system_table(), None)
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        with pytest.raises(PortInUseError) as info:
            fleet.open(["lab1"])
        assert info.value.exit_code == 22
        assert f"port {port}" in info.value.message and f"pid {os.getpid()}" in info.value.message
        assert not tunnel_status(INSTANCE, fleet.cache).running
    again = fleet.open(["lab1"])  # freed: the same port again
    assert rpc_servers(again) == f"127.0.0.1:{port}" and hello(f"127.0.0.1:{port}") == "ok"
