"""sdrpc up as a user who is not root: Ansible's become (sudo) installs the units, and a host
where that user may not sudo fails alone with sudo's reason. Real ssh, sudo, systemd, servers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fleetkit import MAX_NAME, VERSION, check, client_lines, host_state, sdrpc
from lab import OPERATOR, Lab, lab_unavailable_reason
from servers import build_server

_REASON = lab_unavailable_reason()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

PORT = 50052
UNIT = f"sdrpc-server-cpu-{PORT}.service"


@pytest.fixture(scope="module")
def server_built() -> Path:
    return build_server(VERSION, MAX_NAME, portable=True)  # what sdrpc up builds


def fleet_toml(lab: Lab, path: Path) -> Path:
    lines = client_lines(lab, transport="ssh")
    for h in lab.hosts:
        lines += ["[[host]]", f'name = "{h}"', f'ssh = "{OPERATOR}@{h}"']
        lines += ["  [[host.server]]", f"  port = {PORT}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_up_as_an_operator_uses_sudo_and_a_host_without_it_fails_alone(
    lab_factory: Callable[..., Lab], tmp_path: Path, server_built: Path
) -> None:
    lab = lab_factory(2)
    ok, denied = lab.hosts
    lab.exec(denied, f"rm /etc/sudoers.d/{OPERATOR}")
    toml = fleet_toml(lab, tmp_path / "fleet.toml")
    try:
        r = sdrpc("up", str(toml), "--json")
        assert r.returncode == 42, r.stdout + r.stderr
        res = json.loads(r.stdout)
        by = {h["name"]: h for h in res["hosts"]}
        assert by[ok]["ok"], by[ok]
        assert not by[denied]["ok"]
        assert "sudo" in str(by[denied]["reason"]).lower(), by[denied]
        # the unit is root's (installed through sudo), the server runs as systemd's dynamic user
        assert lab.exec(ok, f"systemctl is-active {UNIT}").stdout.strip() == "active"
        assert lab.exec(ok, "stat -c %U /opt/sdrpc /etc/systemd/system/" + UNIT).stdout.split() == [
            "root",
            "root",
        ]
        pid = lab.exec(ok, f"systemctl show -P MainPID {UNIT}").stdout.strip()
        assert lab.exec(ok, f"stat -c %U /proc/{pid}").stdout.strip() not in ("root", OPERATOR)
        # reached through the tunnel, which ssh opened as the operator
        (ep,) = by[ok]["endpoints"]
        c = check([ep])
        assert c.returncode == 0, c.stdout + c.stderr
        assert host_state(lab, denied) == ""  # nothing was installed there
    finally:
        lab.exec(denied, f"echo '{OPERATOR} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{OPERATOR}")
        d = sdrpc("down", str(toml), "--json")
    assert d.returncode == 0, d.stdout + d.stderr
    for h in lab.hosts:
        assert host_state(lab, h) == "", h
