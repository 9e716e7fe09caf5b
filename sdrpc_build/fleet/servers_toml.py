"""servers.toml for fleet servers that ``sdrpc-launch --detach`` runs instead of systemd units.

Where there is no systemd (a host whose PID 1 is something else) and on the client itself
(``ssh = "local"``), a host's servers run as one detached sdrpc-launch instance. This renders
its ``--config``: one ``[[server]]`` per fleet server with the same meaning as the unit
:func:`sdrpc_build.fleet.units.render_unit` writes (bind address, port, devices, threads, the
cache, visible devices, env; ``binary`` = the installed server), restarted on failure and
given up after as many failures as systemd allows (``StartLimitBurst`` in
``StartLimitIntervalSec``). Pure: the same input gives the same bytes (``sdrpc up`` compares
them to change nothing when nothing changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from sdrpc_build.fleet.units import START_LIMIT_BURST, START_LIMIT_INTERVAL, ServerUnit

__all__ = ["render_servers_toml", "toml_string"]


def toml_string(text: str) -> str:
    """A TOML basic string (``"..."``) holding ``text`` exactly."""
    out = []
    for c in text:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _server(u: ServerUnit, cache_root: PurePosixPath) -> list[str]:
    s, o = u.server, u.server.options
    lines = [
        "# " + " ".join(u.build.split()),
        "[[server]]",
        f"name = {toml_string(s.name)}",
        f"backend = {toml_string(s.backend)}",
        f"binary = {toml_string(str(u.binary))}",
        f"host = {toml_string(u.bind)}",
        f"port = {s.port}",
        'restart = "on-failure"',
    ]
    if o.devices:
        lines.append(f"device = {toml_string(','.join(o.devices))}")
    if o.threads is not None:
        lines.append(f"threads = {o.threads}")
    if o.cache:  # as the unit's CacheDirectory: one directory per server
        lines.append(f"cache = {toml_string(str(cache_root / s.name))}")
    if o.visible_devices is not None:
        lines.append(f"visible-devices = {toml_string(o.visible_devices)}")
    if o.env:  # last wins, as in the unit (and as sdrpc-launch's --env)
        pairs = ", ".join(f"{toml_string(k)} = {toml_string(v)}" for k, v in dict(o.env).items())
        lines.append(f"env = {{ {pairs} }}")
    return lines


def render_servers_toml(units: Sequence[ServerUnit], cache_root: PurePosixPath) -> str:
    """The servers.toml text of one host's servers (config order); a server with
    ``cache = true`` keeps its cache in ``cache_root/NAME``."""
    lines = [
        "# Written by sdrpc (sdrpc up); removed by sdrpc down. Do not edit.",
        "[supervise]",
        f"max-failures = {START_LIMIT_BURST}",
        f"failure-window = {START_LIMIT_INTERVAL}",
    ]
    for u in units:
        lines += ["", *_server(u, cache_root)]
    return "\n".join(lines) + "\n"
