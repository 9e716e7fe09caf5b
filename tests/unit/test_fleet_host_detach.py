"""The host side of a host without systemd (files/sdrpc_host.py): the detached instance's
processes are sdrpc's own listeners, anyone else's are refused; its pins are judged."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from unit.test_fleet_host import host_module

from sdrpc_build.fleet.model import parse_fleet
from sdrpc_build.fleet.servers_toml import render_servers_toml
from sdrpc_build.fleet.units import ServerUnit

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"
BOOT = "0c5e9f3e-boot"
PORT = 50052


def fake_proc(tmp: Path, procs: dict[int, tuple[str, int]], listener: int) -> Path:
    """A /proc with ``procs`` (pid -> (comm, start ticks)); ``listener`` holds port 50052."""
    proc = tmp / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "sys/kernel/random").mkdir(parents=True)
    (proc / "sys/kernel/random/boot_id").write_text(BOOT + "\n")
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
    row = f"   0: 0100007F:{PORT:04X} 00000000:0000 0A 0:0 00:0 0 0 0 4242 1"
    (proc / "net/tcp").write_text(f"{header}\n{row}\n")
    (proc / "net/tcp6").write_text(header + "\n")
    for pid, (comm, start) in procs.items():
        d = proc / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "comm").write_text(comm + "\n")
        (d / "cgroup").write_text("0::/\n")  # no systemd: no unit cgroup
        rest = ["S", *["0"] * 18, str(start), *["0"] * 5]
        (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest) + "\n")
        if pid == listener:
            os.symlink("socket:[4242]", d / "fd" / "3")
    return proc


def launch_state(
    root: Path, servers: list[tuple[str, int, int, str]], sup: tuple[int, int]
) -> None:
    """The instance's state file as sdrpc-launch writes it (the fields the host side reads)."""
    run = root / "launch" / "run"
    run.mkdir(parents=True)

    def ident(pid: int, start: int) -> dict[str, object]:
        return {"pid": pid, "start": f"{start}@{BOOT}", "method": "proc"}

    doc = {
        "supervisor": ident(*sup),
        "servers": [
            {"name": n, "process": ident(pid, start), "phase": phase}
            for n, pid, start, phase in servers
        ],
    }
    (run / "sdrpc-fleet.json").write_text(json.dumps(doc))


def test_the_instances_listener_is_ours_anyone_elses_is_foreign(tmp_path: Path) -> None:
    h = host_module()
    root = tmp_path / "opt"
    proc = fake_proc(tmp_path, {10: ("python3", 500), 11: ("ggml-rpc-server", 600)}, 11)
    launch_state(root, [("cpu-50052", 11, 600, "ready")], (10, 500))
    inst = h.instance(root, proc)
    assert inst == {"pids": [10, 11], "running": True, "healthy": True}
    assert h.foreign_listeners([PORT], proc, ours=inst["pids"]) == []
    # without the instance (or for any other process on the port): refused, named
    assert h.foreign_listeners([PORT], proc) == [(PORT, 11, "ggml-rpc-server")]


def test_a_reused_pid_is_not_the_instances(tmp_path: Path) -> None:
    h = host_module()
    root = tmp_path / "opt"
    # pid 11 now names another process (another start time): not ours, and refused
    proc = fake_proc(tmp_path, {10: ("python3", 500), 11: ("http.server", 999)}, 11)
    launch_state(root, [("cpu-50052", 11, 600, "ready")], (10, 500))
    inst = h.instance(root, proc)
    assert inst["pids"] == [10]
    assert h.foreign_listeners([PORT], proc, ours=inst["pids"]) == [(PORT, 11, "http.server")]


def test_a_dead_supervisor_or_a_server_given_up_is_not_healthy(tmp_path: Path) -> None:
    h = host_module()
    a, b = tmp_path / "a", tmp_path / "b"
    proc = fake_proc(tmp_path, {11: ("ggml-rpc-server", 600)}, 11)
    launch_state(a, [("cpu-50052", 11, 600, "ready")], (10, 500))  # supervisor 10 is gone
    assert h.instance(a, proc) == {"pids": [11], "running": False, "healthy": False}
    procs = {10: ("python3", 500), 11: ("ggml-rpc-server", 600)}
    proc = fake_proc(tmp_path / "2", procs, 11)
    launch_state(b, [("cpu-50052", 11, 600, "ready"), ("cpu-50053", 12, 1, "fatal")], (10, 500))
    assert h.instance(b, proc)["healthy"] is False
    assert h.instance(tmp_path / "none", proc) == {"pids": [], "running": False, "healthy": False}


def test_pin_mismatch_of_a_detached_server_names_it_and_both_pins(tmp_path: Path) -> None:
    h = host_module()
    root = tmp_path / "opt"
    key = "cpu-4df29be4f4-n128-x"
    (root / "servers" / key).mkdir(parents=True)
    (root / "servers" / key / "manifest.json").write_text(
        json.dumps({"commit": SHA, "max_name": 128})
    )
    f = parse_fleet(
        {
            "client": {"llama-commit": SHA, "max-name": 160},
            "host": [{"name": "h", "ssh": "h", "server": [{}, {"port": 50060}]}],
        },
        Path("/f/fleet.toml"),
    )
    binary = PurePosixPath(root / "servers" / key / "bin" / "ggml-rpc-server")
    units = [ServerUnit(s, binary, "127.0.0.1", "cpu") for s in f.hosts[0].servers]
    (root / "servers.toml").write_text(render_servers_toml(units, PurePosixPath("/c")))
    no_units = tmp_path / "no-units"
    assert h.pin_mismatches(root, [(SHA, 128)], no_units) == []
    got = h.pin_mismatches(root, [(SHA, 160)], no_units)
    assert [g.split(" runs ")[0] for g in got] == ["cpu-50052", "cpu-50060"]
    assert all("GGML_MAX_NAME 128, the client needs llama.cpp " in g for g in got)
