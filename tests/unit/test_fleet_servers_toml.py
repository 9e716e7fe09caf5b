"""servers.toml for the detach fallback: what sdrpc-launch reads means what the unit says."""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

from sdrpc_build.fleet.local import launch_rows
from sdrpc_build.fleet.model import parse_fleet
from sdrpc_build.fleet.servers_toml import render_servers_toml, toml_string
from sdrpc_build.fleet.units import START_LIMIT_BURST, START_LIMIT_INTERVAL, ServerUnit
from sdrpc_build.launch.config import parse_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10
    import tomli as tomllib

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"
BIN = PurePosixPath("/opt/sdrpc/servers/k/bin/ggml-rpc-server")


def units(*tables: dict[str, object], bind: str = "127.0.0.1") -> list[ServerUnit]:
    f = parse_fleet(
        {
            "client": {"llama-commit": SHA, "max-name": 160},
            "host": [{"name": "h", "ssh": "h", "server": list(tables)}],
        },
        Path("/f/fleet.toml"),
    )
    return [ServerUnit(s, BIN, bind, "cuda, llama.cpp x\n# y") for s in f.hosts[0].servers]


def test_every_option_means_what_the_unit_says() -> None:
    us = units(
        {
            "backend": "cuda",
            "threads": 4,
            "device": "CUDA0,CUDA1",
            "visible-devices": "1",
            "cache": True,
            "port": 50060,
            "env": {"GGML_RPC_DEBUG": '1 "2" \\ %$', "A": "b\tc"},
        },
        {"port": 50061},
        bind="10.0.0.5",
    )
    text = render_servers_toml(us, PurePosixPath("/var/cache/sdrpc"))
    cfg = parse_config(tomllib.loads(text), "servers.toml", Path("/"))
    a, b = cfg.servers
    assert (a.name, a.backend, a.binary, a.host, a.port, a.restart) == (
        "cuda-50060",
        "cuda",
        Path(str(BIN)),
        "10.0.0.5",
        50060,
        "on-failure",
    )
    assert (a.devices, a.threads, a.visible_devices) == (("CUDA0", "CUDA1"), 4, "1")
    # the unit's CacheDirectory=sdrpc/NAME: this server's own directory
    assert (a.cache, a.cache_path, a.cache_per_server) == (
        True,
        Path("/var/cache/sdrpc/cuda-50060"),
        False,
    )
    assert dict(a.env) == {"GGML_RPC_DEBUG": '1 "2" \\ %$', "A": "b\tc"}
    assert (b.name, b.port, b.cache, b.devices, b.threads, b.env) == (
        "cpu-50061",
        50061,
        False,
        (),
        None,
        (),
    )
    # as systemd gives up: StartLimitBurst starts within StartLimitIntervalSec
    assert (cfg.supervise.max_failures, cfg.supervise.failure_window) == (
        START_LIMIT_BURST,
        START_LIMIT_INTERVAL,
    )
    assert render_servers_toml(us, PurePosixPath("/var/cache/sdrpc")) == text  # deterministic


def test_toml_string_round_trips_any_text() -> None:
    for text in ['a"b', "back\\slash", "tab\tnl\nnul-free \x7f\x01", "é ✓ 😀", ""]:
        assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text


def test_launch_status_becomes_status_rows_in_systemd_words() -> None:
    obj = {
        "running": True,
        "servers": [
            {"name": "a", "state": "running", "phase": "ready", "pid": 7, "restarts": 1,
             "activity": "busy"},
            {"name": "b", "state": "starting", "phase": "restarting", "pid": 8, "restarts": 2,
             "activity": "idle"},
            {"name": "c", "state": "exited", "phase": "fatal", "pid": None, "restarts": 10,
             "activity": "unknown"},
            {"name": "d", "state": "exited", "phase": "stopped", "pid": None, "restarts": 0,
             "activity": "unknown"},
        ],
    }  # fmt: skip
    got = [tuple(r) for r in launch_rows(obj)]
    assert got == [
        ("sdrpc-launch:a", "active", "running", 1, 7, "busy"),
        ("sdrpc-launch:b", "activating", "auto-restart", 2, None, "unknown"),
        ("sdrpc-launch:c", "failed", "failed", 10, None, "unknown"),
        ("sdrpc-launch:d", "inactive", "dead", 0, None, "unknown"),
    ]
    assert launch_rows(None) == []
    assert launch_rows({"running": False, "reason": "no state file"}) == []
