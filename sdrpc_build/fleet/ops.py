"""The fleet's use cases: up, down, status. They return values; the CLI renders them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from sdrpc_build.build.pins import SdPins
from sdrpc_build.build.pipeline import build
from sdrpc_build.build.store import Manifest
from sdrpc_build.fleet import local as local_host
from sdrpc_build.fleet.model import Fleet, FleetServer, Host
from sdrpc_build.fleet.payload import Member, write_payload
from sdrpc_build.fleet.pins import build_options, client_pins
from sdrpc_build.fleet.runner import HostOutcome, host_vars, run_playbook, work_dir
from sdrpc_build.fleet.servers_toml import render_servers_toml
from sdrpc_build.fleet.tunnels import (
    TunnelSpec,
    TunnelStatus,
    close_tunnels,
    open_tunnels,
    tunnel_status,
)
from sdrpc_build.fleet.units import INSTALL_ROOT, ServerUnit, render_unit
from sdrpc_build.fleet.wheelhouse import build_wheelhouse
from sdrpc_build.launch.activity import ActivityState, parse_activity
from sdrpc_build.protocol.compat import ClientSpec, judge
from sdrpc_build.protocol.probe import probe

__all__ = [
    "HostReport",
    "ServerState",
    "UpResult",
    "bind_address",
    "down",
    "local_instance",
    "parse_show",
    "parse_status",
    "ssh_config",
    "status",
    "tunnel_instance",
    "tunnels",
    "up",
]

READY_RETRIES = 30  # readiness on the host: this many tries, 1 s apart
CHECK_TIMEOUT = 3.0
STATUS_TASK = "sdrpc status"
DETACH_CONFIG = "detach/servers.toml"  # in the payload: what sdrpc-launch runs without systemd
DETACH_CACHE = PurePosixPath("/var/cache/sdrpc")  # a server's cache there, as its unit's


@dataclass(frozen=True)
class HostReport:
    name: str
    ok: bool
    changed: int
    endpoints: tuple[str, ...]  # address:port of each server, config order
    task: Optional[str] = None
    reason: Optional[str] = None


@dataclass(frozen=True)
class UpResult:
    hosts: tuple[HostReport, ...]
    transport: str
    rpc_servers: Optional[str]  # under lan, when every host is ok
    seconds: float

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)


@dataclass(frozen=True)
class ServerState:
    host: str
    unit: str
    active: str
    sub: str
    restarts: Optional[int]
    pid: Optional[int]
    activity: ActivityState = "unknown"  # busy/idle, from its log since its last start


def ssh_config(fleet: Fleet, env: Mapping[str, str]) -> Optional[Path]:
    """``$SDRPC_SSH_CONFIG`` > [client] ssh-config > none (ssh reads ~/.ssh/config)."""
    given = env.get("SDRPC_SSH_CONFIG", "").strip()
    return Path(given).expanduser() if given else fleet.client.ssh_config


def bind_address(fleet: Fleet, host: Host) -> str:
    if fleet.client.transport == "lan":
        return host.address or "127.0.0.1"
    return "127.0.0.1"


def _build_line(m: Manifest) -> str:
    return f"{m.backend}, llama.cpp {m.commit[:12]}, GGML_MAX_NAME {m.max_name}"


def _check_argv(pins: SdPins, endpoints: list[str]) -> list[str]:
    argv = [str(INSTALL_ROOT / "venv/bin/sdrpc-check"), "--timeout", str(CHECK_TIMEOUT)]
    if pins.max_name.value is not None:
        argv += ["--expect-max-name", str(pins.max_name.value)]
    if pins.client_protocol.value is not None:
        argv += ["--expect-proto", str(pins.client_protocol.value)]
    return argv + endpoints


def _up_vars(
    fleet: Fleet,
    host: Host,
    pins: SdPins,
    builds: Mapping[str, Manifest],
    wheelhouse: Path,
    payload_dir: Path,
    cfg: Optional[Path],
    replace: bool,
) -> dict[str, Any]:
    bind = bind_address(fleet, host)
    members: dict[str, Member] = {}
    units = []
    for s in host.servers:
        m = builds[s.backend]
        binary = PurePosixPath("servers", m.key, "bin", m.binary.name)
        units.append(ServerUnit(s, INSTALL_ROOT / binary, bind, _build_line(m)))
        text = render_unit(units[-1])
        members[f"units/{s.unit}"] = Member(f"units/{s.unit}", text.encode())
        members[str(binary)] = Member(str(binary), m.binary.read_bytes(), 0o755)
        man = f"servers/{m.key}/manifest.json"
        members[man] = Member(man, (m.path / "manifest.json").read_bytes())
    detach = render_servers_toml(units, DETACH_CACHE)  # for a host without systemd
    members[DETACH_CONFIG] = Member(DETACH_CONFIG, detach.encode())
    payload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = payload_dir / f"{host.name}.tar"
    digest = write_payload(payload, list(members.values()))
    allowed = sorted({(m.commit, m.max_name) for m in builds.values()})
    return {
        **host_vars(host, cfg),
        "sdrpc_root": str(INSTALL_ROOT),
        "sdrpc_wheelhouse": str(wheelhouse),
        "sdrpc_wheelhouse_digest": wheelhouse.stem,
        "sdrpc_payload": str(payload),
        "sdrpc_payload_sha256": digest,
        "sdrpc_host_args": {
            "root": str(INSTALL_ROOT),
            "units": [s.unit for s in host.servers],
            "ports": [s.port for s in host.servers],
            "allowed": [list(a) for a in allowed],
            "replace": replace,
        },
        "sdrpc_check_argv": _check_argv(pins, [f"{bind}:{s.port}" for s in host.servers]),
        "sdrpc_ready_retries": READY_RETRIES,
    }


def tunnel_instance(fleet: Fleet) -> str:
    """The detached instance (sdrpc-launch status --instance NAME) holding this fleet's
    tunnels: one per fleet.toml (its resolved path)."""
    digest = hashlib.sha256(str(fleet.path.resolve()).encode()).hexdigest()[:10]
    return f"fleet-{digest}"


def local_instance(fleet: Fleet) -> str:
    """The detached instance running the servers of the fleet's ``ssh = "local"`` host."""
    return f"{tunnel_instance(fleet)}-local"


def _tunnel_spec(h: Host, cfg: Optional[Path]) -> TunnelSpec:
    target = f"{h.ssh.user}@{h.ssh.host}" if h.ssh.user else str(h.ssh.host)
    options = ("-o", f"Port={h.ssh.port}") if h.ssh.port else ()
    return TunnelSpec(h.name, target, tuple(s.port for s in h.servers), options, cfg)


def _open_tunnels(
    fleet: Fleet, hosts: list[Host], env: Mapping[str, str], cache_root: Path
) -> dict[str, tuple[str, ...]]:
    """Under ssh: one supervised ``ssh -N -L`` per remote host; host -> local endpoints
    (a host on this machine, ``ssh = "local"``, needs no tunnel: its 127.0.0.1 is ours)."""
    cfg = ssh_config(fleet, env)
    remote = [h for h in hosts if not h.ssh.local]
    out = {h.name: tuple(f"127.0.0.1:{s.port}" for s in h.servers) for h in hosts if h.ssh.local}
    if remote:
        state = open_tunnels(
            [_tunnel_spec(h, cfg) for h in remote],
            cache_root=cache_root,
            instance=tunnel_instance(fleet),
            env=env,
        )
        for t in state.tunnels:
            out[t.spec.host] = tuple(f"127.0.0.1:{f.local}" for f in t.forwards)
    return out


def _client_check(
    fleet: Fleet, pins: SdPins, hosts: list[Host], endpoints: Mapping[str, tuple[str, ...]]
) -> dict[str, str]:
    """Every server of ``hosts`` probed from here (at ``endpoints``: the host's address
    under lan, the tunnel under ssh) against the pins, once, at ``up``; host -> why."""
    spec = ClientSpec(
        protocol=pins.client_protocol.value, max_name=pins.max_name.value, source="fleet.toml"
    )
    targets = [
        (h, s, ep) for h in hosts for s, ep in zip(h.servers, endpoints[h.name], strict=True)
    ]

    def one(t: tuple[Host, FleetServer, str]) -> tuple[str, Optional[str]]:
        h, s, ep = t
        address, _, port = ep.rpartition(":")
        r = probe(address, int(port), timeout=CHECK_TIMEOUT, expect_max_name=spec.max_name)
        v = judge(r, spec)
        return h.name, None if v.kind == "compatible" else f"{s.name}: " + "; ".join(v.reasons)

    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as pool:
        for name, why in pool.map(one, targets):
            if why:
                bad[name] = f"{bad[name]}; {why}" if name in bad else why
    return bad


def _report(fleet: Fleet, h: Host, o: HostOutcome) -> HostReport:
    bind = bind_address(fleet, h)
    eps = tuple(f"{bind}:{s.port}" for s in h.servers)
    return HostReport(h.name, o.ok, o.changed, eps, o.task, o.reason)


def up(
    fleet: Fleet,
    env: Mapping[str, str],
    cache_root: Path,
    *,
    timeout: float = 1800.0,
    replace: bool = False,
) -> UpResult:
    """Build (or find) the servers for [client]'s pins, install and start them everywhere.

    A host where a port is taken by a process sdrpc did not start, or where an sdrpc server
    built for other pins runs (unless ``replace``), fails alone and is left as it was."""
    pins = client_pins(fleet.client, env)
    remote = [h for h in fleet.hosts if not h.ssh.local]  # "local": the launch wing, here
    backends = sorted({s.backend for h in remote for s in h.servers})
    builds = {
        b: build(pins, build_options(fleet.client, b, cache_root), env).manifest for b in backends
    }
    t0 = time.monotonic()
    done = {
        h.name: local_host.up(
            fleet, h, pins, env, cache_root,
            instance=local_instance(fleet), bind=bind_address(fleet, h), replace=replace,
        )
        for h in fleet.hosts
        if h.ssh.local
    }  # fmt: skip
    seconds = time.monotonic() - t0
    if remote:
        wheelhouse = build_wheelhouse(cache_root, env)
        cfg = ssh_config(fleet, env)
        with work_dir(cache_root) as work:
            hv = {
                h.name: _up_vars(fleet, h, pins, builds, wheelhouse, work / "payload", cfg, replace)
                for h in remote
            }
            play = run_playbook("up.yml", hv, work, timeout=timeout)
        done.update((o.name, o) for o in play.hosts)
        seconds += play.seconds
    reports = [_report(fleet, h, done[h.name]) for h in fleet.hosts]
    healthy = [h for h, r in zip(fleet.hosts, reports, strict=True) if r.ok]
    if fleet.client.transport == "ssh":  # reached through tunnels: their local ports
        local = _open_tunnels(fleet, healthy, env, cache_root)
        reports = [
            dataclasses.replace(r, endpoints=local.get(r.name, r.endpoints)) for r in reports
        ]
    endpoints = {r.name: r.endpoints for r in reports}
    # a host that changed nothing was checked when it changed; it may be serving sd-cli now
    changed = [h for h, r in zip(fleet.hosts, reports, strict=True) if r.ok and r.changed]
    bad = _client_check(fleet, pins, changed, endpoints)
    reports = [
        HostReport(r.name, False, r.changed, r.endpoints, "client check", bad[r.name])
        if r.name in bad
        else r
        for r in reports
    ]
    ok = all(r.ok for r in reports)
    rpc = ",".join(e for r in reports for e in r.endpoints) if ok else None
    return UpResult(tuple(reports), fleet.client.transport, rpc, seconds)


def _plain_vars(fleet: Fleet, env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    cfg = ssh_config(fleet, env)
    return {
        h.name: {**host_vars(h, cfg), "sdrpc_root": str(INSTALL_ROOT)}
        for h in fleet.hosts
        if not h.ssh.local  # local.py's
    }


def down(
    fleet: Fleet, env: Mapping[str, str], cache_root: Path, *, timeout: float = 600.0
) -> tuple[HostOutcome, ...]:
    """Close this fleet's tunnels; stop and remove every sdrpc unit and /opt/sdrpc on every
    host (the local host's instance and files)."""
    close_tunnels(tunnel_instance(fleet), cache_root)
    done = {
        h.name: local_host.down(h, cache_root, instance=local_instance(fleet))
        for h in fleet.hosts
        if h.ssh.local
    }
    hv = _plain_vars(fleet, env)
    if hv:
        with work_dir(cache_root) as work:
            done.update(
                (o.name, o) for o in run_playbook("down.yml", hv, work, timeout=timeout).hosts
            )
    return tuple(done[h.name] for h in fleet.hosts)


def tunnels(fleet: Fleet, cache_root: Path) -> TunnelStatus:
    """The client side of ``status`` under ssh: per host, its tunnel (never the RPC port)."""
    return tunnel_status(tunnel_instance(fleet), cache_root)


def parse_show(host: str, text: str) -> list[ServerState]:
    """``systemctl show --property=...`` of several units (blank-line separated)."""
    out = []
    for block in text.strip().split("\n\n"):
        kv = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" not in kv:
            continue
        restarts = kv.get("NRestarts", "")
        pid = kv.get("MainPID", "")
        out.append(
            ServerState(
                host,
                kv["Id"],
                kv.get("ActiveState", "?"),
                kv.get("SubState", "?"),
                int(restarts) if restarts.isdigit() else None,
                int(pid) if pid.isdigit() and int(pid) > 0 else None,
            )
        )
    return out


def parse_status(host: str, out: str) -> list[ServerState]:
    """The host side's ``status`` JSON: state from ``systemctl show``, busy/idle from the lines
    the server logged since its last start (a server that is not running: unknown)."""
    try:
        obj = json.loads(out)
        servers = obj["servers"]
    except (ValueError, KeyError, TypeError):
        return []
    states = []
    for srv in servers:
        for st in parse_show(host, str(srv.get("show", ""))):
            running = st.active == "active" and st.sub == "running"
            act = parse_activity(str(x) for x in srv.get("log", [])).state if running else "unknown"
            states.append(dataclasses.replace(st, activity=act))
    # a host without systemd: its sdrpc-launch instance (sdrpc-launch status --json)
    return states + [ServerState(host, *row) for row in local_host.launch_rows(obj.get("launch"))]


def status(
    fleet: Fleet, env: Mapping[str, str], cache_root: Path, *, timeout: float = 300.0
) -> tuple[list[ServerState], tuple[HostOutcome, ...]]:
    """Each server's unit state, restarts and busy/idle; no server is probed."""
    states: list[ServerState] = []
    done: dict[str, HostOutcome] = {}
    for h in fleet.hosts:
        if h.ssh.local:
            rows, done[h.name] = local_host.status(h, cache_root, instance=local_instance(fleet))
            states += [ServerState(h.name, *row) for row in rows]
    hv = _plain_vars(fleet, env)
    if hv:
        with work_dir(cache_root) as work:
            play = run_playbook("status.yml", hv, work, timeout=timeout, want_outputs=[STATUS_TASK])
        done.update((o.name, o) for o in play.hosts)
        states += [
            st
            for o in play.hosts
            for task, out in o.outputs
            if task == STATUS_TASK
            for st in parse_status(o.name, out)
        ]
    order = [h.name for h in fleet.hosts]
    states.sort(key=lambda st: order.index(st.host))  # fleet order, servers in host order
    return states, tuple(done[n] for n in order)
