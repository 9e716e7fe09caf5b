"""What the fleet's lab tests share: the pins of the lab's servers and the commands they run."""

from __future__ import annotations

import os
import subprocess
import sys

from lab import Lab
from servers import LLAMA_SDISTS, sdrpc_cache

__all__ = ["MAX_NAME", "VERSION", "check", "client_lines", "host_state", "sdrpc"]

VERSION = "0.3.35"
MAX_NAME = 160


def client_lines(lab: Lab, *, transport: str = "lan", build_on: str = "client") -> list[str]:
    """fleet.toml's [client] for the lab: the pins of the lab's servers, its ssh config."""
    return [
        "[client]",
        f'llama-commit = "{LLAMA_SDISTS[VERSION][0]}"',
        f"max-name = {MAX_NAME}",
        f'llama-sdist = "llama-cpp-python=={VERSION}"',
        f'transport = "{transport}"',
        f'build-on = "{build_on}"',
        f'ssh-config = "{lab.ssh_config_path}"',
    ]


def sdrpc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdrpc_build.cli.main", *args, "--cache-dir", str(sdrpc_cache())],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "SDRPC_SSH_CONFIG": ""},
    )


def check(endpoints: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sdrpc_build.cli.check",
            "--expect-max-name",
            str(MAX_NAME),
            "--json",
            *endpoints,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def host_state(lab: Lab, host: str) -> str:
    """What sdrpc left on a host: units, rpc-server processes, listening ports, /opt/sdrpc."""
    cmd = (
        "ls /etc/systemd/system | grep sdrpc; systemctl list-units --all --no-legend 'sdrpc*'; "
        "pgrep -a rpc-server; ss -Hltn | grep -E ':5005[0-9]'; ls -d /opt/sdrpc; true"
    )
    return lab.exec(host, cmd).stdout.strip()
