"""sdrpc up/status/down on a host without systemd: its servers run under sdrpc-launch --detach.

A lab of two real hosts (tests/lab.py): lab1 boots systemd, lab2 runs sshd under nspawn's stub
init (no ``/run/systemd/system``). Real ssh, real Ansible, real servers (the cached cpu build).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fleetkit import check, host_state, sdrpc
from integration.test_fleet import PORTS, fleet_toml
from lab import Lab, lab_unavailable_reason
from servers import build_server

_REASON = lab_unavailable_reason()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

LAUNCH_STATE = "/opt/sdrpc/launch/run/sdrpc-fleet.json"


@pytest.fixture(scope="module")
def server_built() -> Path:
    return build_server("0.3.35", 160, portable=True)  # what sdrpc up builds


def detached_pids(lab: Lab, host: str) -> dict[str, int]:
    """server name -> pid, from the host's sdrpc-launch state file."""
    state = json.loads(lab.exec(host, f"cat {LAUNCH_STATE}").stdout)
    return {s["name"]: s["process"]["pid"] for s in state["servers"] if s["process"]}


def rows(toml: Path) -> list[dict[str, object]]:
    s = sdrpc("status", str(toml), "--json")
    assert s.returncode == 0, s.stdout + s.stderr
    servers: list[dict[str, object]] = json.loads(s.stdout)["servers"]
    return servers


def test_host_without_systemd_runs_its_servers_under_sdrpc_launch(
    lab_factory: Callable[..., Lab], tmp_path: Path, server_built: Path
) -> None:
    lab = lab_factory(2, no_systemd=["lab2"])
    with_sd, without = lab.hosts
    assert lab.exec(without, "cat /proc/1/comm").stdout.strip() != "systemd"
    assert lab.exec(without, "test -e /run/systemd/system || echo none").stdout.strip() == "none"
    toml = fleet_toml(lab, lab.hosts, tmp_path / "fleet.toml", servers_per_host=2, transport="ssh")
    try:
        r = sdrpc("up", str(toml), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        res = json.loads(r.stdout)
        assert [(h["name"], h["ok"]) for h in res["hosts"]] == [(with_sd, True), (without, True)]
        endpoints = res["rpc_servers"].split(",")
        assert len(endpoints) == 4
        c = check(endpoints)  # through the tunnels, against the pins
        assert c.returncode == 0, c.stdout + c.stderr
        # lab2: no unit, the servers on its 127.0.0.1 under sdrpc-launch's supervisor
        assert lab.exec(without, "ls /etc/systemd/system | grep sdrpc; true").stdout == ""
        listening = lab.exec(without, "ss -Hltn").stdout
        assert all(f"127.0.0.1:{p}" in listening for p in PORTS), listening
        pids = detached_pids(lab, without)
        assert sorted(pids) == [f"cpu-{p}" for p in PORTS]
        supervisor = json.loads(lab.exec(without, f"cat {LAUNCH_STATE}").stdout)["supervisor"]
        for pid in pids.values():  # children of the supervisor
            ppid = lab.exec(without, f"ps -o ppid= -p {pid}").stdout.strip()
            assert ppid == str(supervisor["pid"])

        # a second up changes nothing on either host (its own listeners are not "foreign")
        t0 = time.monotonic()
        r2 = sdrpc("up", str(toml), "--print-rpc-servers")
        second = time.monotonic() - t0
        assert r2.returncode == 0, r2.stdout + r2.stderr
        assert r2.stdout == ",".join(endpoints) + "\n"
        report = [ln.split()[:3] for ln in r2.stderr.splitlines() if ln.startswith("lab")]
        assert report == [[with_sd, "ok", "changed=0"], [without, "ok", "changed=0"]]
        assert detached_pids(lab, without) == pids

        # status: both hosts' servers, running, in systemd's words
        got = [(x["host"], x["unit"], x["active"], x["sub"], x["restarts"]) for x in rows(toml)]
        assert got == [
            (with_sd, f"sdrpc-server-cpu-{PORTS[0]}.service", "active", "running", 0),
            (with_sd, f"sdrpc-server-cpu-{PORTS[1]}.service", "active", "running", 0),
            (without, f"sdrpc-launch:cpu-{PORTS[0]}", "active", "running", 0),
            (without, f"sdrpc-launch:cpu-{PORTS[1]}", "active", "running", 0),
        ]

        # kill -9 a server on lab2: sdrpc-launch restarts it; status shows it
        lab.exec(without, f"kill -9 {pids[f'cpu-{PORTS[0]}']}")
        deadline = time.monotonic() + 30
        while True:
            mine = [x for x in rows(toml) if x["unit"] == f"sdrpc-launch:cpu-{PORTS[0]}"]
            if mine[0]["restarts"] == 1 and mine[0]["active"] == "active":
                break
            assert time.monotonic() < deadline, mine
            time.sleep(0.5)
        assert check(endpoints).returncode == 0
        print(f"\nsecond up (1 systemd host + 1 without): {second:.1f} s")
    finally:
        d = sdrpc("down", str(toml), "--json")
    assert d.returncode == 0, d.stdout + d.stderr
    for h in lab.hosts:  # no unit, no server, no port, no /opt/sdrpc
        assert host_state(lab, h) == "", (h, host_state(lab, h))
    assert lab.exec(without, ["pgrep", "-af", "sdrpc|rpc-server"]).stdout == ""  # supervisor too
    assert lab.exec(without, "ls -d /var/cache/sdrpc /opt/sdrpc; true").stdout == ""
