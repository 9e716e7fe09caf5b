from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sdrpc_build.errors import PortInUseError
from sdrpc_build.launch.ports import (
    ensure_port_free,
    find_listener,
    listening_inodes,
    pick_free_port,
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
