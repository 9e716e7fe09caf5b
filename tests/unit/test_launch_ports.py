from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest

from sdrpc_build.errors import PortInUseError
from sdrpc_build.launch.ports import (
    STABLE_FROM,
    ensure_port_free,
    ephemeral_range,
    find_listener,
    listening_inodes,
    pick_free_port,
    pick_stable_port,
    time_wait_left,
)

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)


def _row(port: int, state: str, inode: int) -> str:
    return (
        f"   0: 0100007F:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 "
        f"00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


def _fake_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(HEADER + _row(50052, "0A", 777) + _row(50053, "01", 888))
    (proc / "net" / "tcp6").write_text(HEADER)
    for pid, target, cmd in [
        (10, "socket:[1]", b"other\0"),
        (42, "socket:[777]", b"/opt/rpc-server\0-p\x0050052\0"),
    ]:
        fd = proc / str(pid) / "fd"
        fd.mkdir(parents=True)
        os.symlink(target, fd / "3")
        (proc / str(pid) / "cmdline").write_bytes(cmd)
    return proc


def test_listener_named_from_proc(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path)
    assert listening_inodes(50052, proc) == {777}
    assert listening_inodes(50053, proc) == set()  # ESTABLISHED, not LISTEN
    holder = find_listener(50052, proc)
    assert holder is not None
    assert holder.pid == 42
    assert holder.describe() == "pid 42 (/opt/rpc-server -p 50052)"
    assert find_listener(50099, proc) is None


def test_port_in_use_is_refused_and_holder_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(
            PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"
        ) as info:
            ensure_port_free("127.0.0.1", port)
        assert f"pid {os.getpid()}" in info.value.message
        assert info.value.exit_code == 22
    ensure_port_free("127.0.0.1", port)  # free again once closed


def test_time_wait_timer_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    row = _row(50060, "06", 0).replace("00:00000000", "03:00000BB8")  # 3000 ticks
    (proc / "net" / "tcp").write_text(HEADER + row)
    assert time_wait_left(50060, proc) == pytest.approx(3000 / os.sysconf("SC_CLK_TCK"))
    assert time_wait_left(50061, proc) is None


def test_an_address_this_machine_lacks() -> None:
    # binding fails locally (EADDRNOTAVAIL): no packet is sent anywhere
    for call in (
        lambda: pick_free_port("10.255.255.1"),
        lambda: ensure_port_free("10.255.255.1", 0),
    ):
        with pytest.raises(
            PortInUseError, match="this machine has no address 10.255.255.1"
        ) as info:
            call()
        assert info.value.hint


def _proc_with_range(tmp_path: Path, text: str) -> Path:
    knob = tmp_path / "sys" / "net" / "ipv4" / "ip_local_port_range"
    knob.parent.mkdir(parents=True)
    knob.write_text(text)
    return tmp_path


def test_ephemeral_range_from_proc(tmp_path: Path) -> None:
    assert ephemeral_range(_proc_with_range(tmp_path, "40000\t50000\n")) == (40000, 50000)
    assert ephemeral_range(tmp_path / "nothing") == (32768, 60999)
    assert ephemeral_range(_proc_with_range(tmp_path / "bad", "9 x\n")) == (32768, 60999)


def test_stable_ports_stay_out_of_the_ephemeral_range(tmp_path: Path) -> None:
    """An outgoing connection may take any ephemeral port while a tunnel is down: a stable
    port is below that range, free, and none of the ports to avoid."""
    proc = _proc_with_range(tmp_path, "32768 60999")
    rng = random.Random(7)
    ports = [pick_stable_port("127.0.0.1", proc=proc, rng=rng) for _ in range(50)]
    assert all(STABLE_FROM <= p < 32768 for p in ports)
    avoid = set(ports)
    again = [
        pick_stable_port("127.0.0.1", avoid, proc=proc, rng=random.Random(n)) for n in range(5)
    ]
    assert not avoid & set(again)


def test_stable_port_when_the_ephemeral_range_is_everything(tmp_path: Path) -> None:
    proc = _proc_with_range(tmp_path, "1024 65535")
    port = pick_stable_port("127.0.0.1", proc=proc)
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # it was free


def test_a_stable_port_is_not_one_in_use(tmp_path: Path) -> None:
    proc = _proc_with_range(tmp_path, "21000 60999")  # stable ports: 1024..20999
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        rng = random.Random(1)
        picked = {pick_stable_port("127.0.0.1", proc=proc, rng=rng) for _ in range(30)}
        assert all(1024 <= p < 21000 for p in picked)
        assert busy not in picked
