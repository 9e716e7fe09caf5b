"""The systemd unit of a fleet server: exact text, and `systemd-analyze verify` says nothing."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from sdrpc_build.fleet.model import parse_fleet
from sdrpc_build.fleet.ops import parse_show
from sdrpc_build.fleet.units import ServerUnit, render_unit, systemd_quote

SHA = "4df29be4f4c3673f428170fda944a5b19f743bb8"


def servers(*tables: dict[str, object]) -> list[ServerUnit]:
    f = parse_fleet(
        {
            "client": {"llama-commit": SHA, "max-name": 160},
            "host": [{"name": "h", "ssh": "h", "server": list(tables)}],
        },
        Path("/f/fleet.toml"),
    )
    return [
        ServerUnit(s, PurePosixPath("/opt/sdrpc/servers/k/bin/ggml-rpc-server"), "127.0.0.1", "cpu")
        for s in f.hosts[0].servers
    ]


def test_unit_runs_the_server_hardened_with_restart_backoff() -> None:
    (u,) = servers(
        {
            "backend": "cuda",
            "threads": 4,
            "device": "CUDA0",
            "visible-devices": "1",
            "cache": True,
            "port": 50060,
        }
    )
    text = render_unit(u)
    lines = text.splitlines()
    assert (
        "ExecStart=/opt/sdrpc/servers/k/bin/ggml-rpc-server -H 127.0.0.1 -p 50060 -d CUDA0 -t 4 -c"
        in lines
    )
    for want in (
        "Environment=LLAMA_CACHE=/var/cache/sdrpc/cuda-50060",
        "Environment=CUDA_VISIBLE_DEVICES=1",
        "CacheDirectory=sdrpc/cuda-50060",
        "Restart=on-failure",
        "RestartSec=2",
        "StartLimitBurst=10",
        "StartLimitIntervalSec=120",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "WantedBy=multi-user.target",
    ):
        assert want in lines
    assert not any(line.startswith("User=") for line in lines)  # 217 on every start
    assert render_unit(u) == text  # deterministic: a second up changes nothing


def test_quoting_escapes_specifiers_and_variables() -> None:
    assert systemd_quote("plain-1.2") == "plain-1.2"
    assert systemd_quote('a b"$%\\') == '"a b\\"$$%%\\\\"'
    (u,) = servers({"env": {"X": "50% of $HOME"}})
    assert 'Environment="X=50%% of $$HOME"' in render_unit(u).splitlines()


def test_parse_show_of_several_units() -> None:
    text = (
        "Id=sdrpc-server-a.service\nActiveState=active\nSubState=running\nNRestarts=1\n"
        "MainPID=42\nResult=success\n\n"
        "Id=sdrpc-server-b.service\nActiveState=failed\nSubState=failed\nNRestarts=10\n"
        "MainPID=0\nResult=exit-code\n"
    )
    a, b = parse_show("h", text)
    assert (a.unit, a.active, a.restarts, a.pid) == ("sdrpc-server-a.service", "active", 1, 42)
    assert (b.active, b.sub, b.restarts, b.pid) == ("failed", "failed", 10, None)
