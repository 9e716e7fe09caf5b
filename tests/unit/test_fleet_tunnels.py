"""The tunnels' pure parts: ssh argv, specs, stable ports, the tunnel file, the restart policy."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Collection
from pathlib import Path

import pytest

from sdrpc_build.errors import LaunchError, ToolError, UsageError
from sdrpc_build.fleet import tunnels
from sdrpc_build.fleet.tunnels import (
    FAST_CIPHERS,
    TUNNEL_POLICY,
    Forward,
    Tunnel,
    TunnelSpec,
    TunnelState,
    assign_ports,
    close_tunnels,
    open_tunnels,
    read_tunnels,
    rpc_servers,
    ssh_argv,
    tunnel_file,
    tunnel_status,
)
from sdrpc_build.launch.state import ServerMachine, State, backoff_delay

BASE = [
    "-N",
    "-o", "ExitOnForwardFailure=yes",
    "-o", "ServerAliveInterval=1",
    "-o", "ServerAliveCountMax=3",
    "-o", "BatchMode=yes",
    "-o", "ControlMaster=no",
    "-o", "ControlPath=none",
]  # fmt: skip


def test_ssh_argv_is_exactly_this() -> None:
    spec = TunnelSpec(
        "gpu1",
        "me@192.168.1.10",
        (50052, 50053),
        ssh_options=("-o", "ConnectTimeout=9", "-i", "/k/id"),
        config=Path("/etc/fleet/ssh_config"),
    )
    forwards = (Forward(50052, 21001), Forward(50053, 21002))
    assert ssh_argv(spec, forwards, "/usr/bin/ssh") == [
        "/usr/bin/ssh",
        *BASE,
        "-F", "/etc/fleet/ssh_config",
        "-c", FAST_CIPHERS,
        "-o", "ConnectTimeout=9", "-i", "/k/id",  # the spec's own: ssh keeps the first value
        "-o", "ConnectTimeout=5",
        "-L", "127.0.0.1:21001:127.0.0.1:50052",
        "-L", "127.0.0.1:21002:127.0.0.1:50053",
        "--", "me@192.168.1.10",
    ]  # fmt: skip


def test_ssh_argv_without_config_or_cipher_choice() -> None:
    spec = TunnelSpec("gpu2", "gpu2", (50052,), ciphers=None)
    assert ssh_argv(spec, (Forward(50052, 20000),)) == [
        "ssh",
        *BASE,
        "-o", "ConnectTimeout=5",
        "-L", "127.0.0.1:20000:127.0.0.1:50052",
        "--", "gpu2",
    ]  # fmt: skip


def test_the_fast_ciphers_keep_every_openssh_default_as_a_fallback() -> None:
    assert FAST_CIPHERS.split(",")[0] == "aes128-gcm@openssh.com"
    defaults = {"chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr"}
    defaults |= {"aes128-gcm@openssh.com", "aes256-gcm@openssh.com"}
    assert set(FAST_CIPHERS.split(",")) == defaults


@pytest.mark.parametrize(
    "specs",
    [
        [],
        [TunnelSpec("gpu 1", "gpu1", (50052,))],
        [TunnelSpec("gpu1", "gpu1", (50052,)), TunnelSpec("gpu1", "gpu2", (50052,))],
        [TunnelSpec("gpu1", "-oProxyCommand=x", (50052,))],
        [TunnelSpec("gpu1", "me@host extra", (50052,))],
        [TunnelSpec("gpu1", "", (50052,))],
        [TunnelSpec("gpu1", "gpu1", ())],
        [TunnelSpec("gpu1", "gpu1", (50052, 50052))],
        [TunnelSpec("gpu1", "gpu1", (0,))],
        [TunnelSpec("gpu1", "gpu1", (65536,))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("-f",))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("-fN",))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("-v", "-S", "/tmp/ctl"))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("-O", "exit"))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("-W", "h:22"))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("-p", "22", "otherhost"))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("-o",))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("-Z",))],
        [TunnelSpec("gpu1", "gpu1", (1,), ssh_options=("--", "rm -rf /"))],
    ],
)
def test_bad_specs_are_usage_errors(specs: list[TunnelSpec]) -> None:
    with pytest.raises(UsageError) as info:
        tunnels.check_specs(specs)
    assert info.value.exit_code == 2 and info.value.hint


def _picker(start: int) -> tuple[list[Collection[int]], object]:
    seen: list[Collection[int]] = []

    def pick(taken: Collection[int]) -> int:
        seen.append(set(taken))
        port = start
        while port in taken:
            port += 1
        return port

    return seen, pick


def test_recorded_ports_stay_and_new_servers_get_new_ones() -> None:
    old = (Tunnel(TunnelSpec("a", "a", (50052,)), (Forward(50052, 20000),)),)
    previous = TunnelState("fleet-x", Path("/x"), "/usr/bin/ssh", old)
    specs = [TunnelSpec("b", "b", (50052,)), TunnelSpec("a", "a-new", (50053, 50052))]
    seen, pick = _picker(20000)
    got = assign_ports(specs, previous, pick)  # type: ignore[arg-type]
    assert [(t.spec.host, t.forwards) for t in got] == [
        ("b", (Forward(50052, 20001),)),
        ("a", (Forward(50053, 20002), Forward(50052, 20000))),  # kept, whatever else changed
    ]
    assert seen[0] == {20000}  # a recorded port is never handed to another server


def test_rpc_servers_follow_the_fleet_order() -> None:
    state = TunnelState(
        "fleet-x",
        Path("/x"),
        "ssh",
        (
            Tunnel(TunnelSpec("b", "b", (1, 2)), (Forward(1, 20005), Forward(2, 20003))),
            Tunnel(TunnelSpec("a", "a", (1,)), (Forward(1, 20001),)),
        ),
    )
    assert rpc_servers(state) == "127.0.0.1:20005,127.0.0.1:20003,127.0.0.1:20001"


def _state(tmp_path: Path) -> TunnelState:
    spec = TunnelSpec("gpu1", "me@gpu1", (50052, 50053), ("-p", "2222"), Path("/c"), None)
    path = tunnel_file(tmp_path, "fleet-x")
    forwards = (Forward(50052, 20001), Forward(50053, 20002))
    return TunnelState("fleet-x", path, "/usr/bin/ssh", (Tunnel(spec, forwards),))


def test_the_tunnel_file_round_trips_and_is_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        state = _state(tmp_path)
        tunnels._write(state)
    finally:
        os.umask(old)
    assert state.path == tmp_path / "run" / "tunnels" / "fleet-x.json"
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.parent.stat().st_mode) == 0o700
    assert read_tunnels(state.path) == state
    assert read_tunnels(tmp_path / "none.json") is None


def test_a_tunnel_file_others_could_write_is_not_trusted(tmp_path: Path) -> None:
    state = _state(tmp_path)
    tunnels._write(state)
    state.path.chmod(0o620)
    with pytest.raises(LaunchError, match="not private"):
        read_tunnels(state.path)


@pytest.mark.parametrize(
    "text",
    ["{", "[]", '{"format": 9}', '{"format": 1, "instance": "x", "ssh": "s", "tunnels": [{}]}'],
)
def test_a_broken_tunnel_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(LaunchError) as info:
        read_tunnels(path)
    assert str(path) in info.value.message
    assert info.value.hint and "sdrpc down" in info.value.hint


def test_a_bad_host_in_the_tunnel_file_is_refused(tmp_path: Path) -> None:
    state = _state(tmp_path)
    tunnels._write(state)
    obj = json.loads(state.path.read_text())
    obj["tunnels"][0]["target"] = "-oProxyCommand=evil"
    state.path.write_text(json.dumps(obj))
    with pytest.raises(LaunchError, match="invalid ssh destination"):
        read_tunnels(state.path)


def test_a_dropped_link_never_makes_a_tunnel_fatal() -> None:
    """A host down for an hour: ssh fails every few seconds, the tunnel keeps trying, at most
    5 s apart (the default launch policy gives up after 5 failures in 60 s)."""
    m = ServerMachine("gpu1", TUNNEL_POLICY)
    now = 0.0
    delays = []
    while now < 3600:
        m.start(now)
        now += 5.0  # ConnectTimeout
        m.exited(now, 255)
        assert m.state is State.BACKOFF and m.next_start_at is not None
        delays.append(m.next_start_at - now)
        now = m.next_start_at
    assert max(delays) == TUNNEL_POLICY.backoff_max == 5.0
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(TUNNEL_POLICY, 1) == 0.5
    # a link that dropped after a long healthy run restarts at once, ready or not
    assert TUNNEL_POLICY.restart == "always"


def test_open_without_ssh_is_a_tool_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as info:
        open_tunnels(
            [TunnelSpec("a", "a", (50052,))],
            cache_root=tmp_path,
            instance="fleet-x",
            env={"PATH": str(tmp_path)},
        )
    assert info.value.exit_code == 6
    assert not (tmp_path / "run").exists()  # nothing written


def test_open_refuses_a_bad_instance_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid instance name"):
        open_tunnels([TunnelSpec("a", "a", (1,))], cache_root=tmp_path, instance="../x", env={})


def test_status_and_close_of_nothing(tmp_path: Path) -> None:
    status = tunnel_status("fleet-x", tmp_path)
    assert (status.running, status.state, status.hosts) == (False, None, ())
    assert close_tunnels("fleet-x", tmp_path) is False
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "options",
    [
        ("-o", "ConnectTimeout=9", "-i", "/k/id", "-p", "2222"),
        ("-oCompression=yes", "-C", "-4", "-J", "jump@bastion"),
        ("-vvi", "/k/id", "-lme"),
        (),
    ],
)
def test_ordinary_ssh_options_are_accepted(options: tuple[str, ...]) -> None:
    (spec,) = tunnels.check_specs([TunnelSpec("gpu1", "gpu1", (1,), ssh_options=options)])
    assert spec.ssh_options == options


def test_a_relative_ssh_config_is_made_absolute(tmp_path: Path) -> None:
    (spec,) = tunnels.check_specs([TunnelSpec("gpu1", "gpu1", (1,), config=Path("cfg"))])
    assert spec.config == Path.cwd() / "cfg"
