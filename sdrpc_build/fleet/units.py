"""systemd units for fleet servers: pure rendering, one unit per server.

Each unit runs the verified server binary that sdrpc installed under /opt/sdrpc, as a
transient user (``DynamicUser=yes``: a fixed ``User=`` that nothing created fails every start
with status 217), restarted on failure with a bounded backoff, and hardened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from sdrpc_build.fleet.model import FleetServer
from sdrpc_build.launch.spec import visible_devices_env

__all__ = [
    "INSTALL_ROOT",
    "RESTART_SEC",
    "START_LIMIT_BURST",
    "START_LIMIT_INTERVAL",
    "UNIT_DIR",
    "UNIT_PREFIX",
    "ServerUnit",
    "render_unit",
    "systemd_quote",
]

INSTALL_ROOT = PurePosixPath("/opt/sdrpc")
UNIT_DIR = PurePosixPath("/etc/systemd/system")
UNIT_PREFIX = "sdrpc-server-"
RESTART_SEC = 2  # seconds between a failure and the next start
START_LIMIT_INTERVAL = 120  # more than START_LIMIT_BURST starts in this many seconds: give up
START_LIMIT_BURST = 10


@dataclass(frozen=True)
class ServerUnit:
    """What a unit needs beyond the server's options: where the binary is on the host,
    the address it binds and a one-line description of its build."""

    server: FleetServer
    binary: PurePosixPath
    bind: str
    build: str  # e.g. "cpu, llama.cpp 4df29be4f4c3, GGML_MAX_NAME 160"

    @property
    def name(self) -> str:
        return self.server.unit


def systemd_quote(word: str) -> str:
    """One argument of ExecStart=/Environment=, quoted for systemd (specifiers and variables
    escaped: ``%`` -> ``%%``, ``$`` -> ``$$``)."""
    text = word.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("%", "%%").replace("$", "$$")
    plain = text == word and word and all(c.isalnum() or c in "-_./:,=@+" for c in word)
    return word if plain else f'"{text}"'


def _exec_start(u: ServerUnit) -> list[str]:
    o = u.server.options
    argv = [str(u.binary), "-H", u.bind, "-p", str(u.server.port)]
    if o.devices:
        argv += ["-d", ",".join(o.devices)]
    if o.threads is not None:
        argv += ["-t", str(o.threads)]
    if o.cache:
        argv.append("-c")
    return argv


def _environment(u: ServerUnit) -> list[tuple[str, str]]:
    o = u.server.options
    env: list[tuple[str, str]] = []
    if o.cache:
        # CacheDirectory=sdrpc/NAME: /var/cache/sdrpc/NAME, owned by the dynamic user
        env.append(("LLAMA_CACHE", f"/var/cache/sdrpc/{u.server.name}"))
    if o.visible_devices is not None:
        env.append(visible_devices_env(u.server.backend, o.visible_devices))
    env += list(o.env)
    merged = dict(env)  # last wins, as sdrpc-launch's --env does
    return list(merged.items())


def _lines(key: str, values: Sequence[str]) -> list[str]:
    return [f"{key}={v}" for v in values]


def render_unit(u: ServerUnit) -> str:
    """The unit file's text (deterministic: same input, same bytes; ``sdrpc up`` relies on it
    to change nothing when nothing changed)."""
    s = u.server
    env = [systemd_quote(f"{k}={v}") for k, v in _environment(u)]
    lines = [
        "# Installed by sdrpc (sdrpc up); removed by sdrpc down. Do not edit.",
        "[Unit]",
        f"Description=sdrpc rpc-server {s.name} ({u.build})".replace("%", "%%"),
        "After=network-online.target",
        "Wants=network-online.target",
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + " ".join(systemd_quote(w) for w in _exec_start(u)),
        *_lines("Environment", env),
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        *(["CacheDirectory=sdrpc/" + s.name] if s.options.cache else []),
        f"SyslogIdentifier=sdrpc-{s.name}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
