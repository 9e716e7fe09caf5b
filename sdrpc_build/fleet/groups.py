"""Who builds which server of a fleet: pure decisions from what the hosts reported.

A server binary runs on the machines of one *platform* (OS, CPU architecture, C library and its
version): the fleet groups its servers by (backend, platform) and builds each group's server
once, then ships it to every host of the group.

* ``build-on = "client"``: this machine builds when its platform is the group's; a group of
  another platform is built by one of its hosts, as under ``"host"``.
* ``build-on = "host"``: the first host of the group (config order) whose preflight (``sdrpc
  doctor``) says it can build the backend builds; a host whose preflight fails fails alone,
  with the install hint, and the group's next host builds.
* A server a host built before (kept on the client) is not built again.
"""

from __future__ import annotations

import json
import platform as _platform
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from sdrpc_build.fleet.model import Fleet

__all__ = [
    "CLIENT",
    "Doctor",
    "Group",
    "client_platform",
    "parse_doctor",
    "plan_groups",
    "platform_tag",
]

CLIENT = "client"  # the builder "this machine"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def platform_tag(system: str, machine: str, libc: str = "", libc_version: str = "") -> str:
    """``linux-x86_64-glibc2.36``: what a binary built here needs of the machine it runs on.

    The host side reports the same four stdlib values (``sys.platform``,
    ``platform.machine()``, ``platform.libc_ver()``) as the client computes here."""
    system = "linux" if system.startswith("linux") else system
    parts = [system, machine.lower() or "unknown"]
    if libc:
        parts.append(f"{libc}{libc_version}")
    return "-".join(_SAFE.sub("_", p) for p in parts)


def client_platform() -> str:
    libc, version = _platform.libc_ver()
    return platform_tag(sys.platform, _platform.machine(), libc, version)


@dataclass(frozen=True)
class Doctor:
    """One host's preflight verdict for one backend: None when it can build it."""

    problem: Optional[str] = None
    hint: str = ""


def parse_doctor(text: str, backends: list[str]) -> dict[str, Doctor]:
    """``sdrpc doctor --json`` on a host -> backend -> verdict (unreadable: cannot build)."""
    try:
        data: Any = json.loads(text)
        rows = {str(b["backend"]): b for b in data["backends"]}
    except (ValueError, KeyError, TypeError):
        return {b: Doctor("sdrpc doctor gave no readable answer", "") for b in backends}
    out = {}
    for b in backends:
        row = rows.get(b)
        if row is None:
            out[b] = Doctor(f"sdrpc doctor does not know the backend {b!r}", "")
        elif not row.get("supported", True):
            out[b] = Doctor(f"the {b} recipe does not build on this platform", "")
        elif row.get("buildable"):
            out[b] = Doctor()
        else:
            missing = ", ".join(str(m) for m in row.get("missing", [])) or "a requirement"
            problem = str(row.get("problem") or f"missing {missing}")
            out[b] = Doctor(f"cannot build {b}: {problem}", str(row.get("hint") or ""))
    return out


@dataclass(frozen=True)
class Group:
    """The hosts (config order) that run servers of ``backend`` on ``platform``, and who
    provides the group's server: ``"client"``, a host's name, ``"cache"`` (built before) or
    None (nobody can: every host of the group fails)."""

    backend: str
    platform: str
    hosts: tuple[str, ...]
    builder: Optional[str]
    failed: Mapping[str, str] = field(default_factory=dict)  # host -> why (with its hint)


def plan_groups(
    fleet: Fleet,
    platforms: Mapping[str, str],
    here: str,
    doctor: Mapping[str, Mapping[str, Doctor]],
    cached: Callable[[str, str], bool],
) -> tuple[Group, ...]:
    """The build plan for the hosts whose platform is known (``platforms``: host -> tag),
    in config order of first appearance. ``doctor``: host -> backend -> verdict (hosts
    without one have not been asked: they count as unable to build); ``cached(backend,
    platform)``: a server a host built before is at hand."""
    members: dict[tuple[str, str], list[str]] = {}
    for h in fleet.hosts:
        if h.name not in platforms:
            continue
        for s in h.servers:
            hosts = members.setdefault((s.backend, platforms[h.name]), [])
            if h.name not in hosts:
                hosts.append(h.name)
    groups = []
    for (backend, tag), hosts in members.items():
        if fleet.client.build_on == CLIENT and tag == here:
            groups.append(Group(backend, tag, tuple(hosts), CLIENT))
            continue
        if cached(backend, tag):
            groups.append(Group(backend, tag, tuple(hosts), "cache"))
            continue
        failed: dict[str, str] = {}
        builder: Optional[str] = None
        for name in hosts:
            v = doctor.get(name, {}).get(backend, Doctor("no preflight answer from the host"))
            if v.problem is None:
                builder = builder or name
            else:
                failed[name] = v.problem + (f" (hint: {v.hint})" if v.hint else "")
        if builder is None:
            why = f"no host of the {backend} group on {tag} can build it"
            failed = {name: failed.get(name, why) for name in hosts}
        groups.append(Group(backend, tag, tuple(hosts), builder, failed))
    return tuple(groups)
