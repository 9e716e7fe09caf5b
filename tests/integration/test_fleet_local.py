"""Fleet pieces checked against real tools of this machine (no lab): systemd-analyze, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from sdrpc_build.fleet.model import parse_fleet
from sdrpc_build.fleet.units import ServerUnit, render_unit

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
