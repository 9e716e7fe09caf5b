"""Fleet pieces checked against real tools of this machine (no lab): systemd-analyze, the CLI,
and a fleet of one (``ssh = "local"``) run by launch/'s detach machinery with real servers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest
from procs import alive, free_port, port_bound
from servers import LLAMA_SDISTS

from sdrpc_build.cli.launch_wiring import BUILDS
from sdrpc_build.fleet.local import instance_dir
from sdrpc_build.fleet.model import load_fleet, parse_fleet
from sdrpc_build.fleet.ops import local_instance
from sdrpc_build.fleet.units import ServerUnit, render_unit
from sdrpc_build.launch.match import usable

pytestmark = pytest.mark.integration

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"


def servers(*tables: dict[str, object]) -> list[ServerUnit]:
    f = parse_fleet(
        {
            "client": {"llama-commit": SHA, "max-name": 160},
            "host": [{"name": "h", "ssh": "h", "server": list(tables)}],
        },
        Path("/f/fleet.toml"),
    )
    return [ServerUnit(s, PurePosixPath("/x"), "127.0.0.1", "cpu") for s in f.hosts[0].servers]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    binary = tmp_path / "ggml-rpc-server"
    binary.write_text("#!/bin/sh\n", encoding="utf-8")
    binary.chmod(0o755)
    for i, u in enumerate(
        servers({"threads": 2, "cache": True, "env": {"GGML_RPC_DEBUG": "1 2%$"}}, {"port": 50099})
    ):
        unit = ServerUnit(u.server, PurePosixPath(binary), "10.0.0.1", "cpu, llama.cpp x")
        path = tmp_path / unit.name
        path.write_text(render_unit(unit), encoding="utf-8")
        r = subprocess.run(
            ["systemd-analyze", "verify", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (i, r.returncode, r.stdout, r.stderr) == (i, 0, "", "")


def test_cli_bad_fleet_is_one_line_and_exit_40(tmp_path: Path) -> None:
    p = tmp_path / "fleet.toml"
    p.write_text('[client]\nsd-cpp = "x"\ntransprt = "lan"\n', encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "sdrpc_build.cli.main", "up", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 40
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("sdrpc up: error: [client]: unknown key 'transprt'")
    assert lines[1].startswith("sdrpc up: hint: ")
    assert len(lines) == 2


VERSION = "0.3.35"
COMMIT = LLAMA_SDISTS[VERSION][0]


@pytest.fixture
def store(tmp_path: Path, server_binary: Callable[[str, int], Path]) -> Path:
    """A cache of our own holding two real builds of one llama.cpp commit: GGML_MAX_NAME 160
    (the test store's) and 64, a copy made the *newest* build, so that "the newest build of
    the backend" (what sdrpc-launch --backend picks without pins) is the wrong one."""
    root = tmp_path / "cache"
    arts = root / "artifacts"
    arts.mkdir(parents=True)
    e160 = server_binary(VERSION, 160).parent.parent
    e64 = server_binary(VERSION, 64).parent.parent
    (arts / e160.name).symlink_to(e160)
    shutil.copytree(e64, arts / e64.name, ignore=shutil.ignore_patterns("build.log"))
    man = arts / e64.name / "manifest.json"
    doc = json.loads(man.read_text())
    doc["created"] = "2999-01-01T00:00:00Z"
    man.write_text(json.dumps(doc))
    newest = usable(BUILDS.available(arts), "cpu", BUILDS.platform())[0]
    assert newest.max_name == 64 and newest.key == e64.name  # the trap is set
    return root


def sdrpc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdrpc_build.cli.main", *args, "--cache-dir", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def check(max_name: int, endpoints: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdrpc_build.cli.check", "--expect-max-name", str(max_name),
         "--json", *endpoints],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def write_fleet(path: Path, ports: tuple[int, int], max_name: int) -> Path:
    path.write_text(
        "[client]\n"
        f'llama-commit = "{COMMIT}"\n'
        f"max-name = {max_name}\n"
        f'llama-sdist = "llama-cpp-python=={VERSION}"\n'
        "[[host]]\n"
        'name = "here"\n'
        'ssh = "local"\n'
        "  [[host.server]]\n"
        f"  port = {ports[0]}\n"
        "  threads = 1\n"
        "  [[host.server]]\n"
        f"  port = {ports[1]}\n"
        "  threads = 2\n"
        "  cache = true\n",
        encoding="utf-8",
    )
    return path


def server_pids(root: Path, instance: str) -> dict[str, int]:
    state = json.loads((root / "run" / f"{instance}.json").read_text())
    return {s["name"]: s["process"]["pid"] for s in state["servers"]}


@pytest.fixture
def fleet_of_one(store: Path, tmp_path: Path) -> Iterator[tuple[Path, tuple[int, int]]]:
    ports = (free_port(), free_port())
    toml = write_fleet(tmp_path / "fleet.toml", ports, 160)
    yield toml, ports
    sdrpc(store, "down", str(toml))  # whatever happened: nothing left running


def test_local_host_runs_the_pinned_builds_under_launch_no_root_no_systemd(
    store: Path, fleet_of_one: tuple[Path, tuple[int, int]]
) -> None:
    toml, ports = fleet_of_one
    instance = local_instance(load_fleet(toml))
    system_before = (
        Path("/opt/sdrpc").exists(),
        sorted(Path("/etc/systemd/system").glob("sdrpc-*")),
    )

    r = sdrpc(store, "up", str(toml), "--print-rpc-servers")
    assert r.returncode == 0, r.stdout + r.stderr
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    assert r.stdout == ",".join(endpoints) + "\n"
    assert "here             ok      changed=1" in r.stderr
    c = check(160, endpoints)
    assert c.returncode == 0, c.stdout + c.stderr
    assert [s["max_name"] for s in json.loads(c.stdout)["servers"]] == [160, 160]
    # the build made for the pins runs, from the store (not the newer 64 one, not a copy)
    pids = server_pids(store, instance)
    exes = {Path(f"/proc/{pid}/exe").resolve() for pid in pids.values()}
    assert len(exes) == 1 and "-n160-" in str(exes.pop())
    # no root, no Ansible, no systemd: nothing installed on the system
    assert (
        Path("/opt/sdrpc").exists(),
        sorted(Path("/etc/systemd/system").glob("sdrpc-*")),
    ) == system_before
    cfg = instance_dir(store, instance) / "servers.toml"
    assert cfg.stat().st_mode & 0o777 == 0o600

    # a second up changes nothing: same processes, nothing probed
    r2 = sdrpc(store, "up", str(toml), "--print-rpc-servers")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert r2.stdout == ",".join(endpoints) + "\n"
    assert "here             ok      changed=0" in r2.stderr
    assert server_pids(store, instance) == pids

    # status: the instance's servers, running, no restart, idle (from their logs)
    st = sdrpc(store, "status", str(toml), "--json")
    assert st.returncode == 0, st.stdout + st.stderr
    rows = json.loads(st.stdout)["servers"]
    assert [(x["host"], x["unit"], x["active"], x["sub"], x["restarts"], x["activity"])
            for x in rows] == [
        ("here", f"sdrpc-launch:cpu-{ports[0]}", "active", "running", 0, "idle"),
        ("here", f"sdrpc-launch:cpu-{ports[1]}", "active", "running", 0, "idle"),
    ]  # fmt: skip
    assert {x["pid"] for x in rows} == set(pids.values())

    # the client now needs GGML_MAX_NAME 64: the running 160 servers are refused, untouched
    write_fleet(toml, ports, 64)
    r3 = sdrpc(store, "up", str(toml), "--json")
    assert r3.returncode == 42, r3.stdout + r3.stderr
    (host,) = json.loads(r3.stdout)["hosts"]
    assert host["task"] == "sdrpc refused"
    assert (
        "max_name 160" in host["reason"]
        and "GGML_MAX_NAME 160, the client needs 64" in (host["reason"])
    )
    assert server_pids(store, instance) == pids and all(alive(p) for p in pids.values())
    # --replace: the 64 build (matching now) replaces them
    r4 = sdrpc(store, "up", str(toml), "--replace", "--print-rpc-servers")
    assert r4.returncode == 0, r4.stdout + r4.stderr
    assert check(64, endpoints).returncode == 0
    assert not any(alive(p) for p in pids.values())
    pids = server_pids(store, instance)

    d = sdrpc(store, "down", str(toml), "--json")
    assert d.returncode == 0, d.stdout + d.stderr
    assert json.loads(d.stdout)["hosts"][0]["ok"]
    left = server_pids_or_none(store, instance)
    assert left is None  # no state file
    assert not any(port_bound(p) for p in ports)
    assert not instance_dir(store, instance).exists()
    assert not (store / "logs" / instance).exists()
    assert [p.name for p in (store / "run").iterdir()] == []
    assert not any(alive(p) for p in pids.values())


def server_pids_or_none(root: Path, instance: str) -> dict[str, int] | None:
    try:
        return server_pids(root, instance)
    except FileNotFoundError:
        return None
