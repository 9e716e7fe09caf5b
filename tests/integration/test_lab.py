"""The lab of real hosts (tests/lab.py) does what multi-host tests rely on.

Needs root and systemd-nspawn (``.ci/lab-setup``); skipped, with the reason, only without them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lab as lab_module
import pytest
from lab import Lab, cleanup_stale, lab_unavailable_reason
from procs import alive, free_port

_REASON = lab_unavailable_reason()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

# Runs inside a host: connect, read a line; prints "ok <data> <s>" or "err <errno|timeout> <s>".
PROBE = r"""
import errno, socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
t = time.monotonic()
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        data = s.recv(64).decode(errors="replace").split()
    print("ok", data[0] if data else "-", round(time.monotonic() - t, 3))
except socket.timeout:
    print("err", "timeout", round(time.monotonic() - t, 3))
except OSError as e:
    print("err", errno.errorcode.get(e.errno, str(e.errno)), round(time.monotonic() - t, 3))
"""

UNIT = """\
[Unit]
Description=sdrpc lab test service

[Service]
ExecStart=/bin/sleep infinity
Restart=on-failure
RestartSec=100ms

[Install]
WantedBy=multi-user.target
"""


def probe(lab: Lab, host: str, address: str, port: int, timeout: float = 3.0) -> list[str]:
    cp = lab.ssh(host, "python3", "-c", PROBE, address, str(port), str(timeout), check=True)
    return cp.stdout.split()


def show(lab: Lab, host: str, unit: str) -> dict[str, str]:
    props = "-p ActiveState -p MainPID -p NRestarts -p UnitFileState"
    cp = lab.ssh(host, f"systemctl show {props} {unit}", check=True)
    return dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)


def install_unit(lab: Lab, host: str, name: str = "lab-test.service") -> None:
    lab.ssh(host, f"cat > /etc/systemd/system/{name}", input=UNIT, check=True)
    lab.ssh(host, "systemctl daemon-reload", check=True)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - t0


@contextlib.contextmanager
def greeter(bind: str) -> Iterator[int]:
    """A TCP server on ``bind`` (a fresh port) that says ``hello`` to each client."""
    srv = socket.socket()
    srv.bind((bind, 0))
    srv.listen(8)
    srv.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hello\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        srv.close()


def other_local_address(lab: Lab) -> str | None:
    """An IPv4 address of this machine outside the lab and loopback, if it has one."""
    cp = lab_module._run(["ip", "-4", "-o", "addr", "show", "scope", "global"])
    for line in cp.stdout.splitlines():
        address = line.split()[3].split("/")[0]
        if ipaddress.ip_address(address) not in lab.network:
            return address
    return None


def leftovers(lab_id: str, cgroups: tuple[str, ...]) -> list[str]:
    """Everything of lab ``lab_id`` that still exists on the machine."""
    found = []
    netns = Path("/run/netns")
    found += [f"netns {p.name}" for p in netns.glob(f"{lab_id}*")] if netns.is_dir() else []
    found += [f"link {p.name}" for p in Path("/sys/class/net").glob(f"{lab_id}*")]
    tables = lab_module._run(["nft", "list", "tables"]).stdout
    found += [f"nft {t}" for t in tables.splitlines() if lab_id in t]
    found += [f"cgroup {r}" for r in cgroups if Path(r, "sdrpc-lab", lab_id).exists()]
    found += [f"dir {p}" for p in Path("/run/systemd/nspawn/propagate").glob(f"{lab_id}*")]
    found += [f"dir {lab_module.STATE_ROOT / lab_id}"] * (lab_module.STATE_ROOT / lab_id).exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    found += ["mount"] * (f"/{lab_id}/" in mounts)
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if lab_id.encode() in (pid_dir / "cmdline").read_bytes():
                found.append(f"process {pid_dir.name}")
    return found


def test_hosts_boot_with_systemd_and_answer_ssh_with_host_key_checking(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = lab_factory(3)
    report = (
        "hostname; cat /etc/machine-id; systemctl is-system-running --wait;"
        " systemctl is-active ssh.service; systemctl is-active postgresql.service;"
        " systemctl list-units --type=timer --no-legend | grep -c apt-daily;"
        " systemctl --failed --no-legend"
    )
    ids = set()
    for i, host in enumerate(lab.hosts, 1):
        assert lab.address(host) == str(lab.network.network_address + 10 + i)
        cp = lab.ssh(host, report)
        name, machine_id, state, sshd, postgres, apt_timers, *failed = cp.stdout.split("\n")
        assert name == host, cp
        ids.add(machine_id)
        assert state in {"running", "degraded"}, failed  # degraded is usable, and shows what
        assert sshd == "active"
        # the machine's own enabled units stay off (a database, apt timers, gettys...)
        assert (postgres, apt_timers) == ("inactive", "0")
    assert len(ids) == 3
    # nothing the machine enabled for itself is enabled in a host (they share its /etc below)
    enabled_here = sorted(
        {p.name for p in Path("/etc/systemd/system").glob("*.wants/*") if "@." not in p.name}
    )
    if enabled_here:
        cp = lab.ssh("lab2", "systemctl", "is-enabled", *enabled_here)
        states = dict(zip(enabled_here, cp.stdout.split(), strict=True))
        assert "enabled" not in states.values(), states
    # an outsider to the lab's known_hosts is refused: host key checking is on
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cp = lab.ssh("lab1", "true", options=["-o", f"UserKnownHostsFile={empty}"])
    assert cp.returncode == 255
    assert "Host key verification failed" in cp.stderr
    # and so is a host that shows another host's key
    swapped = tmp_path / "swapped"
    lines = lab.known_hosts.read_text().splitlines()
    swapped.write_text(lines[0].split()[0] + " " + " ".join(lines[1].split()[1:]) + "\n")
    cp = lab.ssh("lab1", "true", options=["-o", f"UserKnownHostsFile={swapped}"])
    assert cp.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in cp.stderr
    # plain OpenSSH with the lab's config, as ansible and `sdrpc up` will use it
    cp = subprocess.run(
        ["ssh", "-F", str(lab.ssh_config_path), "lab3", "echo", "$((6*7))"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert (cp.returncode, cp.stdout) == (0, "42\n"), cp.stderr


def test_two_labs_side_by_side_do_not_clash(lab_factory: Callable[..., Lab]) -> None:
    one, two = lab_factory(1), lab_factory(1)
    assert one.lab_id != two.lab_id
    assert not one.network.overlaps(two.network)
    assert one.ssh("lab1", "hostname").stdout == two.ssh("lab1", "hostname").stdout == "lab1\n"
    # each lab's client key opens its own hosts only
    options = [
        "-o",
        f"HostName={two.address('lab1')}",
        "-o",
        f"UserKnownHostsFile={two.known_hosts}",
    ]
    cp = one.ssh("lab1", "true", options=options)
    assert cp.returncode == 255
    assert "Permission denied (publickey)" in cp.stderr


def test_unit_with_restart_on_failure_comes_back_after_kill_9(
    lab_factory: Callable[..., Lab],
) -> None:
    lab = lab_factory(1)
    install_unit(lab, "lab1")
    lab.ssh("lab1", "systemctl start lab-test.service", check=True)
    before = show(lab, "lab1", "lab-test.service")
    assert before["ActiveState"] == "active"
    assert before["NRestarts"] == "0"
    lab.ssh("lab1", f"kill -9 {before['MainPID']}", check=True)

    def restarted() -> bool:
        now = show(lab, "lab1", "lab-test.service")
        return now["NRestarts"] == "1" and now["ActiveState"] == "active"

    wait_for(restarted, 15, "lab-test.service restarted")
    assert show(lab, "lab1", "lab-test.service")["MainPID"] not in {"0", before["MainPID"]}


def test_reboot_brings_enabled_units_back_and_keeps_etc(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(2)
    install_unit(lab, "lab1")
    lab.ssh("lab1", "systemctl enable --now lab-test.service", check=True)
    lab.ssh("lab1", "touch /etc/lab-marker /var/lib/lab-marker /run/lab-marker", check=True)
    leader1, leader2 = lab.leader_pid("lab1"), lab.leader_pid("lab2")
    assert lab.boots("lab1") == 1

    seconds = lab.reboot("lab1")

    print(f"reboot took {seconds:.2f}s")
    assert lab.boots("lab1") == 2
    assert lab.leader_pid("lab1") != leader1
    state = show(lab, "lab1", "lab-test.service")
    assert (state["ActiveState"], state["UnitFileState"]) == ("active", "enabled")
    cp = lab.ssh("lab1", "ls /etc/lab-marker /var/lib/lab-marker; test ! -e /run/lab-marker")
    assert cp.returncode == 0, cp.stderr
    # the other host did not notice
    assert (lab.boots("lab2"), lab.leader_pid("lab2")) == (1, leader2)


def test_link_down_ends_a_tunnel_and_link_up_restores_ssh(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(2)
    port = free_port()
    options = ["-N", "-L", f"127.0.0.1:{port}:127.0.0.1:22", "-o", "ExitOnForwardFailure=yes"]
    options += ["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=3"]
    tunnel = subprocess.Popen(
        lab.ssh_argv("lab1", options=options),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def through_tunnel() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.settimeout(2)
                    return s.recv(8).startswith(b"SSH-2.0-")
            except OSError:
                return False

        wait_for(through_tunnel, 15, "lab1's sshd through ssh -L")
        t0 = time.monotonic()
        lab.link_down("lab1")
        rc = tunnel.wait(timeout=30)
        detected = time.monotonic() - t0
        print(f"ssh -L noticed the cut link after {detected:.2f}s")
        assert rc == 255
        assert detected < 8.0  # 3 unanswered keep-alives, 1 s apart, plus slack
        # the host itself is fine, only its cable is cut; the other host still answers
        assert lab.exec("lab1", "systemctl is-active ssh.service").stdout.strip() == "active"
        assert lab.ssh("lab2", "true").returncode == 0
        assert lab.ssh("lab1", "true", options=["-o", "ConnectTimeout=1"]).returncode == 255
        lab.link_up("lab1")
        took = wait_for(
            lambda: lab.ssh("lab1", "true", options=["-o", "ConnectTimeout=2"]).returncode == 0,
            20,
            "ssh to lab1 after link_up",
        )
        print(f"ssh worked again {took:.2f}s after link_up")
    finally:
        if tunnel.poll() is None:
            tunnel.kill()
        tunnel.wait(10)
        assert tunnel.stderr is not None
        tunnel.stderr.close()


def test_firewall_keeps_hosts_off_the_machine_unless_a_port_is_opened(
    lab_factory: Callable[..., Lab],
) -> None:
    lab = lab_factory(2)
    # a service of the machine listening on all addresses, as many do
    with greeter("0.0.0.0") as port:
        assert probe(lab, "lab1", lab.gateway, port)[:2] == ["err", "ECONNREFUSED"]
        lab.allow_from_hosts(port)
        assert probe(lab, "lab1", lab.gateway, port)[:2] == ["ok", "hello"]
        assert probe(lab, "lab2", lab.gateway, port)[:2] == ["ok", "hello"]
        # open at the gateway only, not at the machine's other addresses (routed via the gateway;
        # the packets go to this machine only)
        other = other_local_address(lab)
        if other:
            lab.ssh("lab2", f"ip route add {other}/32 via {lab.gateway}", check=True)
            assert probe(lab, "lab2", other, port)[:2] == ["err", "ECONNREFUSED"]
        lab.deny_from_hosts(port)
        assert probe(lab, "lab1", lab.gateway, port)[:2] == ["err", "ECONNREFUSED"]
    # hosts talk to each other (bridged traffic crosses the forward hook with br_netfilter)
    assert probe(lab, "lab1", lab.address("lab2"), 22)[:2] == ["ok", "SSH-2.0-OpenSSH_9.2p1"]


def test_hosts_have_no_route_out(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(1)
    # no route, so the connect below sends nothing: checked before trying it
    route = lab.ssh("lab1", "ip route get 192.0.2.1")
    assert route.returncode != 0
    assert "unreachable" in route.stderr
    assert lab.ssh("lab1", "ip route show default").stdout.strip() == ""
    verdict, why, seconds = probe(lab, "lab1", "192.0.2.1", 9)
    assert (verdict, why) == ("err", "ENETUNREACH")
    assert float(seconds) < 1.0  # at once, not after the 3 s connect timeout


def test_bridge_forwards_nothing_even_where_forwarding_is_on(
    lab_factory: Callable[..., Lab],
) -> None:
    """A host that routes through the machine reaches no other network: the forward chain drops
    it even with forwarding enabled on the bridge. The 'outside' here is one more namespace on this
    machine; a control rule shows the path works when the firewall lets it through."""
    lab = lab_factory(1)
    out_ns, out_veth = f"{lab.lab_id}-out", f"{lab.lab_id}-o"
    run = lab_module._run
    try:
        with lab_module._global_lock():
            net = Lab._free_subnet()
            root_addr, out_addr = str(net.network_address + 1), str(net.network_address + 2)
            run(["ip", "netns", "add", out_ns])
            veth = ["ip", "link", "add", out_veth, "type", "veth", "peer", "name", "eth0"]
            run([*veth, "netns", out_ns])
            run(["ip", "addr", "add", f"{root_addr}/24", "dev", out_veth])
        run(["ip", "link", "set", out_veth, "up"])
        run(["ip", "-n", out_ns, "addr", "add", f"{out_addr}/24", "dev", "eth0"])
        run(["ip", "-n", out_ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", out_ns, "route", "add", str(lab.network), "via", root_addr])
        for ifname in (lab.bridge, out_veth):
            Path("/proc/sys/net/ipv4/conf", ifname, "forwarding").write_text("1")
        lab.ssh("lab1", f"ip route add {net} via {lab.gateway}", check=True)
        port = 8000
        server = subprocess.Popen(
            ["ip", "netns", "exec", out_ns, sys.executable, "-c",
             "import socket\ns = socket.create_server(('0.0.0.0', 8000))\n"
             "while True:\n c, _ = s.accept(); c.sendall(b'hello\\n'); c.close()"],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            control = [
                f'iifname "{lab.bridge}" ip daddr {out_addr} accept comment "control"',
                f'oifname "{lab.bridge}" ip saddr {out_addr} accept comment "control"',
            ]
            for rule in control:
                run(["nft", "insert", "rule", "inet", lab.nft_table, "forward", *rule.split()])
            wait_for(
                lambda: probe(lab, "lab1", out_addr, port)[:2] == ["ok", "hello"],
                10,
                "control: the outside namespace through the machine",
            )
            listing = run(["nft", "-a", "list", "chain", "inet", lab.nft_table, "forward"]).stdout
            for line in listing.splitlines():
                if '"control"' in line:
                    handle = line.rsplit("handle", 1)[1].strip()
                    run(
                        [
                            "nft",
                            "delete",
                            "rule",
                            "inet",
                            lab.nft_table,
                            "forward",
                            "handle",
                            handle,
                        ]
                    )
            assert probe(lab, "lab1", out_addr, port, timeout=2)[:2] == ["err", "timeout"]
        finally:
            server.kill()
            server.wait(10)
    finally:
        if Path("/sys/class/net", out_veth).exists():
            run(["ip", "link", "delete", out_veth], check=False)
        if Path("/run/netns", out_ns).exists():
            run(["ip", "netns", "delete", out_ns], check=False)


def test_teardown_removes_everything_even_after_an_error() -> None:
    lab = Lab(2)
    records: list[lab_module._Record] = []
    pids: list[int] = []
    during: list[str] = []

    def failing_test() -> None:
        with lab:
            records.append(lab.record)
            pids.extend(lab.leader_pid(h) for h in lab.hosts)
            during.extend(leftovers(lab.lab_id, lab.record.cgroups))
            raise RuntimeError("a test failed")

    with pytest.raises(RuntimeError, match="a test failed"):
        failing_test()
    for kind in ("netns", "link", "nft", "cgroup", "dir", "mount", "process"):
        assert kind in " ".join(during)  # what the check below sees, had teardown missed it
    assert leftovers(records[0].lab_id, records[0].cgroups) == []
    assert not any(alive(pid) for pid in pids)
    lab.close()  # idempotent


def test_stale_labs_of_dead_owners_are_removed_and_live_ones_kept(
    lab_factory: Callable[..., Lab],
) -> None:
    mine = lab_factory(1)
    tests = Path(lab_module.__file__).parent
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nsys.path.insert(0, sys.argv[1])\nfrom lab import Lab\n"
         "lab = Lab(1)\nlab.start()\nprint(lab.lab_id, flush=True)\ntime.sleep(120)", str(tests)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        stale_id = owner.stdout.readline().strip()
        assert stale_id.startswith("sdl"), stale_id
        rec = lab_module._Record.load(lab_module.STATE_ROOT / stale_id)
        os.kill(owner.pid, signal.SIGKILL)  # killed: no teardown ran
        owner.wait(10)
        owner.stdout.close()
        assert leftovers(stale_id, rec.cgroups)

        removed = cleanup_stale()  # (a test session running beside this one may beat us to it)

        assert leftovers(stale_id, rec.cgroups) == []
        assert mine.lab_id not in removed
        assert mine.ssh("lab1", "true").returncode == 0  # a live owner's lab is untouched
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
