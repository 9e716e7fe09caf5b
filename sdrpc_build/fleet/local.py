"""The fleet's host on this machine (``ssh = "local"``): its servers as one detached instance.

No Ansible, no systemd, no root, no copy: ``up`` picks each server's build the way
``sdrpc-launch --sd-cpp/--llama-commit`` does (the newest build in the store made for the
client's pins, built when there is none; one made for other pins is never used), renders a
servers.toml (:mod:`sdrpc_build.fleet.servers_toml`) with those builds' binaries where they are,
and starts it through launch/'s detach machinery (``sdrpc-launch --detach``: returns once every
server answered HELLO + the name probe). The instance is the fleet's own
(``fleet-<digest>-local``, one per fleet.toml): ``sdrpc-launch status --instance NAME`` shows it.

* Idempotent: the same servers.toml and the instance running (no server given up) = nothing to
  do, no server probed. Otherwise the instance is replaced (stopped, then started again).
* Refused, as on any host: a port held by a process that is not the instance's (left running),
  and an instance running servers built for other pins (unless ``replace``).
* ``down``: stop the instance, remove its servers.toml, caches, logs and state.

Files: ``<cache>/fleet/local/<instance>/servers.toml`` (0600) and its ``cache/NAME`` dirs (a
server's ``cache = true``), logs in ``<cache>/logs/<instance>/``, state in ``<cache>/run/``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, Optional

from sdrpc_build.build.exact import tree_digest
from sdrpc_build.build.locator import BUILDS, server_build
from sdrpc_build.build.pins import SdPins
from sdrpc_build.build.pipeline import build
from sdrpc_build.errors import LaunchConfigError, SdrpcError
from sdrpc_build.fleet.model import Fleet, Host
from sdrpc_build.fleet.pins import build_options
from sdrpc_build.fleet.runner import HostOutcome
from sdrpc_build.fleet.servers_toml import render_servers_toml
from sdrpc_build.fleet.units import ServerUnit
from sdrpc_build.launch.activity import ActivityState
from sdrpc_build.launch.config import ServerOptions, load_config, supervision_policy
from sdrpc_build.launch.control import stop_named
from sdrpc_build.launch.detach import DetachRequest, start_detached
from sdrpc_build.launch.identity import ProcessTable, system_table
from sdrpc_build.launch.match import Build, ClientPins, describe, mismatch
from sdrpc_build.launch.ports import find_listener
from sdrpc_build.launch.private import private_dir, write_private
from sdrpc_build.launch.resolve import resolve_build
from sdrpc_build.launch.status import InstanceStatus, instance_status
from sdrpc_build.paths import artifacts_dir, run_dir

__all__ = [
    "LaunchRow",
    "down",
    "instance_dir",
    "launch_rows",
    "launch_status_json",
    "status",
    "up",
]

UNIT_PREFIX = "sdrpc-launch:"  # a server's "unit" in status rows: sdrpc-launch:NAME


class LaunchRow(NamedTuple):
    """A server of a detached instance as a status row (ops.ServerState without the host)."""

    unit: str
    active: str
    sub: str
    restarts: Optional[int]
    pid: Optional[int]
    activity: ActivityState


def _systemd_words(state: str, phase: str) -> tuple[str, str]:
    """A launch server's state and phase in systemd's words (ActiveState, SubState)."""
    if state == "running":
        return "active", "running"
    if state == "starting":
        return "activating", "auto-restart" if phase == "restarting" else "start"
    return ("failed", "failed") if phase == "fatal" else ("inactive", "dead")


def launch_rows(obj: Any) -> list[LaunchRow]:
    """``sdrpc-launch status --json`` (or :func:`launch_status_json`) -> status rows; [] for
    anything else (no instance: no rows)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("servers"), list):
        return []
    rows = []
    for s in obj["servers"]:
        if not isinstance(s, dict):
            continue
        state, phase = str(s.get("state", "")), str(s.get("phase", ""))
        active, sub = _systemd_words(state, phase)
        pid, restarts = s.get("pid"), s.get("restarts")
        act = s.get("activity")
        rows.append(
            LaunchRow(
                UNIT_PREFIX + str(s.get("name", "?")),
                active,
                sub,
                restarts if isinstance(restarts, int) else None,
                pid if isinstance(pid, int) and state == "running" else None,
                act if state == "running" and act in ("busy", "idle") else "unknown",
            )
        )
    return rows


def launch_status_json(st: InstanceStatus) -> dict[str, Any]:
    """What :func:`launch_rows` reads, as ``sdrpc-launch status --json`` writes it."""
    return {
        "instance": st.instance,
        "running": st.running,
        "servers": [
            {
                "name": s.record.name,
                "state": s.state,
                "phase": s.record.phase,
                "pid": s.record.process.pid if s.record.process else None,
                "activity": s.activity.state,
                "restarts": s.record.restarts,
            }
            for s in st.servers
        ],
    }


def instance_dir(cache_root: Path, instance: str) -> Path:
    return cache_root / "fleet" / "local" / instance


def _log_dir(cache_root: Path, instance: str) -> Path:
    return cache_root / "logs" / instance


def _client_pins(fleet: Fleet, sd: SdPins) -> ClientPins:
    c = fleet.client
    digest = tree_digest(c.sd_cpp / "ggml") if c.exact and c.sd_cpp else None
    return ClientPins(sd.llama_commit.value, sd.max_name.value, digest, sd.origin)


def _builds(
    fleet: Fleet, host: Host, sd: SdPins, pins: ClientPins, env: Mapping[str, str], root: Path
) -> dict[str, Build]:
    """backend -> the build sdrpc-launch would pick for the pins (built when none fits)."""

    def build_missing(backend: Optional[str]) -> Build:
        opts = build_options(fleet.client, backend or "cpu", root)
        return server_build(build(sd, opts, env).manifest)

    return {
        b: resolve_build(
            ServerOptions(backend=b),
            artifacts_dir(root),
            BUILDS,
            pins=pins,
            build_missing=build_missing,
        )
        for b in sorted({s.backend for s in host.servers})
    }


def _build_line(b: Build) -> str:
    commit = (b.commit or "unknown")[:12]
    return f"{b.backend}, llama.cpp {commit}, GGML_MAX_NAME {b.max_name}, {b.key or b.binary}"


def _child_argv(
    fleet: Fleet, pins: ClientPins, toml: Path, root: Path, logs: Path, instance: str, fd: int
) -> list[str]:
    """The detached supervisor: sdrpc-launch with the config and the pins (it refuses a
    binary made for other pins; nothing is built there: ``--no-build``)."""
    argv = [sys.executable, "-m", "sdrpc_build.cli.launch", "--config", str(toml)]
    argv += ["--cache-dir", str(root), "--log-dir", str(logs), "--instance", instance]
    argv += ["--llama-commit", pins.commit, "--max-name", str(pins.max_name), "--no-build"]
    if pins.exact is not None and fleet.client.sd_cpp is not None:
        argv += ["--sd-cpp", str(fleet.client.sd_cpp), "--exact"]
    return [*argv, "--_ready-fd", str(fd)]


@dataclass(frozen=True)
class _Running:
    """The instance now: its status, and whether it runs what ``toml`` says, unharmed."""

    status: InstanceStatus
    same: bool


def _refusals(
    run: _Running, toml: Path, ports: Sequence[int], pins: ClientPins, replace: bool
) -> list[str]:
    """A port held by a process that is not the instance's; servers built for other pins."""
    st = run.status
    ours = {s.record.process.pid for s in st.servers if s.running and s.record.process is not None}
    out = []
    for port in ports:
        holder = find_listener(port)
        if holder is not None and holder.pid not in ours:
            out.append(
                f"port {port} is taken by {holder.describe()}, which sdrpc did not start: sdrpc "
                "leaves it running; stop it or give the server another port in fleet.toml"
            )
    if replace or not st.running:
        return out
    try:
        old = load_config(toml).servers
    except LaunchConfigError:
        old = ()
    want = f"llama.cpp {pins.commit[:12]} GGML_MAX_NAME {pins.max_name}"
    for o in old:
        b = BUILDS.entry_of(o.binary) if o.binary is not None else None
        why = mismatch(b, pins) if b is not None else None
        if b is not None and why is not None:
            out.append(
                f"{o.name} runs {describe(b)}, built for other pins than the client's ({want}): "
                f"{why}; sdrpc does not replace it silently; run sdrpc up --replace (or sdrpc "
                "down)"
            )
    return out


def _running(rdir: Path, instance: str, toml: Path, text: str, table: ProcessTable) -> _Running:
    st = instance_status(rdir, instance, table)
    try:
        same_text = toml.read_text(encoding="utf-8") == text
    except OSError:
        same_text = False
    healthy = st.running and all(s.record.phase != "fatal" for s in st.servers)
    return _Running(st, same_text and healthy)


def up(
    fleet: Fleet,
    host: Host,
    sd: SdPins,
    env: Mapping[str, str],
    cache_root: Path,
    *,
    instance: str,
    bind: str,
    replace: bool = False,
) -> HostOutcome:
    """Run ``host``'s servers here as the detached ``instance``; a failed HostOutcome says
    which step failed and why (the other hosts of the fleet go on)."""
    step = "sdrpc build (pins)"
    try:
        pins = _client_pins(fleet, sd)
        builds = _builds(fleet, host, sd, pins, env, cache_root)
        step = "sdrpc servers.toml"
        d = instance_dir(cache_root, instance)
        units = [
            ServerUnit(
                s, PurePosixPath(builds[s.backend].binary), bind, _build_line(builds[s.backend])
            )
            for s in host.servers
        ]
        text = render_servers_toml(units, PurePosixPath(d / "cache"))
        toml, rdir, table = d / "servers.toml", run_dir(cache_root), system_table()
        now = _running(rdir, instance, toml, text, table)
        if now.same:
            return HostOutcome(host.name, True)
        refuse = _refusals(now, toml, [s.port for s in host.servers], pins, replace)
        if refuse:
            return HostOutcome(host.name, False, task="sdrpc refused", reason="; ".join(refuse))
        step = "sdrpc-launch stop"
        if now.status.state is not None:
            stop_named(rdir, instance, table, None)
        step = "sdrpc-launch --detach"
        private_dir(d)
        write_private(toml, text)
        policy = supervision_policy(load_config(toml).supervise, {})
        logs = _log_dir(cache_root, instance)
        start_detached(
            DetachRequest(
                instance=instance,
                command=lambda fd: _child_argv(fleet, pins, toml, cache_root, logs, instance, fd),
                env=env,
                run_dir=rdir,
                log_dir=logs,
                policy=policy,
            ),
            on_event=lambda e: None,
            warn=lambda text: None,
        )
    except SdrpcError as exc:
        why = exc.message + (f"\n{exc.details}" if exc.details else "")
        return HostOutcome(host.name, False, task=step, reason=why)
    except OSError as exc:
        return HostOutcome(host.name, False, task=step, reason=f"{exc.strerror or exc}")
    return HostOutcome(host.name, True, changed=1)


def status(host: Host, cache_root: Path, *, instance: str) -> tuple[list[LaunchRow], HostOutcome]:
    """The instance's servers (running/restarts, busy/idle from their logs; never a port)."""
    st = instance_status(run_dir(cache_root), instance, system_table())
    if st.problem is not None:
        return [], HostOutcome(host.name, False, task="sdrpc-launch status", reason=st.problem)
    return launch_rows(launch_status_json(st)), HostOutcome(host.name, True)


def down(host: Host, cache_root: Path, *, instance: str) -> HostOutcome:
    """Stop the instance (SIGTERM, then SIGKILL) and remove everything it had."""
    rdir = run_dir(cache_root)
    try:
        report = stop_named(rdir, instance, system_table(), None)
    except SdrpcError as exc:
        return HostOutcome(host.name, False, task="sdrpc-launch stop", reason=exc.message)
    for path in (instance_dir(cache_root, instance), _log_dir(cache_root, instance)):
        shutil.rmtree(path, ignore_errors=True)
    (rdir / f"{instance}.lock").unlink(missing_ok=True)
    changed = 1 if report.state is not None else 0
    return HostOutcome(host.name, True, changed=changed)
