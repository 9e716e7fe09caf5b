"""fleet.toml validation: what is accepted, and one clear error (exit 40) for what is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdrpc_build.fleet.errors import FleetConfigError
from sdrpc_build.fleet.model import SshTarget, load_fleet, parse_fleet, parse_ssh
from sdrpc_build.fleet.ops import bind_address
from sdrpc_build.fleet.pins import build_options

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"
CLIENT = {"llama-commit": SHA, "max-name": 160}


def fleet(client: dict[str, Any] | None = None, hosts: list[Any] | None = None) -> Any:
    data = {
        "client": CLIENT if client is None else client,
        "host": hosts
        if hosts is not None
        else [{"name": "h1", "ssh": "root@10.0.0.1", "server": [{}]}],
    }
    return parse_fleet(data, Path("/srv/f/fleet.toml"))


def test_minimal_fleet_defaults() -> None:
    f = fleet()
    assert f.client.transport == "ssh" and f.client.build_on == "client"
    (h,) = f.hosts
    assert h.ssh == SshTarget("10.0.0.1", "root") and h.address is None
    (s,) = h.servers
    assert (s.name, s.backend, s.port, s.unit) == (
        "cpu-50052",
        "cpu",
        50052,
        "sdrpc-server-cpu-50052.service",
    )


def test_servers_take_servers_toml_keys_and_number_ports() -> None:
    f = fleet(
        hosts=[
            {
                "name": "g",
                "ssh": "g",
                "server": [
                    {"backend": "cuda", "visible-devices": "0", "threads": 4},
                    {
                        "backend": "vulkan",
                        "device": ["Vulkan1", "Vulkan2"],
                        "cache": True,
                        "env": {"A": 1},
                    },
                ],
            }
        ]
    )
    a, b = f.hosts[0].servers
    assert (a.port, a.options.visible_devices, a.options.threads) == (50052, "0", 4)
    assert (b.port, b.options.devices, b.options.cache, b.options.env) == (
        50053,
        ("Vulkan1", "Vulkan2"),
        True,
        (("A", "1"),),
    )


def test_lan_takes_the_address_from_a_literal_ssh_target() -> None:
    f = fleet(client={**CLIENT, "transport": "lan"})
    assert f.hosts[0].address == "10.0.0.1"


def test_lan_on_this_machine_binds_loopback_unless_an_address_is_given() -> None:
    """The client is this machine: it needs no LAN address to reach a local host's servers,
    so a local host under lan binds 127.0.0.1 (nothing exposed) unless given an address."""
    lan = {**CLIENT, "transport": "lan"}
    f = fleet(client=lan, hosts=[{"name": "me", "ssh": "local", "server": [{}]}])
    assert f.hosts[0].address is None
    assert bind_address(f, f.hosts[0]) == "127.0.0.1"
    given = [{"name": "me", "ssh": "local", "address": "192.168.1.5", "server": [{}]}]
    f = fleet(client=lan, hosts=given)
    assert bind_address(f, f.hosts[0]) == "192.168.1.5"


def test_relative_paths_are_relative_to_the_file() -> None:
    f = fleet(client={"sd-cpp": "sd", "ssh-config": "cfg"})
    assert f.client.sd_cpp == Path("/srv/f/sd")
    assert f.client.ssh_config == Path("/srv/f/cfg")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("local", SshTarget(None)),
        ("gpu1", SshTarget("gpu1")),
        ("me@gpu1.lan", SshTarget("gpu1.lan", "me")),
        ("ssh://me@10.0.0.2:2222", SshTarget("10.0.0.2", "me", 2222)),
    ],
)
def test_ssh_destinations(text: str, want: SshTarget) -> None:
    assert parse_ssh("x", text) == want
    assert str(want) == (text if text != "gpu1" else "gpu1")


@pytest.mark.parametrize("text", ["-oProxyCommand=sh", "a b", "me@", "host:99999", ""])
def test_bad_ssh_destinations_are_refused(text: str) -> None:
    with pytest.raises(FleetConfigError):
        parse_ssh("x", text)


@pytest.mark.parametrize(
    ("client", "hosts", "words"),
    [
        (
            {**CLIENT, "transprt": "lan"},
            None,
            ["unknown key 'transprt'", "did you mean 'transport'"],
        ),
        (
            {**CLIENT, "transport": "lna"},
            None,
            ["'transport' must be one of", "did you mean 'lan'"],
        ),
        ({"llama-commit": SHA}, None, ["needs 'max-name'"]),
        ({"llama-commit": "abc123", "max-name": 160}, None, ["not a full 40-hex commit"]),
        ({**CLIENT, "max-name": 100}, None, ["multiple of 8"]),
        ({}, None, ["no pins"]),
        ({"sd-cpp": "a", "sd-ref": "o/r@m"}, None, ["not both"]),
        ({**CLIENT, "exact": True}, None, ["needs a local tree"]),
        (
            {"sd-cpp": "a", "exact": True, "build-on": "host"},
            None,
            ["'exact = true' builds on the client"],
        ),
        (None, [{"name": "h", "ssh": "h"}], ["has no [[host.server]]"]),
        (None, [{"ssh": "h", "server": [{}]}], ["'name' is missing"]),
        (None, [{"name": "h", "server": [{}]}], ["'ssh' is missing"]),
        (None, [{"name": "h", "ssh": "h", "srever": []}], ["did you mean 'server'"]),
        (None, [{"name": "h", "ssh": "h", "server": [{"binary": "/x"}]}], ["'binary' is not a"]),
        (None, [{"name": "h", "ssh": "h", "server": [{"host": "0.0.0.0"}]}], ["transport"]),
        (None, [{"name": "h", "ssh": "h", "server": [{"port": "1"}]}], ["must be a number"]),
        (None, [{"name": "h", "ssh": "h", "server": [{"thread": 1}]}], ["did you mean 'threads'"]),
        (
            None,
            [
                {
                    "name": "h",
                    "ssh": "h",
                    "server": [{"name": "a", "port": 5}, {"name": "b", "port": 5}],
                }
            ],
            ["two servers use port 5"],
        ),
        (None, [{"name": "h", "ssh": "h", "server": [{"cache": "/x"}]}], ["true or false"]),
        (
            None,
            [{"name": "h", "ssh": "h", "server": [{"visible-devices": "0"}]}],
            ["'visible-devices' has no meaning for the cpu backend"],
        ),
        (
            {**CLIENT, "transport": "lan"},
            [{"name": "h", "ssh": "alias", "server": [{}]}],
            ["needs the host's address"],
        ),
        (
            None,
            [{"name": "h", "ssh": "h", "server": [{}]}, {"name": "h", "ssh": "g", "server": [{}]}],
            ["two hosts are named 'h'"],
        ),
    ],
)
def test_bad_fleets_fail_with_exit_40(
    client: dict[str, Any] | None, hosts: list[Any] | None, words: list[str]
) -> None:
    with pytest.raises(FleetConfigError) as e:
        fleet(client, hosts)
    assert e.value.exit_code == 40
    assert e.value.hint
    for w in words:
        assert w in e.value.message


def test_load_fleet_reports_bad_toml(tmp_path: Path) -> None:
    p = tmp_path / "fleet.toml"
    p.write_text("[client\n", encoding="utf-8")
    with pytest.raises(FleetConfigError, match="not valid TOML"):
        load_fleet(p)


def test_vulkan_headers_reach_vulkan_builds_only_and_every_build_is_portable() -> None:
    rel = fleet({**CLIENT, "vulkan-headers": "hdrs/include"})
    assert rel.client.vulkan_headers == "/srv/f/hdrs/include"  # relative to fleet.toml
    auto = fleet({**CLIENT, "vulkan-headers": "AUTO"}).client
    assert auto.vulkan_headers == "auto"
    vk = build_options(auto, "vulkan", Path("/c"))
    cpu = build_options(auto, "cpu", Path("/c"))
    assert vk.vulkan_headers is not None and vk.vulkan_headers.auto
    assert cpu.vulkan_headers is None
    assert vk.portable and cpu.portable  # the servers go to other machines
