"""sdrpc up/status/down on a lab of real hosts: real ssh, real systemd, real servers.

Needs root and systemd-nspawn (``.ci/lab-setup``) and the ``sdrpc[fleet]`` extra; the servers
are the cached real cpu build of tests/servers.py (build-on = "client": pins cache hits).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

import pytest
import vulkan
from fleetkit import MAX_NAME, VERSION, check, client_lines, host_state, sdrpc
from lab import Lab, lab_unavailable_reason
from servers import LLAMA_SDISTS, build_server, sdrpc_cache

from sdrpc_build.fleet.model import load_fleet
from sdrpc_build.fleet.ops import tunnel_instance
from sdrpc_build.fleet.tunnels import HostStatus, tunnel_file, tunnel_status

_REASON = lab_unavailable_reason()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

PORTS = (50052, 50053)


# a Vulkan server on a lab host: lavapipe through the system's ICD (one device, Vulkan0; ggml
# skips CPU-type devices unless GGML_VK_VISIBLE_DEVICES names them)
LAVAPIPE = (
    '{ VK_ICD_FILENAMES = "/usr/share/vulkan/icd.d/lvp_icd.json", GGML_VK_VISIBLE_DEVICES = "0" }'
)


def fleet_toml(
    lab: Lab,
    hosts: list[str],
    path: Path,
    *,
    servers_per_host: int = 1,
    transport: str = "lan",
    with_vulkan: bool = False,
) -> Path:
    """One cpu server per host, or two with different options; ``with_vulkan``: the first host's
    second server is a Vulkan one (lavapipe), built here with the lab's Vulkan headers."""
    lines = client_lines(lab, transport=transport)
    if with_vulkan:
        lines += [f'vulkan-headers = "{vulkan.headers_include()}"']
    for n, h in enumerate(hosts):
        lines += ["[[host]]", f'name = "{h}"', f'ssh = "{h}"', f'address = "{lab.address(h)}"']
        for i in range(servers_per_host):
            lines += ["  [[host.server]]", f"  port = {PORTS[i]}"]
            if with_vulkan and n == 0 and i == 1:
                lines += ['  backend = "vulkan"', f"  env = {LAVAPIPE}"]
                continue
            # two cpu servers with different options
            lines += [f"  threads = {1 + i}"] + (["  cache = true"] if i else [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def units(hosts: list[str], with_vulkan: bool) -> dict[str, list[str]]:
    """Each host's units as fleet_toml(..., servers_per_host=2, with_vulkan=...) makes them."""

    def backend(n: int, p: int) -> str:
        return "vulkan" if with_vulkan and n == 0 and p == PORTS[1] else "cpu"

    return {
        h: [f"sdrpc-server-{backend(n, p)}-{p}.service" for p in PORTS] for n, h in enumerate(hosts)
    }


def ssh_left(lab: Lab, before: Collection[int] = ()) -> set[int]:
    """ssh processes that are masters (``-M`` / a ControlPath) for ``lab``'s hosts (its ssh
    config on their command line: other labs on the machine are not ours) or zombies, not in
    ``before``."""
    found = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in before:
            continue
        try:
            stat = (d / "stat").read_text()
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        master = b"-M" in argv or b"-oControlMaster=auto" in argv
        ours = str(lab.ssh_config_path).encode() in argv
        if comm == "ssh" and (state == "Z" or (master and ours)):
            found.add(int(d.name))
    return found


# llama.cpp's test-backend-ops cases (exact names), run on each RPC device and compared with
# the local CPU (tests/vulkan.py's rpc-ops: same sdist, same GGML_MAX_NAME as the fleet)
OPS = (
    "ADD(type=f32,ne=[10,5,4,3],nr=[2,2,2,2],nf=1,perm1=1,src_overlap=0)",
    "MUL_MAT(type_a=f32,type_b=f32,m=16,n=32,k=32,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=64,o=3)",
)


def ggml_client_computes_on_every_server(rpc_servers: str) -> None:
    """A real ggml client (llama.cpp's test-backend-ops, built from the sdist) given the
    whole ``--rpc-servers`` string computes on each server's device in turn."""
    client = vulkan.rpc_ops_client(VERSION, MAX_NAME)
    eps = rpc_servers.split(",")
    for i, ep in enumerate(eps):
        run = subprocess.run(
            [str(client), "--rpc", rpc_servers, "-b", f"RPC{i}", "-o", ",".join(OPS)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        out = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)
        assert run.returncode == 0, out
        assert f"{len(OPS)}/{len(OPS)} tests passed" in out, out
        # the cases ran on RPCi, the device of the server at ep (the others skipped)
        ran = out.split(f": RPC{i}\n", 1)[-1].split("Backend ", 1)[0]
        assert f"Device description: {ep}\n" in ran and "passed" in ran, out


def busy_idle_from_logs(lab: Lab, toml: Path) -> None:
    """status: busy while a client holds a server, idle after; from the logs, not the port."""
    hosts = lab.hosts

    def activity() -> dict[tuple[str, str], str]:
        s = sdrpc("status", str(toml), "--json")
        assert s.returncode == 0, s.stdout + s.stderr
        return {(x["host"], x["unit"]): x["activity"] for x in json.loads(s.stdout)["servers"]}

    held = (hosts[1], "sdrpc-server-cpu-50053.service")
    assert set(activity().values()) == {"idle"}
    with socket.create_connection((lab.address(hosts[1]), PORTS[1]), timeout=10):
        deadline = time.monotonic() + 30
        while (now := activity())[held] != "busy":
            assert time.monotonic() < deadline, now
            time.sleep(0.5)
        assert [k for k, v in now.items() if v == "busy"] == [held]
    deadline = time.monotonic() + 30
    while (now := activity())[held] != "idle":
        assert time.monotonic() < deadline, now
        time.sleep(0.5)


def assert_installed(lab: Lab, host: str, names: list[str]) -> None:
    """Every unit active and enabled; the host's venv unpacked from the wheelhouse without pip
    (files/sdrpc_venv.py), its console scripts working, the tar gone."""
    for unit in names:
        state = lab.exec(host, f"systemctl is-active {unit}; systemctl is-enabled {unit}")
        assert state.stdout.split() == ["active", "enabled"], (host, unit, state.stdout)
    venv = lab.exec(
        host,
        "cat /opt/sdrpc/venv/lib/python3*/site-packages/sdrpc-*.dist-info/INSTALLER "
        "/opt/sdrpc/venv/.sdrpc-wheelhouse && /opt/sdrpc/venv/bin/sdrpc-check --version && "
        "ls /opt/sdrpc /opt/sdrpc/venv/bin",
    )
    assert venv.returncode == 0, venv.stdout + venv.stderr
    words = venv.stdout.split()
    assert words[0] == "sdrpc" and words[2] == "sdrpc-check", words
    assert "wheelhouse.tar" not in words and "pip" not in words and "sdrpc" in words[4:]


def restarted_by_systemd(lab: Lab, toml: Path, endpoints: list[str]) -> None:
    """kill -9 a server: systemd restarts it (once), status shows it, the others untouched."""
    hosts = lab.hosts
    victim = hosts[1]
    pid = lab.exec(victim, "systemctl show -P MainPID sdrpc-server-cpu-50052.service").stdout
    assert int(pid) > 0
    lab.exec(victim, f"kill -9 {int(pid)}")
    deadline = time.monotonic() + 30
    states: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        s = sdrpc("status", str(toml), "--json")
        assert s.returncode == 0, s.stdout + s.stderr
        states = json.loads(s.stdout)["servers"]
        mine = [
            x for x in states if x["host"] == victim and str(x["unit"]).endswith("50052.service")
        ]
        if mine and mine[0]["restarts"] == 1 and mine[0]["active"] == "active":
            break
        time.sleep(1)
    else:
        pytest.fail(f"no restart seen: {states}")
    assert len(states) == 2 * len(hosts)
    assert all(x["restarts"] == 0 for x in states if x["host"] != victim)
    assert check(endpoints).returncode == 0


@pytest.fixture(scope="module")
def vulkan_built() -> Path:
    return vulkan.vulkan_server()  # the portable Vulkan server sdrpc up finds: a cache hit


@pytest.fixture(scope="module")
def server_built() -> Path:
    return build_server(VERSION, MAX_NAME, portable=True)  # what sdrpc up builds


def test_up_status_restart_idempotent_down(
    lab_factory: Callable[..., Lab], tmp_path: Path, server_built: Path, vulkan_built: Path
) -> None:
    """Three hosts, two backends: cpu everywhere and a Vulkan server (lavapipe) on the first."""
    lab = lab_factory(3)
    hosts = lab.hosts
    toml = fleet_toml(lab, hosts, tmp_path / "fleet.toml", servers_per_host=2, with_vulkan=True)

    before = ssh_left(lab)
    t0 = time.monotonic()
    r = sdrpc("up", str(toml), "--json")
    first = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert ssh_left(lab, before) == set()  # the run's ssh masters ended and reaped
    assert 'transport = "lan"' in r.stderr  # the loud warning
    res = json.loads(r.stdout)
    assert res["ok"] and all(h["ok"] for h in res["hosts"])
    endpoints = [f"{lab.address(h)}:{p}" for h in hosts for p in PORTS]
    assert res["rpc_servers"] == ",".join(endpoints)
    for h, names in units(hosts, with_vulkan=True).items():
        assert_installed(lab, h, names)
    # the client reaches every server at its host's address, compatible with the pins
    c = check(endpoints)
    assert c.returncode == 0, c.stdout + c.stderr
    # the Vulkan server serves its one device, lavapipe's (its banner, in its journal)
    log = lab.exec(hosts[0], "journalctl -o cat -u sdrpc-server-vulkan-50053.service").stdout
    assert re.search(r"Vulkan0: llvmpipe", log), log

    # kill -9 one server: systemd restarts it, status shows it
    restarted_by_systemd(lab, toml, endpoints)

    busy_idle_from_logs(lab, toml)

    # a second up with nothing changed changes nothing
    t0 = time.monotonic()
    r2 = sdrpc("up", str(toml), "--print-rpc-servers")
    second = time.monotonic() - t0
    assert r2.returncode == 0, r2.stdout + r2.stderr
    # stdout: the --rpc-servers string alone (sd-cli --rpc-servers "$(sdrpc up ...)")
    assert r2.stdout == ",".join(endpoints) + "\n"
    report = [line.split() for line in r2.stderr.splitlines() if line.startswith(tuple(hosts))]
    # nothing changed anywhere, and no ssh master left behind
    assert ([(w[0], w[1], w[2]) for w in report], ssh_left(lab, before)) == (
        [(h, "ok", "changed=0") for h in hosts],
        set(),
    )
    print(f"\nup 3 hosts x 2 servers: first {first:.1f} s, second {second:.1f} s")

    # down: nothing left on any host
    d = sdrpc("down", str(toml), "--json")
    assert d.returncode == 0, d.stdout + d.stderr
    for h in hosts:
        assert host_state(lab, h) == "", h
    assert check(endpoints[:1]).returncode == 11  # nothing listens any more


def test_unreachable_host_partial_fleet(
    lab_factory: Callable[..., Lab], tmp_path: Path, server_built: Path
) -> None:
    lab = lab_factory(3)
    hosts = lab.hosts
    toml = fleet_toml(lab, hosts, tmp_path / "fleet.toml")
    lab.link_down(hosts[2])
    r = sdrpc("up", str(toml), "--json")
    assert r.returncode == 42, r.stdout + r.stderr
    res = json.loads(r.stdout)
    by = {h["name"]: h for h in res["hosts"]}
    assert by[hosts[0]]["ok"] and by[hosts[1]]["ok"]
    assert not by[hosts[2]]["ok"]
    assert res["rpc_servers"] is None
    err = r.stderr.strip().splitlines()
    assert f"sdrpc up: error: 1 of 3 hosts failed: {hosts[2]} (" in err[-2]
    assert err[-1].startswith("sdrpc up: hint: ")
    assert "Traceback" not in r.stderr
    # the healthy hosts keep running and serve
    ok = [f"{lab.address(h)}:{PORTS[0]}" for h in hosts[:2]]
    assert check(ok).returncode == 0
    lab.link_up(hosts[2])
    d = sdrpc("down", str(toml))
    assert d.returncode == 0, d.stdout + d.stderr
    for h in hosts:
        assert host_state(lab, h) == "", h


def sdrpc_launch_status(instance: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sdrpc_build.cli.launch",
            "status",
            "--instance",
            instance,
            "--cache-dir",
            str(sdrpc_cache()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ssh_processes(instance_hint: str) -> list[str]:
    """ssh -N tunnel processes on this machine whose command line names ``instance_hint``."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmd
            and cmd[0].endswith(b"ssh")
            and b"-N" in cmd
            and instance_hint.encode() in b" ".join(cmd)
        ):
            out.append(d.name)
    return out


def test_ssh_transport_servers_stay_on_loopback_reached_through_tunnels(
    lab_factory: Callable[..., Lab], tmp_path: Path, server_built: Path
) -> None:
    """transport = "ssh" (the default): servers bind 127.0.0.1 on their hosts, the client
    reaches them through supervised ssh tunnels on stable local ports; down closes them."""
    lab = lab_factory(2)
    toml = fleet_toml(lab, lab.hosts, tmp_path / "fleet.toml", transport="ssh")
    r = sdrpc("up", str(toml), "--json")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        res = json.loads(r.stdout)
        eps = res["rpc_servers"].split(",")
        assert len(eps) == 2 and all(e.startswith("127.0.0.1:") for e in eps), eps
        assert not set(eps) & {f"127.0.0.1:{p}" for p in PORTS}  # local tunnel ports
        for h in lab.hosts:  # nothing listens on the host's bridge address
            listening = lab.exec(h, "ss -Hltn").stdout
            assert f"127.0.0.1:{PORTS[0]}" in listening, listening
            assert f"{lab.address(h)}:{PORTS[0]}" not in listening
            assert f"0.0.0.0:{PORTS[0]}" not in listening
        c = check(eps)
        assert c.returncode == 0, c.stdout + c.stderr
        assert all(s["verdict"] == "compatible" for s in json.loads(c.stdout)["servers"])
        ggml_client_computes_on_every_server(res["rpc_servers"])
        st = sdrpc("status", str(toml), "--json")
        assert st.returncode == 0, st.stdout + st.stderr
        tunnels = json.loads(st.stdout)["tunnels"]
        assert sorted(t["host"] for t in tunnels) == sorted(lab.hosts)
        assert all(t["phase"] == "up" for t in tunnels), tunnels
        again = sdrpc("up", str(toml), "--json")  # the same local ports: the string stays valid
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads(again.stdout)["rpc_servers"] == res["rpc_servers"]
    finally:
        d = sdrpc("down", str(toml), "--json")
    assert d.returncode == 0, d.stdout + d.stderr
    for h in lab.hosts:
        assert host_state(lab, h) == "", host_state(lab, h)
    assert _ssh_processes(str(lab.ssh_config_path)) == []
    instance = tunnel_instance(load_fleet(toml))
    assert not tunnel_file(sdrpc_cache(), instance).exists()
    assert sdrpc_launch_status(instance).returncode == 27  # no supervisor left either


def test_foreign_listener_and_other_pins_are_refused_not_touched(
    lab_factory: Callable[..., Lab], tmp_path: Path, server_built: Path
) -> None:
    lab = lab_factory(3)
    ok, busy, other = lab.hosts
    toml = fleet_toml(lab, lab.hosts, tmp_path / "fleet.toml")
    # busy: a process sdrpc did not start listens on the configured port
    lab.exec(busy, f"systemd-run --unit=foreign-http python3 -m http.server {PORTS[0]}")
    deadline = time.monotonic() + 20
    while f":{PORTS[0]}" not in lab.exec(busy, "ss -Hltn").stdout:
        assert time.monotonic() < deadline, "the foreign listener did not start"
        time.sleep(0.2)
    foreign_pid = lab.exec(busy, "systemctl show -P MainPID foreign-http").stdout.strip()
    # other: an sdrpc server built for GGML_MAX_NAME 128 is installed already
    key = "cpu-4df29be4f4-n128-planted"
    unit = f"/etc/systemd/system/sdrpc-server-cpu-{PORTS[0]}.service"
    planted = f"[Service]\nExecStart=/opt/sdrpc/servers/{key}/bin/ggml-rpc-server -p 50052\n"
    manifest = json.dumps({"commit": LLAMA_SDISTS[VERSION][0], "max_name": 128})
    lab.exec(
        other,
        f"mkdir -p /opt/sdrpc/servers/{key} && printf %s '{manifest}' > "
        f"/opt/sdrpc/servers/{key}/manifest.json && printf '{planted}' > {unit}",
    )
    before = lab.exec(other, f"cat {unit}").stdout

    r = sdrpc("up", str(toml), "--json")
    assert r.returncode == 42, r.stdout + r.stderr
    by = {h["name"]: h for h in json.loads(r.stdout)["hosts"]}
    assert by[ok]["ok"]
    assert not by[busy]["ok"] and not by[other]["ok"]
    assert f"port {PORTS[0]} is taken by python3 (pid {foreign_pid})" in by[busy]["reason"]
    assert "GGML_MAX_NAME 128, the client needs" in by[other]["reason"]
    assert "GGML_MAX_NAME 160" in by[other]["reason"]
    assert "Traceback" not in r.stderr
    # nothing of theirs touched: the foreign server runs, the planted unit is as it was
    assert lab.exec(busy, "systemctl show -P MainPID foreign-http").stdout.strip() == foreign_pid
    assert f":{PORTS[0]}" in lab.exec(busy, "ss -Hltn").stdout
    assert lab.exec(busy, "ls /etc/systemd/system | grep sdrpc; true").stdout == ""
    assert lab.exec(other, f"cat {unit}").stdout == before
    assert check([f"{lab.address(ok)}:{PORTS[0]}"]).returncode == 0

    lab.exec(busy, "systemctl stop foreign-http")
    d = sdrpc("down", str(toml))
    assert d.returncode == 0, d.stdout + d.stderr
    for h in lab.hosts:
        assert host_state(lab, h) == "", h


# bounds (on failure only): ssh notices a dead link after ServerAliveInterval 1 x CountMax 3
# (~4 s); a reconnect is the attempt in flight (ConnectTimeout 5) + backoff (<= 5 s) + HELLO
DROP_S = 20.0
BACK_S = 40.0


def tunnels_now(instance: str) -> dict[str, HostStatus]:
    return {h.host: h for h in tunnel_status(instance, sdrpc_cache()).hosts}


def wait_tunnels(
    instance: str, pred: Callable[[dict[str, HostStatus]], bool], timeout: float, what: str
) -> dict[str, HostStatus]:
    """The tunnels' state (their files: no RPC port is touched) once ``pred`` holds."""
    deadline = time.monotonic() + timeout
    while not pred(now := tunnels_now(instance)):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s: {now}"
        time.sleep(0.1)
    return now


def test_ssh_fleet_comes_back_after_a_host_reboot_and_a_cut_link(
    lab_factory: Callable[..., Lab], tmp_path: Path, server_built: Path
) -> None:
    """transport = "ssh", after a real up: a rebooted host's unit comes back (systemd) and its
    tunnel reconnects on the same local port; a host whose link is cut backs off alone while
    the other host serves, and comes back on the same port when the link is back."""
    lab = lab_factory(2)
    rebooted, cut = lab.hosts
    toml = fleet_toml(lab, lab.hosts, tmp_path / "fleet.toml", transport="ssh")
    instance = tunnel_instance(load_fleet(toml))
    r = sdrpc("up", str(toml), "--print-rpc-servers")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        servers = r.stdout.strip()
        endpoint = dict(zip(lab.hosts, servers.split(","), strict=True))
        ports = {h: t.forwards for h, t in tunnels_now(instance).items()}
        assert [f"127.0.0.1:{ports[h][0].local}" for h in lab.hosts] == servers.split(",")

        # (a) a host reboots: its unit starts again at boot, its tunnel reconnects
        before = tunnels_now(instance)[rebooted].pid
        assert before is not None
        lab.reboot(rebooted)
        back = wait_tunnels(
            instance,
            lambda t: t[rebooted].phase == "up" and t[rebooted].pid not in (None, before),
            BACK_S,
            "the tunnel to the rebooted host",
        )
        assert {h: t.forwards for h, t in back.items()} == ports  # the same local ports
        st = sdrpc("status", str(toml), "--json")
        assert st.returncode == 0, st.stdout + st.stderr
        units = {(x["host"], x["active"], x["sub"]) for x in json.loads(st.stdout)["servers"]}
        assert units == {(h, "active", "running") for h in lab.hosts}
        c = check(servers.split(","))
        assert c.returncode == 0, c.stdout + c.stderr

        # (b) a host's link is cut: its tunnel backs off, the other host keeps serving
        before = tunnels_now(instance)[cut].pid
        lab.link_down(cut)
        try:
            wait_tunnels(
                instance,
                lambda t: t[cut].phase == "reconnecting" and t[cut].pid != before,
                DROP_S,
                "the tunnel over the cut link backing off",
            )
            c = check([endpoint[rebooted]])
            assert c.returncode == 0, c.stdout + c.stderr
            assert tunnels_now(instance)[rebooted].phase == "up"
            assert tunnels_now(instance)[cut].phase == "reconnecting"  # still trying
        finally:
            lab.link_up(cut)
        back = wait_tunnels(
            instance, lambda t: t[cut].phase == "up", BACK_S, "the tunnel after the link is back"
        )
        assert {h: t.forwards for h, t in back.items()} == ports
        c = check(servers.split(","))
        assert c.returncode == 0, c.stdout + c.stderr
    finally:
        d = sdrpc("down", str(toml))
    assert d.returncode == 0, d.stdout + d.stderr
    assert not tunnel_file(sdrpc_cache(), instance).exists()
    for h in lab.hosts:
        assert host_state(lab, h) == "", h
